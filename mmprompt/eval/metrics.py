"""Evaluation metrics for the four tasks of the paper.

* RefCOCO/+/g: ``Acc@0.5`` — a predicted box counts when its IoU with the gold box is >= 0.5.
  Boxes are ``(x0, y0, x1, y1)`` in continuous coordinates (no ``+1`` pixel convention).
* SNLI-VE: accuracy. OFA's answers ``yes / no / maybe`` and the dataset labels
  ``entailment / contradiction / neutral`` are treated as the same classes.
* VQA: the official VQA accuracy: answers are normalised with the rules of the official
  evaluation script (:func:`normalize_vqa_answer`) and scored with the 10-choose-9 average
  ``mean_i min(1, #matches among the other annotators / 3)``.
* Captioning: BLEU-1..4 and CIDEr-D from ``pycocoevalcap``; METEOR (and SPICE, when its Stanford
  CoreNLP jar is already installed) only where ``java`` is present, else ``None`` with a logged notice.

All scores are fractions: accuracies and BLEU lie in [0, 1]; CIDEr-D is pycocoevalcap's raw value
(the paper's tables print 100 x these numbers, e.g. CIDEr 1.382 -> "138.2").

Entry point: :func:`score`.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmprompt.data.tasks import TASKS

log = logging.getLogger(__name__)

CAPTION_TOKENIZERS: tuple[str, ...] = ("auto", "ptb", "python")
MIN_CIDER_IMAGES = 10  # below this CIDEr-D's document frequencies are close to meaningless

# --------------------------------------------------------------------------------------------
# Boxes (RefCOCO)
# --------------------------------------------------------------------------------------------


def _as_boxes(boxes: Any, name: str) -> np.ndarray:
    """Convert boxes (list, numpy array or torch tensor) to a float64 array of shape (N, 4)."""
    if hasattr(boxes, "detach"):  # torch tensor, without importing torch
        boxes = boxes.detach().cpu().numpy()
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) or (4,) as (x0, y0, x1, y1); got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite coordinates")
    return arr


def paired_iou(boxes_a: Any, boxes_b: Any) -> np.ndarray:
    """IoU of ``boxes_a[i]`` with ``boxes_b[i]`` for every i (vectorised); shape (N,).

    A box with ``x1 < x0`` or ``y1 < y0`` has zero area; a pair with zero union has IoU 0.
    """
    a = _as_boxes(boxes_a, "boxes_a")
    b = _as_boxes(boxes_b, "boxes_b")
    if len(a) != len(b):
        raise ValueError(f"boxes_a and boxes_b must have the same length; got {len(a)} and {len(b)}")
    wa = np.clip(a[:, 2] - a[:, 0], 0, None)
    ha = np.clip(a[:, 3] - a[:, 1], 0, None)
    wb = np.clip(b[:, 2] - b[:, 0], 0, None)
    hb = np.clip(b[:, 3] - b[:, 1], 0, None)
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    union = wa * ha + wb * hb - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def iou(box_a: Any, box_b: Any) -> float:
    """Intersection over union of two single boxes ``(x0, y0, x1, y1)``."""
    a = _as_boxes(box_a, "box_a")
    b = _as_boxes(box_b, "box_b")
    if len(a) != 1 or len(b) != 1:
        raise ValueError("iou() takes single boxes; use paired_iou() for batches")
    return float(paired_iou(a, b)[0])


def acc_at_05(pred_boxes: Any, gold_boxes: Any, threshold: float = 0.5) -> float:
    """REC accuracy: fraction of predictions whose IoU with the gold box is ``>= threshold``."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1]; got {threshold}")
    ious = paired_iou(pred_boxes, gold_boxes)
    if len(ious) == 0:
        raise ValueError("pred_boxes is empty: nothing to score")
    return float(np.mean(ious >= threshold))


# --------------------------------------------------------------------------------------------
# SNLI-VE
# --------------------------------------------------------------------------------------------

_VE_CANONICAL = {"yes": "entailment", "no": "contradiction", "maybe": "neutral"}


