"""Evaluate a model on a downstream task: decode predictions the way OFA does, then score them.

* ``refcoco``: beam search for exactly four ``<bin_i>`` tokens → box → Acc@0.5;
* ``snli_ve`` / ``vqa``: all-candidate scoring (teacher-forced log-prob of every candidate answer, trie
  masked, after the decoder prompt when the task uses OFA's ``prev_output`` layout) → accuracy;
* ``caption``: beam search with no-repeat-ngram → BLEU-4 / CIDEr-D.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Subset
from mmprompt.core.progress import progress_bar

from mmprompt.core.modes import training_mode
from mmprompt.eval import decoding, metrics
from mmprompt.eval.stats import Estimate, estimate
from mmprompt.data.tasks import TASK_SPECS
from mmprompt.data import TaskDataset, bin_token_ids, bins_to_box, decode_ids, encode_text, id_to_bin

logger = logging.getLogger(__name__)

#: The headline metric of each task (what tables and early stopping use).
MAIN_METRIC = {name: spec.metric for name, spec in TASK_SPECS.items()}


@dataclass
class EvalSettings:
    """How to decode. Defaults follow OFA's evaluation scripts (beam 5; caption max 16 tokens, no-repeat 3)."""

    batch_size: int = 32
    beam_size: int = 5
    max_examples: int | None = None
    caption_max_len: int = 16
    no_repeat_ngram_size: int = 3
    constrain_bins: bool = True  # REC: only <bin_i> tokens may be generated
    full_caption_metrics: bool = False  # Java PTB tokenizer + METEOR/SPICE (slow); else pure-Python BLEU/CIDEr
    chunk_size: int = 64
    progress: bool = True
    device: str | torch.device = "cpu"

    def __post_init__(self) -> None:
        for name in ("batch_size", "beam_size", "caption_max_len", "chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"EvalSettings.{name}={value!r}: must be an int >= 1")
        if self.max_examples is not None and (not isinstance(self.max_examples, int) or self.max_examples < 1):
            raise ValueError(f"EvalSettings.max_examples={self.max_examples!r}: must be None or an int >= 1")


@dataclass
class EvalResult:
    """Metrics of one split, the prediction rows, and the headline metric of every example (``per_example``,
    in the rows' order; its mean is :attr:`score`; empty where the split is not scored)."""

    task: str
    metrics: dict[str, float | None]
    predictions: list[dict[str, Any]] = field(default_factory=list)
    per_example: list[float] = field(default_factory=list)

    @property
    def score(self) -> float:
        return float(self.metrics[MAIN_METRIC[self.task]])

    def interval(self, **kwargs: Any) -> Estimate:
        """The headline score with its bootstrap interval over examples (:func:`mmprompt.eval.stats.estimate`)."""
        return estimate(self.per_example, over="examples", **kwargs)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _predict_boxes(model, batch: dict, ds: TaskDataset, s: EvalSettings) -> list[list[float] | None]:
    tok, nbins = ds.tokenizer, ds.num_bins
    size = getattr(ds, "max_image_size", None) or ds.patch_image_size  # OFA's data: bins span max_image_size

    def to_box(tokens: list[int]) -> list[float] | None:
        bins = [id_to_bin(tok, t) for t in tokens]
        return None if len(bins) != 4 or None in bins else bins_to_box(bins, size, nbins)

    allowed = bin_token_ids(tok) if s.constrain_bins else None
    return decoding.predict_boxes(model, batch, to_box, beam_size=s.beam_size, bin_token_ids=allowed)


def _choose(model, batch: dict, ds: TaskDataset, s: EvalSettings) -> list[str]:
    cands = [encode_text(ds.tokenizer, " " + a) + [decoding.SpecialTokens().eos] for a in ds.candidates]
    lengths = batch["decoder_prompt_lengths"].tolist()
    prompts = [row[:n].tolist() for row, n in zip(batch["decoder_input_ids"], lengths)]
    scores = decoding.score_candidates(
        model, batch, cands, chunk_size=s.chunk_size, constraint=ds.trie, decoder_prompts=prompts
    )
    return [ds.candidates[i] for i in scores.argmax(dim=1).tolist()]


def _captions(model, batch: dict, ds: TaskDataset, s: EvalSettings) -> list[str]:
    hyps = decoding.generate(
        model, batch, beam_size=s.beam_size, max_len=s.caption_max_len, no_repeat_ngram_size=s.no_repeat_ngram_size
    )
    return [decode_ids(ds.tokenizer, h.tokens).strip() for h in hyps]


PREDICTORS: dict[str, Callable] = {
    "refcoco": _predict_boxes,
    "snli_ve": _choose,
    "vqa": _choose,
    "caption": _captions,
}


def _references(task: str, refs: list) -> list:
    return [r["box"] for r in refs] if task == "refcoco" else refs


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: TaskDataset, settings: EvalSettings | None = None) -> EvalResult:
    """Decode every example of ``dataset`` (or the first ``max_examples``) and score the predictions."""
    s = settings or EvalSettings()
    task = dataset.task
    if task not in PREDICTORS:
        raise ValueError(f"dataset.task={task!r}: allowed {sorted(PREDICTORS)}")
    ds = dataset if s.max_examples is None else Subset(dataset, range(min(s.max_examples, len(dataset))))
    loader = DataLoader(ds, batch_size=s.batch_size, shuffle=False, collate_fn=dataset.collater)
    device = torch.device(s.device)
    preds, refs, rows = [], [], []
    with training_mode(model, False):
        for batch in progress_bar(loader, desc=f"eval {task}", disable=not s.progress, leave=False):
            out = PREDICTORS[task](model, _to_device(batch, device), dataset, s)
            preds += out
            refs += _references(task, batch["refs"])
            rows += [{"id": i, "prediction": p, "reference": r} for i, p, r in zip(batch["ids"], out, batch["refs"])]
    return score_predictions(task, preds, refs, s, getattr(dataset, "cider_cache", None), rows)


def score_predictions(task: str, predictions: list, references: list, settings: EvalSettings,
                      cider_cache: Any = None, rows: list[dict[str, Any]] | None = None) -> EvalResult:
    """Score decoded ``predictions`` (refcoco: boxes, None for no box; ``references`` as the metrics take
    them) the one way every evaluation does: fast pure-Python caption metrics unless
    ``settings.full_caption_metrics``, ``cider`` from OFA's cached frequencies when ``cider_cache`` is given."""
    if task == "refcoco":
        predictions = [p if p is not None else [0.0, 0.0, 0.0, 0.0] for p in predictions]
    options = {}
    if task == "caption" and not settings.full_caption_metrics:
        options = {"tokenizer": "python", "meteor": False, "spice": False}
    result, per_example = metrics.score_with_examples(task, predictions, references, **options)
    if cider_cache is not None:
        result, per_example = with_cached_cider(result, predictions, references, cider_cache)
    return EvalResult(task, result, rows if rows is not None else [], per_example)


def with_cached_cider(result: dict, predictions: list, references: list, cache) -> tuple[dict, list[float]]:
    """Caption metrics with ``cider`` computed from OFA's cached document frequencies (``cache``, a
    :class:`mmprompt.data.cider_cache.CiderCache`), the split-frequency value kept as ``cider_split_df``;
    and the per-image CIDEr-D with those frequencies."""
    from mmprompt.eval.cider import cider_d_per_image

    per_image = cider_d_per_image(predictions, references, cache)
    return {**result, "cider": sum(per_image) / len(per_image), "cider_split_df": result["cider"]}, per_image
