"""CIDEr-D with given document frequencies: OFA's validation metric for captioning.

OFA scores its caption validation split with CIDEr-D whose document frequencies come from a cached corpus
(``cider_cached_tokens/coco-valid-words.p``: ``{"document_frequency": {n-gram tuple: count}, "ref_len":
number of reference sets}``) instead of the split itself, on whitespace tokens of punctuation-free text. The
reported test numbers use the COCO evaluation instead (:func:`mmprompt.eval.metrics.caption_scores`: PTB
tokenisation, frequencies of the test split).

CIDEr-D (Vedantam et al. 2015): per n = 1..4, tf-idf vectors ``tf * (log(ref_len) - log(max(1, df)))``;
the similarity of a candidate to a reference is the clipped dot product ``sum min(c, r) * r / (|c| |r|)``
times a length penalty ``exp(-(l_c - l_r)^2 / (2 sigma^2))`` (lengths counted in bigrams), averaged over
n and over the references, times 10; the corpus score is the mean over images.
"""

from __future__ import annotations

import math
import string
from collections import Counter
from collections.abc import Sequence

from mmprompt.data.cider_cache import CiderCache

NGRAMS = 4
SIGMA = 6.0
_PUNCT = str.maketrans({c: None for c in string.punctuation})


def _counts(words: list[str]) -> Counter:
    return Counter(tuple(words[i:i + n]) for n in range(1, NGRAMS + 1) for i in range(len(words) - n + 1))


def corpus_cache(references: Sequence[Sequence[str]]) -> CiderCache:
    """The document frequencies of ``references`` themselves (what the COCO evaluation uses)."""
    df: Counter = Counter()
    for refs in references:
        df.update(set().union(*(_counts(r.split()) for r in refs)))
    return CiderCache(dict(df), float(len(references)))


def _vector(counts: Counter, cache: CiderCache, log_ref_len: float):
    vec: list[dict] = [{} for _ in range(NGRAMS)]
    norm = [0.0] * NGRAMS
    for gram, tf in counts.items():
        n = len(gram) - 1
        w = tf * (log_ref_len - math.log(max(1.0, cache.document_frequency.get(gram, 0.0))))
        vec[n][gram] = w
        norm[n] += w * w
    bigrams = sum(tf for gram, tf in counts.items() if len(gram) == 2)
    return vec, [math.sqrt(x) for x in norm], bigrams


def _similarity(c, r) -> float:
    (vc, nc, lc), (vr, nr, lr) = c, r
    penalty = math.exp(-((lc - lr) ** 2) / (2 * SIGMA ** 2))
    total = 0.0
    for n in range(NGRAMS):
        dot = sum(min(w, vr[n].get(g, 0.0)) * vr[n].get(g, 0.0) for g, w in vc[n].items())
        if nc[n] and nr[n]:
            dot /= nc[n] * nr[n]
        total += dot * penalty
    return total / NGRAMS


def cider_d(predictions: Sequence[str], references: Sequence[Sequence[str]], cache: CiderCache | None = None,
            strip_punctuation: bool = True) -> float:
    """Corpus CIDEr-D of whitespace-tokenised ``predictions`` against their ``references`` (lists of str),
    with ``cache``'s document frequencies (default: the references' own, see :func:`corpus_cache`)."""
    scores = cider_d_per_image(predictions, references, cache, strip_punctuation)
    return sum(scores) / len(scores)


def cider_d_per_image(predictions: Sequence[str], references: Sequence[Sequence[str]],
                      cache: CiderCache | None = None, strip_punctuation: bool = True) -> list[float]:
    """The CIDEr-D of each image (see :func:`cider_d`, their mean)."""
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"predictions ({len(predictions)}) and references ({len(references)}) must be equally "
                         "long and non-empty")
    clean = (lambda t: t.translate(_PUNCT)) if strip_punctuation else (lambda t: t)  # noqa: E731
    preds = [clean(p) for p in predictions]
    refs = [[clean(r) for r in rs] for rs in references]
    cache = cache or corpus_cache(refs)
    log_len = math.log(cache.ref_len)
    scores = []
    for p, rs in zip(preds, refs):
        c = _vector(_counts(p.split()), cache, log_len)
        sims = [_similarity(c, _vector(_counts(r.split()), cache, log_len)) for r in rs]
        scores.append(10.0 * sum(sims) / len(sims))
    return scores