def _ve_label(label: Any) -> Any:
    if isinstance(label, str):
        key = label.strip().lower()
        return _VE_CANONICAL.get(key, key)
    return label


def ve_accuracy(predictions: Sequence[Any], labels: Sequence[Any]) -> float:
    """Visual-entailment accuracy; string labels are compared case-insensitively, and
    ``yes/no/maybe`` equal ``entailment/contradiction/neutral``."""
    _check_lengths(predictions, labels)
    hits = sum(_ve_label(p) == _ve_label(g) for p, g in zip(predictions, labels, strict=True))
    return hits / len(predictions)


# --------------------------------------------------------------------------------------------
# VQA (official answer normalisation + 10-choose-9 accuracy)
# --------------------------------------------------------------------------------------------

# Contractions written without apostrophes -> with apostrophes, as in the official VQA evaluation.
# The official table also has capitalised keys ("Im", "Ive", "Id've"); it lowercases answers before
# the look-up, so those entries can never fire and are left out here.
_CONTRACTIONS_TEXT = """
aint ain't | arent aren't | cant can't | couldve could've | couldnt couldn't
couldn'tve couldn't've | couldnt've couldn't've | didnt didn't | doesnt doesn't | dont don't
hadnt hadn't | hadnt've hadn't've | hadn'tve hadn't've | hasnt hasn't | havent haven't
hed he'd | hed've he'd've | he'dve he'd've | hes he's | howd how'd | howll how'll | hows how's
isnt isn't | itd it'd | itd've it'd've | it'dve it'd've | itll it'll | let's let's | maam ma'am
mightnt mightn't | mightnt've mightn't've | mightn'tve mightn't've | mightve might've
mustnt mustn't | mustve must've | neednt needn't | notve not've | oclock o'clock | oughtnt oughtn't
ow's'at 'ow's'at | 'ows'at 'ow's'at | 'ow'sat 'ow's'at | shant shan't | shed've she'd've
she'dve she'd've | she's she's | shouldve should've | shouldnt shouldn't | shouldnt've shouldn't've
shouldn'tve shouldn't've | somebodyd somebody'd | somebodyd've somebody'd've
somebody'dve somebody'd've | somebodyll somebody'll | somebodys somebody's | someoned someone'd
someoned've someone'd've | someone'dve someone'd've | someonell someone'll | someones someone's
somethingd something'd | somethingd've something'd've | something'dve something'd've
somethingll something'll | thats that's | thered there'd | thered've there'd've
there'dve there'd've | therere there're | theres there's | theyd they'd | theyd've they'd've
they'dve they'd've | theyll they'll | theyre they're | theyve they've | twas 'twas | wasnt wasn't
wed've we'd've | we'dve we'd've | weve we've | werent weren't | whatll what'll | whatre what're
whats what's | whatve what've | whens when's | whered where'd | wheres where's | whereve where've
whod who'd | whod've who'd've | who'dve who'd've | wholl who'll | whos who's | whove who've
whyll why'll | whyre why're | whys why's | wont won't | wouldve would've | wouldnt wouldn't
wouldnt've wouldn't've | wouldn'tve wouldn't've | yall y'all | yall'll y'all'll | y'allll y'all'll
yall'd've y'all'd've | y'alld've y'all'd've | y'all'dve y'all'd've | youd you'd | youd've you'd've
you'dve you'd've | youll you'll | youre you're | youve you've
"""
VQA_CONTRACTIONS: dict[str, str] = dict(
    pair.split() for pair in _CONTRACTIONS_TEXT.replace("\n", "|").split("|") if pair.strip()
)
VQA_NUMBER_WORDS: dict[str, str] = {
    w: str(i)
    for i, w in enumerate(("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"))
}
VQA_NUMBER_WORDS["none"] = "0"
VQA_ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})
VQA_PUNCTUATION: tuple[str, ...] = tuple(';/[]"{}()=+\\_-><@`,?!')
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")  # "2.5" keeps its point, "dog." loses it
_COMMA_BETWEEN_DIGITS = re.compile(r"\d,\d")


