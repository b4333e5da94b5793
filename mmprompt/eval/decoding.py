"""Decoding for encoder-decoders: greedy, beam search, trie-constrained decoding, all-candidate
scoring and REC's four-bin-token box decoding.

Works on any model exposing (see :class:`Seq2SeqModel`)::

    encode(**encoder_inputs) -> encoder_outputs
    decode(new_decoder_ids [N, Tn], encoder_outputs, past=None, use_cache=True) -> (logits [N, Tn, V], past)
    reorder_cache(past, index) -> past            # index_select along the batch
    reorder_encoder_outputs(encoder_outputs, index) -> encoder_outputs

``decode`` receives only the tokens not yet in ``past``; positions continue after the cache length.

Conventions (those of OFA's ``sequence_generator.py``):

* a step's log-probs are ``log_softmax`` of the logits; ``pad`` is never generated;
* ``min_len``/``max_len`` count generated tokens before eos: eos is banned while fewer than ``min_len``
  tokens exist, and forced (with its real log-prob) once ``max_len`` exist — so REC's "exactly four
  tokens" is ``min_len = max_len = 4``;
* a hypothesis' score is ``log_prob / (len(tokens) + 1) ** length_penalty`` (the +1 is the eos);
* beam search keeps ``beam_size`` live beams chosen from the best ``2·beam_size`` candidates; an eos
  candidate among the first ``beam_size`` finishes a hypothesis; a sample is done when it has
  ``beam_size`` finished hypotheses;
* constraints (a trie) are asked with the decoder sequence so far *including the start token*
  (``[bos] + generated``), as OFA's tries are built over ``[bos] + answer + [eos]``; an empty answer
  allows eos only. Any object with ``allowed(prefix_ids) -> list[int]`` (or ``next_tokens``, as
  :class:`mmprompt.data.tasks.Trie`) or a plain callable works, one for the whole batch or a list with
  one per sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "Constraint",
    "Hypothesis",
    "Seq2SeqModel",
    "SpecialTokens",
    "beam_search",
    "encode_batch",
    "generate",
    "greedy_search",
    "predict_boxes",
    "score_candidates",
]

NEG_INF = float("-inf")
DEFAULT_ENCODER_INPUTS = ("input_ids", "patch_images", "patch_masks", "attention_mask", "inputs_embeds")


class Seq2SeqModel(Protocol):
    def encode(self, **inputs: Any) -> Any: ...

    def decode(self, decoder_input_ids: torch.Tensor, encoder_outputs: Any, past: Any = None,
               use_cache: bool = True) -> tuple[torch.Tensor, Any]: ...

    def reorder_cache(self, past: Any, index: torch.Tensor) -> Any: ...

    def reorder_encoder_outputs(self, encoder_outputs: Any, index: torch.Tensor) -> Any: ...


class Constraint(Protocol):
    def allowed(self, prefix_ids: list[int]) -> list[int]: ...


ConstraintLike = Constraint | Callable[[list[int]], Sequence[int]]


@dataclass(frozen=True)
class SpecialTokens:
    bos: int = 0
    pad: int = 1
    eos: int = 2
    decoder_start: int | None = None  # defaults to bos

    @property
    def start(self) -> int:
        return self.bos if self.decoder_start is None else self.decoder_start


@dataclass
class Hypothesis:
    """A decoded sequence: ``tokens`` excludes the start token and the final eos."""

    tokens: list[int]
    log_prob: float
    score: float
    finished: bool = True


# ---------------------------------------------------------------------------------------- helpers
def encode_batch(model: Seq2SeqModel, batch: Mapping[str, Any]) -> tuple[Any, int, torch.device]:
    """Run the encoder on the batch's encoder inputs; returns (encoder outputs, batch size, device)."""
    names = getattr(model, "encoder_input_names", DEFAULT_ENCODER_INPUTS)
    inputs = {k: batch[k] for k in names if k in batch and batch[k] is not None}
    tensors = [v for v in inputs.values() if isinstance(v, torch.Tensor)]
    if not tensors:
        raise ValueError(f"batch has none of the encoder inputs {names}; keys: {sorted(batch)}")
    return model.encode(**inputs), tensors[0].shape[0], tensors[0].device


