"""Florence-2 as an mmprompt backbone: prediction with transformers' ``generate``, evaluation with the
task metrics, and :class:`Florence2Backbone`, the object :func:`~mmprompt.experiment.backbones.load_model`
returns for a Florence-2 directory."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset
from mmprompt.core.progress import progress_bar

from mmprompt.core.atomic import atomic_dir
from mmprompt.core.modes import training_mode
from mmprompt.eval.evaluation import EvalResult, EvalSettings, score_predictions
from mmprompt.experiment.profiles import Profile
from mmprompt.models.florence2.model import decode_predictions, enable_checkpointing, generate_for_batch, load_florence2
from mmprompt.models.florence2.data import (
    Florence2TaskDataset,
    accept_batch_contract,
    collate_florence2,
    image_side,
    model_inputs,
)


def default_eval_settings(model: torch.nn.Module, **overrides: Any) -> EvalSettings:
    """:class:`EvalSettings` with the model's generation defaults (Florence-2: beam 3, no-repeat 3)."""
    gen = model.generation_config
    settings: dict[str, Any] = dict(beam_size=int(gen.num_beams or 1),
                                    no_repeat_ngram_size=int(gen.no_repeat_ngram_size or 0))
    settings.update(overrides)
    return EvalSettings(**settings)


def predict_batch(model: torch.nn.Module, tokenizer: Any, batch: dict, image_size: int,
                  settings: EvalSettings) -> list[Any]:
    """Predictions for one batch: beam ``settings.beam_size``, ``no_repeat_ngram_size``, and at most
    ``generation_budget`` (refcoco) or ``caption_max_len`` + 2 new tokens."""
    budget = batch.get("generation_budget") or settings.caption_max_len + 2
    sequences = generate_for_batch(model, batch, num_beams=settings.beam_size, do_sample=False,
                                   no_repeat_ngram_size=settings.no_repeat_ngram_size, max_new_tokens=int(budget))
    return decode_predictions(batch["task"], tokenizer, sequences, image_size)


@torch.no_grad()
def evaluate_florence2(model: torch.nn.Module, dataset: Florence2TaskDataset,
                       settings: EvalSettings | None = None) -> EvalResult:
    """Predict every example (or the first ``max_examples``) with ``generate`` and score the predictions.

    ``settings`` default to :func:`default_eval_settings`; ``constrain_bins`` does not apply (Florence-2
    writes the phrase before its box, and a missing box scores IoU 0).
    """
    s = settings or default_eval_settings(model)
    task = dataset.task
    subset = dataset if s.max_examples is None else Subset(dataset, range(min(s.max_examples, len(dataset))))
    loader = DataLoader(subset, batch_size=s.batch_size, shuffle=False, collate_fn=dataset.collater)
    device = torch.device(s.device)
    preds: list[Any] = []
    refs: list[Any] = []
    rows: list[dict[str, Any]] = []
    with training_mode(model, False):
        for batch in progress_bar(loader, desc=f"eval {task}", disable=not s.progress, leave=False):
            moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            out = predict_batch(model, dataset.tokenizer, moved, dataset.patch_image_size, s)
            preds += out
            refs += [r["box"] for r in batch["refs"]] if task == "refcoco" else batch["refs"]
            rows += [{"id": i, "prediction": p, "reference": r} for i, p, r in zip(batch["ids"], out, batch["refs"])]
    return score_predictions(task, preds, refs, s, rows=rows)


# ------------------------------------------------------------------ the backbone object


@dataclass
class Florence2Backbone:
    """A Florence-2 model with its processor and the task plumbing the experiment layer needs.

    On construction the model learns to take batch-contract keywords (:func:`accept_batch_contract`), so
    :func:`mmprompt.training.train`'s default loss trains it; prefixes go on ``backbone.model``.
    """

    model: torch.nn.Module
    processor: Any
    source: str | None = None
    name: str = "florence2"
    _hook: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._hook = accept_batch_contract(self.model, self.pad_id)

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def pad_id(self) -> int:
        return int(self.processor.tokenizer.pad_token_id)

    @property
    def patch_image_size(self) -> int:
        return image_side(self.processor)

    @property
    def ofa_size(self) -> None:
        return None

    def profile_options(self, task: str, split: str, data: Path, profile: Profile) -> dict[str, Any]:
        """None: Florence-2's processor fixes the resolution, and its prompts are its own."""
        return {}

    def make_dataset(self, task: str, split_path: str | os.PathLike, **kwargs: Any) -> Florence2TaskDataset:
        """The task's dataset over a TSV file (keyword options of :class:`Florence2TaskDataset`)."""
        return Florence2TaskDataset(split_path, task, self.processor, **kwargs)

    def collate(self, samples: list[dict]) -> dict:
        return collate_florence2(samples, self.pad_id)

    def forward_logits(self, batch: dict) -> torch.Tensor:
        """Teacher-forced logits [B, Tt, V] of a batch-contract batch."""
        return self.model(**model_inputs(batch, self.pad_id)).logits

    def generate(self, batch: dict, **generate_kwargs: Any) -> torch.Tensor:
        """transformers' ``generate`` on a batch (Florence-2's defaults unless overridden)."""
        return generate_for_batch(self.model, batch, **generate_kwargs)

    def predict(self, batch: dict, settings: EvalSettings | None = None) -> list[Any]:
        """Boxes (refcoco) or texts for a batch of :meth:`make_dataset` items."""
        return predict_batch(self.model, self.tokenizer, batch, self.patch_image_size,
                             settings or self.default_eval_settings())

    def default_eval_settings(self, **overrides: Any) -> EvalSettings:
        return default_eval_settings(self.model, **overrides)

    def evaluate(self, dataset: Florence2TaskDataset, settings: EvalSettings | None = None,
                 model: torch.nn.Module | None = None) -> EvalResult:
        """Score ``model`` (default: this backbone's) on ``dataset``."""
        return evaluate_florence2(self.model if model is None else model, dataset, settings)

    def enable_checkpointing(self) -> None:
        """Non-reentrant activation checkpointing (works with prefixes)."""
        enable_checkpointing(self.model)

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Save model and processor (``from_pretrained``-loadable) into ``out_dir``, atomically replaced."""
        def write(tmp: Path) -> None:
            self.model.save_pretrained(tmp)
            self.processor.save_pretrained(tmp)

        with atomic_dir(out_dir) as tmp:
            write(tmp)
        return Path(out_dir)


def florence2_backbone(model_dir: str | os.PathLike, **load_kwargs: Any) -> Florence2Backbone:
    """Load a Florence-2 directory or hub id (see :func:`load_florence2`) as a :class:`Florence2Backbone`."""
    model, processor = load_florence2(model_dir, **load_kwargs)
    return Florence2Backbone(model, processor, source=os.fspath(model_dir))