def _vqa_punctuation(text: str) -> str:
    """Official punctuation rule: a mark touching a space (or any text with a digit-comma-digit)
    is deleted, otherwise replaced by a space; then periods not followed by a digit are deleted."""
    delete = _COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for p in VQA_PUNCTUATION:
        gone = delete or (p + " " in text) or (" " + p in text)
        out = out.replace(p, "" if gone else " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


def _vqa_digits_articles(text: str) -> str:
    """Official rule: lowercase, number words -> digits, drop articles, restore contractions."""
    words = [VQA_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [VQA_CONTRACTIONS.get(w, w) for w in words if w not in VQA_ARTICLES]
    return " ".join(words)


def _vqa_clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_vqa_answer(answer: str) -> str:
    """Normalise an answer like the official VQA evaluation ("Two" -> "2", "a dog." -> "dog",
    "dont" -> "don't")."""
    if not isinstance(answer, str):
        raise ValueError(f"answer must be a string; got {type(answer).__name__} {answer!r}")
    return _vqa_digits_articles(_vqa_punctuation(_vqa_clean(answer)))


def vqa_accuracy_single(prediction: str, answers: str | Sequence[str], strict_official: bool = False) -> float:
    """VQA accuracy of one prediction against the annotators' answers.

    With n >= 2 answers: the mean over the n leave-one-out subsets of ``min(1, matches / 3)``
    (VQA v2 has n = 10). A single answer (a string or a 1-list) is scored by exact match after
    normalisation. ``strict_official=True`` reproduces the official script's quirk of normalising
    only when the annotators disagree (so "Yes" against ten "yes" scores 0 there).
    """
    gts = [answers] if isinstance(answers, str) else list(answers)
    if not gts or not all(isinstance(a, str) for a in gts):
        raise ValueError(f"answers must be a non-empty string or list of strings; got {answers!r}")
    if not isinstance(prediction, str):
        raise ValueError(f"prediction must be a string; got {prediction!r}")
    pred = _vqa_clean(prediction)
    gts = [_vqa_clean(a) for a in gts]
    if not strict_official or len(set(gts)) > 1:
        pred = normalize_vqa_answer(pred)
        gts = [normalize_vqa_answer(a) for a in gts]
    if len(gts) == 1:
        return float(pred == gts[0])
    matches = [g == pred for g in gts]
    total = sum(matches)
    # leaving out annotator i leaves total - matches[i] matching answers among the others
    return sum(min(1.0, (total - m) / 3.0) for m in matches) / len(gts)


def vqa_accuracy(
    predictions: Sequence[str], references: Sequence[str | Sequence[str]], strict_official: bool = False
) -> float:
    """Mean VQA accuracy over questions (see :func:`vqa_accuracy_single`)."""
    _check_lengths(predictions, references)
    accs = [vqa_accuracy_single(p, r, strict_official) for p, r in zip(predictions, references, strict=True)]
    return float(np.mean(accs))


# --------------------------------------------------------------------------------------------
# Captioning
# --------------------------------------------------------------------------------------------

# Punctuation tokens the COCO caption evaluation drops after PTB tokenisation.
_PTB_DROP = frozenset(["''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";"])
_CLITIC = re.compile(r"(?i)(n't|'s|'re|'ve|'ll|'d|'m)$")
_EDGE_PUNCT = "\"'`.,;:!?()[]{}<>"


def python_ptb_tokenize(caption: str) -> str:
    """Pure-Python stand-in for the COCO PTB tokenisation (Stanford PTBTokenizer, lowercased,
    punctuation tokens removed).

    Lowercases, splits off clitics ("doesn't" -> "does n't", "man's" -> "man 's"), strips
    punctuation at word edges (keeping inner marks as in "black-and-white", "3.5", "a.m."),
    and drops tokens that are only punctuation. It agrees with the Java tokenizer on ordinary
    captions; known differences: brackets are dropped (Java keeps "-lrb-"), "mr." loses its
    period, "?!" is dropped, and "$5", "50%", "c+d" stay one token.
    """
    out: list[str] = []
    for raw in caption.replace("\n", " ").lower().split():
        word = raw if _CLITIC.fullmatch(raw) else raw.strip(_EDGE_PUNCT)
        if raw.endswith(".") and "." in word and len(word) > 1:  # abbreviation: "a.m." / "u.s.a."
            word += "."
        if not word:
            continue
        match = _CLITIC.search(word)
        if match and match.start() > 0:
            stem, clitic = word[: match.start()], match.group(1)
            out.extend(t for t in (stem, clitic) if t not in _PTB_DROP)
        elif word not in _PTB_DROP:
            out.append(word)
    return " ".join(out)


def _java_available() -> bool:
    return shutil.which("java") is not None


def _tokenize_captions(captions: dict[int, list[str]], tokenizer: str) -> dict[int, list[str]]:
    """Tokenise {id: [captions]} with the Java PTB tokenizer or the Python stand-in."""
    use_java = tokenizer == "ptb" or (tokenizer == "auto" and _java_available())
    if use_java:
        if not _java_available():
            raise ValueError("tokenizer='ptb' needs a `java` executable on PATH; use tokenizer='python' or 'auto'")
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        try:
            return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
        except Exception as exc:  # noqa: BLE001 - a broken JVM should not stop an evaluation
            if tokenizer == "ptb":
                raise
            log.warning("Java PTB tokenizer failed (%s); using the pure-Python tokenizer", exc)
    return {k: [python_ptb_tokenize(c) for c in v] for k, v in captions.items()}


def _spice_ready() -> bool:
    """SPICE needs Stanford CoreNLP jars that pycocoevalcap downloads on first use; never download."""
    try:
        import pycocoevalcap.spice.spice as spice_mod
    except ImportError:
        return False
    lib = Path(spice_mod.__file__).parent / "lib"
    return (lib / "stanford-corenlp-3.6.0.jar").exists() and (lib / "stanford-corenlp-3.6.0-models.jar").exists()


def _java_metric(name: str, gts: dict, res: dict) -> float | None:
    """METEOR or SPICE through pycocoevalcap, or None (with a logged notice) where unavailable."""
    if not _java_available():
        log.warning("%s skipped: no `java` executable on PATH (value None)", name)
        return None
    if name == "SPICE" and not _spice_ready():
        log.warning("SPICE skipped: the Stanford CoreNLP 3.6.0 jars are not installed in "
                    "pycocoevalcap/spice/lib (value None)")
        return None
    try:
        if name == "METEOR":
            from pycocoevalcap.meteor.meteor import Meteor

            value, _ = Meteor().compute_score(gts, res)
        else:
            from pycocoevalcap.spice.spice import Spice

            value, _ = Spice().compute_score(gts, res)
    except Exception as exc:  # noqa: BLE001 - optional metric
        log.warning("%s failed (%s); value None", name, exc)
        return None
    return float(value)


def caption_scores(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    *,
    tokenizer: str = "auto",
    meteor: bool = True,
    spice: bool = True,
) -> dict[str, float | None]:
    """BLEU-1..4, CIDEr-D (and METEOR/SPICE where Java allows) of one caption per image.

    ``references[i]`` is the list of reference captions of image i (a single string is allowed).
    ``tokenizer``: ``"ptb"`` (Java Stanford PTBTokenizer, as in COCO), ``"python"``
    (:func:`python_ptb_tokenize`), or ``"auto"`` (Java when present).
    """
    return _caption_scores(predictions, references, tokenizer=tokenizer, meteor=meteor, spice=spice)[0]


def _caption_scores(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    *,
    tokenizer: str = "auto",
    meteor: bool = True,
    spice: bool = True,
) -> tuple[dict[str, float | None], list[float]]:
    """:func:`caption_scores` and the per-image CIDEr-D (whose mean is the corpus CIDEr-D)."""
    if tokenizer not in CAPTION_TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {CAPTION_TOKENIZERS}; got {tokenizer!r}")
    _check_lengths(predictions, references)
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    for i, (p, r) in enumerate(zip(predictions, refs, strict=True)):
        if not isinstance(p, str):
            raise ValueError(f"predictions[{i}] must be a string; got {p!r}")
        if not r or not all(isinstance(x, str) for x in r):
            raise ValueError(f"references[{i}] must be a non-empty list of strings; got {r!r}")
    if len(predictions) < MIN_CIDER_IMAGES:
        log.warning("CIDEr-D on %d images: document frequencies are degenerate below ~%d images",
                    len(predictions), MIN_CIDER_IMAGES)
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    gts = _tokenize_captions(dict(enumerate(refs)), tokenizer)
    res = _tokenize_captions({i: [p] for i, p in enumerate(predictions)}, tokenizer)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, per_image = Cider().compute_score(gts, res)
    out: dict[str, float | None] = {f"bleu{n + 1}": float(b) for n, b in enumerate(bleu)}
    out["cider"] = float(cider)
    out["meteor"] = _java_metric("METEOR", gts, res) if meteor else None
    out["spice"] = _java_metric("SPICE", gts, res) if spice else None
    return out, [float(x) for x in per_image]


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _check_lengths(predictions: Sequence[Any], references: Sequence[Any]) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions and references must have the same length; got {len(predictions)} and {len(references)}"
        )
    if len(predictions) == 0:
        raise ValueError("predictions is empty: nothing to score")


def score(task: str, predictions: Sequence[Any], references: Sequence[Any], **options: Any) -> dict[str, Any]:
    """Score predictions of one task; returns ``{metric name: value}`` plus ``n`` (examples).

    * ``refcoco``: boxes (N, 4) -> ``acc@0.5``, ``mean_iou``
    * ``snli_ve``: labels -> ``accuracy``
    * ``vqa``: answer strings vs. annotator answers (list of str, or one str) -> ``accuracy``
      (option ``strict_official``)
    * ``caption``: captions vs. lists of references -> ``bleu1..4``, ``cider``, ``meteor``,
      ``spice`` (None where unavailable; options ``tokenizer``, ``meteor``, ``spice``)
    """
    return score_with_examples(task, predictions, references, **options)[0]


def score_with_examples(task: str, predictions: Sequence[Any], references: Sequence[Any],
                        **options: Any) -> tuple[dict[str, Any], list[float]]:
    """:func:`score` and the per-example headline score, whose mean is the headline metric: 1/0 for
    ``IoU >= threshold`` (refcoco), 1/0 for a correct label (snli_ve), the VQA soft accuracy (vqa), the
    image's CIDEr-D (caption). The per-example scores are what intervals are bootstrapped over
    (:mod:`mmprompt.eval.stats`)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}; got {task!r}")
    _check_lengths(predictions, references)
    allowed = {"refcoco": {"threshold"}, "vqa": {"strict_official"}, "caption": {"tokenizer", "meteor", "spice"},
               "snli_ve": set()}[task]
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for task {task!r}; allowed: {sorted(allowed)}")
    n = len(predictions)
    if task == "refcoco":
        ious = paired_iou(predictions, references)
        thr = options.get("threshold", 0.5)
        hits = [float(x) for x in ious >= thr]
        return ({"acc@0.5" if thr == 0.5 else f"acc@{thr}": acc_at_05(predictions, references, thr),
                 "mean_iou": float(np.mean(ious)), "n": n}, hits)
    if task == "snli_ve":
        hits = [float(_ve_label(p) == _ve_label(g)) for p, g in zip(predictions, references, strict=True)]
        return {"accuracy": ve_accuracy(predictions, references), "n": n}, hits
    if task == "vqa":
        accs = [vqa_accuracy_single(p, r, **options) for p, r in zip(predictions, references, strict=True)]
        return {"accuracy": float(np.mean(accs)), "n": n}, accs
    out, per_image = _caption_scores(predictions, references, **options)
    return {**out, "n": n}, per_image