def _allowed_fn(constraint: ConstraintLike) -> Callable[[list[int]], Sequence[int]]:
    for method in ("allowed", "next_tokens"):  # next_tokens: mmprompt.data.tasks.Trie
        fn = getattr(constraint, method, None)
        if callable(fn):
            return fn
    if callable(constraint):
        return constraint
    raise ValueError(f"constraint {constraint!r} has no allowed(prefix_ids) / next_tokens(prefix_ids) method "
                     "and is not callable")


def _per_sample(constraint: ConstraintLike | Sequence[ConstraintLike] | None, n: int) -> list | None:
    if constraint is None:
        return None
    if isinstance(constraint, (list, tuple)):
        if len(constraint) != n:
            raise ValueError(f"constraint list has {len(constraint)} entries for a batch of {n}")
        return [_allowed_fn(c) for c in constraint]
    return [_allowed_fn(constraint)] * n


def _validate(beam_size: int, min_len: int, max_len: int, no_repeat_ngram_size: int) -> None:
    if beam_size < 1:
        raise ValueError(f"beam_size={beam_size} must be >= 1")
    if min_len < 0 or max_len < 1 or min_len > max_len:
        raise ValueError(f"min_len={min_len}, max_len={max_len}: need 0 <= min_len <= max_len and max_len >= 1")
    if no_repeat_ngram_size < 0:
        raise ValueError(f"no_repeat_ngram_size={no_repeat_ngram_size} must be >= 0")


@dataclass
class _StepRules:
    special: SpecialTokens
    min_len: int
    max_len: int
    no_repeat_ngram_size: int = 0
    allowed_token_ids: torch.Tensor | None = None  # static whitelist (eos always allowed)
    constraints: list | None = None  # per sample

    def apply(self, lprobs: torch.Tensor, step: int, rows: list[list[int]] | None, samples: list[int],
              live: list[bool] | None = None) -> torch.Tensor:
        """Mask ``lprobs`` [N, V] for step ``step``. ``rows``: decoder sequence per row (with start token);
        ``samples``: the sample each row belongs to; ``live``: rows that still need constraint work."""
        eos, vocab = self.special.eos, lprobs.shape[-1]
        lprobs[:, self.special.pad] = NEG_INF
        raw_eos = lprobs[:, eos].clone()
        if self.allowed_token_ids is not None:
            keep = torch.zeros(vocab, dtype=torch.bool, device=lprobs.device)
            keep[self.allowed_token_ids] = True
            keep[eos] = True
            lprobs.masked_fill_(~keep, NEG_INF)
        if self.constraints is not None:
            mask = torch.ones_like(lprobs, dtype=torch.bool)
            for r, row in enumerate(rows):
                if live is not None and not live[r]:
                    continue
                allowed = list(self.constraints[samples[r]](row)) or [eos]
                mask[r, allowed] = False
            lprobs.masked_fill_(mask, NEG_INF)
        if self.no_repeat_ngram_size > 0:
            _ban_repeated_ngrams(lprobs, rows, self.no_repeat_ngram_size)
        if step < self.min_len:
            lprobs[:, eos] = NEG_INF
        if step >= self.max_len:
            forced = lprobs[:, eos].clone()
            lprobs.fill_(NEG_INF)
            lprobs[:, eos] = torch.where(torch.isinf(forced), raw_eos, forced)
        dead = torch.isinf(lprobs).all(dim=-1)
        if bool(dead.any()):  # nothing allowed: end the row with eos at its real log-prob
            lprobs[dead, eos] = raw_eos[dead]
        return lprobs


def _ban_repeated_ngrams(lprobs: torch.Tensor, rows: list[list[int]], n: int) -> None:
    for r, row in enumerate(rows):
        if len(row) < n:
            continue
        tail = tuple(row[len(row) - n + 1:])
        banned = [row[i + n - 1] for i in range(len(row) - n + 1) if tuple(row[i:i + n - 1]) == tail]
        if banned:
            lprobs[r, banned] = NEG_INF


def _score(log_prob: float, n_tokens: int, length_penalty: float) -> float:
    return log_prob / float(n_tokens + 1) ** length_penalty


def _step_log_probs(model: Seq2SeqModel, tokens: torch.Tensor, enc: Any, past: Any) -> tuple[torch.Tensor, Any]:
    logits, past = model.decode(tokens, enc, past, use_cache=True)
    return F.log_softmax(logits[:, -1].float(), dim=-1), past


def _as_index(ids: Sequence[int] | torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    if ids is None:
        return None
    return torch.as_tensor(list(ids) if not isinstance(ids, torch.Tensor) else ids, dtype=torch.long, device=device)


# ---------------------------------------------------------------------------------------- searches
@torch.no_grad()
def greedy_search(
    model: Seq2SeqModel,
    batch: Mapping[str, Any],
    *,
    max_len: int = 20,
    min_len: int = 1,
    length_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    constraint: ConstraintLike | Sequence[ConstraintLike] | None = None,
    allowed_token_ids: Sequence[int] | None = None,
    special: SpecialTokens = SpecialTokens(),
) -> list[Hypothesis]:
    """Arg-max decoding with the cache; one :class:`Hypothesis` per sample."""
    _validate(1, min_len, max_len, no_repeat_ngram_size)
    enc, bsz, device = encode_batch(model, batch)
    rules = _StepRules(special, min_len, max_len, no_repeat_ngram_size, _as_index(allowed_token_ids, device),
                       _per_sample(constraint, bsz))
    tokens = torch.full((bsz, 1), special.start, dtype=torch.long, device=device)
    done = torch.zeros(bsz, dtype=torch.bool, device=device)
    log_prob = torch.zeros(bsz, dtype=torch.float64, device=device)
    past = None
    need_rows = rules.constraints is not None or no_repeat_ngram_size > 0
    for step in range(max_len + 1):
        lprobs, past = _step_log_probs(model, tokens[:, -1:], enc, past)
        rows = tokens.tolist() if need_rows else None
        lprobs = rules.apply(lprobs, step, rows, list(range(bsz)), (~done).tolist())
        best_lp, best = lprobs.max(dim=-1)
        best = torch.where(done, special.pad, best)
        log_prob += torch.where(done, 0.0, best_lp.double())
        tokens = torch.cat([tokens, best[:, None]], dim=1)
        done |= best.eq(special.eos)
        if bool(done.all()):
            break
    out = []
    for b, row in enumerate(tokens[:, 1:].tolist()):
        gen = row[: row.index(special.eos)] if special.eos in row else row
        lp = float(log_prob[b])
        out.append(Hypothesis(gen, lp, _score(lp, len(gen), length_penalty), special.eos in row))
    return out


@torch.no_grad()
def beam_search(
    model: Seq2SeqModel,
    batch: Mapping[str, Any],
    *,
    beam_size: int = 5,
    max_len: int = 20,
    min_len: int = 1,
    length_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    constraint: ConstraintLike | Sequence[ConstraintLike] | None = None,
    allowed_token_ids: Sequence[int] | None = None,
    n_best: int | None = None,
    special: SpecialTokens = SpecialTokens(),
) -> list[list[Hypothesis]]:
    """Beam search; per sample the ``n_best`` (default ``beam_size``) hypotheses, best first."""
    _validate(beam_size, min_len, max_len, no_repeat_ngram_size)
    k = beam_size
    n_best = k if n_best is None else n_best
    if not 1 <= n_best <= k:
        raise ValueError(f"n_best={n_best} must be in [1, beam_size={k}]")
    enc, bsz, device = encode_batch(model, batch)
    rules = _StepRules(special, min_len, max_len, no_repeat_ngram_size, _as_index(allowed_token_ids, device),
                       _per_sample(constraint, bsz))
    enc = model.reorder_encoder_outputs(enc, torch.arange(bsz, device=device).repeat_interleave(k))
    tokens = torch.full((bsz * k, 1), special.start, dtype=torch.long, device=device)
    scores = torch.full((bsz, k), NEG_INF, dtype=torch.float64, device=device)
    scores[:, 0] = 0.0  # all beams start identical: keep one
    finished: list[list[Hypothesis]] = [[] for _ in range(bsz)]
    done = [False] * bsz
    samples = [i // k for i in range(bsz * k)]
    need_rows = rules.constraints is not None or no_repeat_ngram_size > 0
    past = None
    for step in range(max_len + 1):
        lprobs, past = _step_log_probs(model, tokens[:, -1:], enc, past)
        rows = tokens.tolist() if need_rows else None
        live = [not done[samples[r]] and math.isfinite(float(scores.view(-1)[r])) for r in range(bsz * k)]
        lprobs = rules.apply(lprobs, step, rows, samples, live)
        cand = (scores.view(-1, 1) + lprobs.double()).view(bsz, -1)
        top_scores, top_idx = cand.topk(min(2 * k, cand.shape[1]), dim=1)
        vocab = lprobs.shape[-1]
        src_rows, next_tok, next_scores = _select(
            top_scores.tolist(), (top_idx // vocab).tolist(), (top_idx % vocab).tolist(), tokens, finished, done,
            step, k, special, length_penalty, max_len)
        if all(done):
            break
        index = torch.tensor(src_rows, dtype=torch.long, device=device)
        tokens = torch.cat([tokens.index_select(0, index),
                            torch.tensor(next_tok, dtype=torch.long, device=device)[:, None]], dim=1)
        scores = torch.tensor(next_scores, dtype=torch.float64, device=device).view(bsz, k)
        past = model.reorder_cache(past, index)
    return [_best(f, n_best) for f in finished]


def _select(top_scores, top_src, top_tok, tokens, finished, done, step, k, special, length_penalty, max_len):
    """Pick the next live beams per sample and finalise eos candidates (fairseq's rule)."""
    src_rows, next_tok, next_scores = [], [], []
    for b in range(len(top_scores)):
        chosen: list[tuple[int, int, float]] = []
        if not done[b]:
            for j, (s, src, tok) in enumerate(zip(top_scores[b], top_src[b], top_tok[b])):
                if s == NEG_INF:
                    break
                if tok == special.eos:
                    if j < k:
                        gen = tokens[b * k + src, 1:].tolist()
                        finished[b].append(Hypothesis(gen, s, _score(s, len(gen), length_penalty)))
                else:
                    chosen.append((b * k + src, tok, s))
                if len(chosen) == k:
                    break
            if len(finished[b]) >= k or step >= max_len or not chosen:
                done[b] = True
        chosen += [(b * k, special.pad, NEG_INF)] * (k - len(chosen))
        for row, tok, s in chosen:
            src_rows.append(row)
            next_tok.append(tok)
            next_scores.append(s if not done[b] else NEG_INF)
    return src_rows, next_tok, next_scores


def _best(hyps: list[Hypothesis], n: int) -> list[Hypothesis]:
    if not hyps:
        return [Hypothesis([], NEG_INF, NEG_INF, finished=False)]
    return sorted(hyps, key=lambda h: h.score, reverse=True)[:n]


def generate(model: Seq2SeqModel, batch: Mapping[str, Any], *, beam_size: int = 5, **kwargs: Any) -> list[Hypothesis]:
    """Best hypothesis per sample: greedy for ``beam_size == 1``, beam search otherwise."""
    if beam_size == 1:
        return greedy_search(model, batch, **kwargs)
    return [h[0] for h in beam_search(model, batch, beam_size=beam_size, n_best=1, **kwargs)]


# ---------------------------------------------------------------------------------------- scoring
@torch.no_grad()
def score_candidates(
    model: Seq2SeqModel,
    batch: Mapping[str, Any],
    candidates: Sequence[Sequence[int]],
    *,
    chunk_size: int = 20,
    constraint: ConstraintLike | None = None,
    decoder_prompts: Sequence[Sequence[int]] | None = None,
    special: SpecialTokens = SpecialTokens(),
) -> torch.Tensor:
    """Teacher-forced log-prob of every candidate for every sample, ``[B, C]`` (float64).

    The encoder runs once; candidates (token ids after the decoder prompt, normally ending in eos)
    are scored in chunks of ``chunk_size``. ``decoder_prompts`` gives each sample's decoder prompt
    (OFA's prev_output layout: ``[bos] + source tokens``); by default it is the start token alone.
    With ``constraint``, each answer step's logits are restricted to the tokens allowed after
    ``[start] + answer so far`` before the softmax (OFA's "allcand" validation)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1")
    if not candidates or any(len(c) == 0 for c in candidates):
        raise ValueError("candidates must be a non-empty list of non-empty token id lists")
    enc, bsz, device = encode_batch(model, batch)
    if decoder_prompts is None:
        prompts = [[special.start]] * bsz
    else:
        prompts = [list(p) for p in decoder_prompts]
        if len(prompts) != bsz or any(len(p) == 0 for p in prompts):
            raise ValueError(f"decoder_prompts needs one non-empty prompt per sample ({bsz}); got {len(prompts)}")
    allowed = _allowed_fn(constraint) if constraint is not None else None
    out = torch.empty(bsz, len(candidates), dtype=torch.float64)
    for lo in range(0, len(candidates), chunk_size):
        chunk = [list(c) for c in candidates[lo:lo + chunk_size]]
        out[:, lo:lo + len(chunk)] = _score_chunk(model, enc, prompts, chunk, allowed, special, device)
    return out


def _score_chunk(model, enc, prompts, chunk, allowed, special, device) -> torch.Tensor:
    bsz, c = len(prompts), len(chunk)
    rows = [p + cand[:-1] for p in prompts for cand in chunk]
    width, ans_len = max(len(r) for r in rows), max(len(x) for x in chunk)
    dec_in = torch.full((bsz * c, width), special.pad, dtype=torch.long)
    pos = torch.zeros(bsz * c, ans_len, dtype=torch.long)  # decoder position predicting answer token t
    target = torch.full((bsz * c, ans_len), special.pad, dtype=torch.long)
    for r, row in enumerate(rows):
        prompt_len, cand = len(prompts[r // c]), chunk[r % c]
        dec_in[r, : len(row)] = torch.tensor(row)
        pos[r, : len(cand)] = torch.arange(prompt_len - 1, prompt_len - 1 + len(cand))
        target[r, : len(cand)] = torch.tensor(cand)
    enc_rep = model.reorder_encoder_outputs(enc, torch.arange(bsz, device=device).repeat_interleave(c))
    logits, _ = model.decode(dec_in.to(device), enc_rep, None, use_cache=False)
    vocab = logits.shape[-1]
    logits = logits.float().gather(1, pos.to(device)[..., None].expand(-1, -1, vocab))  # [B·c, L, V]
    if allowed is not None:
        mask = torch.ones(c, ans_len, vocab, dtype=torch.bool)
        for i, cand in enumerate(chunk):
            for t in range(len(cand)):
                mask[i, t, list(allowed([special.start] + cand[:t])) or [special.eos]] = False
        logits = logits.masked_fill(mask.repeat(bsz, 1, 1).to(device), NEG_INF)
    lprobs = F.log_softmax(logits, dim=-1)
    tgt = target.to(device)
    picked = lprobs.gather(-1, tgt[..., None]).squeeze(-1).masked_fill(tgt.eq(special.pad), 0.0)
    return picked.double().sum(-1).view(bsz, c).cpu()


# ---------------------------------------------------------------------------------------- REC
def predict_boxes(
    model: Seq2SeqModel,
    batch: Mapping[str, Any],
    bins_to_box: Callable[[list[int]], Any],
    *,
    beam_size: int = 5,
    bin_token_ids: Sequence[int] | None = None,
    length_penalty: float = 1.0,
    special: SpecialTokens = SpecialTokens(),
) -> list[Any]:
    """REC: decode exactly four tokens per sample (optionally only bin tokens) and map them to a box
    with ``bins_to_box(four_token_ids)``."""
    hyps = beam_search(model, batch, beam_size=beam_size, min_len=4, max_len=4, length_penalty=length_penalty,
                       allowed_token_ids=bin_token_ids, n_best=1, special=special)
    return [bins_to_box(h[0].tokens[:4]) for h in hyps]
