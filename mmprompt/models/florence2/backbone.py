"""Loading a native Florence-2, predicting with transformers' ``generate``, evaluating, and the backbone
object the experiment layer uses (:class:`Florence2Backbone`)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from mmprompt.eval import metrics
from mmprompt.eval.evaluation import EvalResult, EvalSettings
from mmprompt.models.florence2.conventions import answer_text, loc_tokens_to_box
from mmprompt.models.florence2.data import (
    Florence2TaskDataset,
    accept_batch_contract,
    collate_florence2,
    image_side,
    model_inputs,
)

logger = logging.getLogger(__name__)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")  # the ones prefixes can extend


def _check_source(model_dir: str | os.PathLike) -> str:
    text = os.fspath(model_dir)
    path = Path(text).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model_dir={text!r}: no config.json (not a saved transformers model)")
        return str(path)
    if _HUB_ID.match(text) and not text.startswith("."):
        return text  # a hub id: transformers downloads it where the network allows
    raise FileNotFoundError(f"model_dir={text!r}: no such directory (give a local directory or a hub id 'org/name')")


def load_florence2(
    model_dir: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    attn_implementation: str = "sdpa",
) -> tuple[torch.nn.Module, Any]:
    """Load a native Florence-2 (``Florence2ForConditionalGeneration``, eval mode) and its processor.

    ``model_dir`` is a directory written by ``save_pretrained`` (or a hub id such as
    ``florence-community/Florence-2-base`` where the network allows). The original ``microsoft/Florence-2-*``
    repositories hold remote code and are not supported.
    """
    from transformers import AutoConfig, AutoProcessor, Florence2ForConditionalGeneration

    if attn_implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation={attn_implementation!r}: allowed {ATTENTION_IMPLEMENTATIONS}")
    source = _check_source(model_dir)
    config = AutoConfig.from_pretrained(source)
    if config.model_type != "florence2":
        raise ValueError(f"model_dir={str(model_dir)!r} holds a {config.model_type!r} model; expected 'florence2'")
    kwargs: dict[str, Any] = {"attn_implementation": attn_implementation}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = Florence2ForConditionalGeneration.from_pretrained(source, **kwargs).to(device).eval()
    processor = AutoProcessor.from_pretrained(source)
    image_token = getattr(processor.tokenizer, "image_token_id", None)
    if image_token != model.config.image_token_id:
        raise ValueError(
            f"processor image token id {image_token} != model config image_token_id {model.config.image_token_id}"
        )
    vocab = model.config.text_config.vocab_size
    if image_token >= vocab:
        raise ValueError(f"image token id {image_token} lies outside the model's vocabulary of {vocab} tokens")
    if len(processor.tokenizer) > vocab:
        logger.warning("tokenizer has %d tokens, the model's vocabulary %d", len(processor.tokenizer), vocab)
    logger.info("loaded Florence-2 from %s (%s parameters)", source, f"{sum(p.numel() for p in model.parameters()):,}")
    return model, processor


def enable_checkpointing(model: torch.nn.Module, use_reentrant: bool = False) -> None:
    """Activation checkpointing of a transformers model under the installed release's method name
    (non-reentrant by default: what prefixes need)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    else:  # transformers releases before the rename
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})


# ------------------------------------------------------------------ prediction


def default_eval_settings(model: torch.nn.Module, **overrides: Any) -> EvalSettings:
    """:class:`EvalSettings` with the model's generation defaults (Florence-2: beam 3, no-repeat 3)."""
    gen = model.generation_config
    settings: dict[str, Any] = dict(beam_size=int(gen.num_beams or 1),
                                    no_repeat_ngram_size=int(gen.no_repeat_ngram_size or 0))
    settings.update(overrides)
    return EvalSettings(**settings)


@torch.no_grad()
def generate_for_batch(model: torch.nn.Module, batch: dict, **generate_kwargs: Any) -> torch.Tensor:
    """``model.generate`` on a batch-contract batch (the model's generation config supplies the rest)."""
    inputs = {k: v for k, v in model_inputs(batch).items() if k != "decoder_input_ids"}
    return model.generate(**inputs, **generate_kwargs)


def decode_predictions(task: str, tokenizer: Any, sequences: torch.Tensor, image_size: int) -> list[Any]:
    """Generated ids → boxes (refcoco: pixels of the S × S image, None when no box was written) or text."""
    texts = tokenizer.batch_decode(sequences, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    if task == "refcoco":
        return [loc_tokens_to_box(t, image_size) for t in texts]
    if task == "caption":
        return [t.strip() for t in texts]
    return [answer_text(t) for t in texts]


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
    was_training = model.training
    model.eval()
    preds: list[Any] = []
    refs: list[Any] = []
    rows: list[dict[str, Any]] = []
    try:
        for batch in tqdm(loader, desc=f"eval {task}", disable=not s.progress, leave=False):
            moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            out = predict_batch(model, dataset.tokenizer, moved, dataset.patch_image_size, s)
            preds += out
            refs += [r["box"] for r in batch["refs"]] if task == "refcoco" else batch["refs"]
            rows += [{"id": i, "prediction": p, "reference": r} for i, p, r in zip(batch["ids"], out, batch["refs"])]
    finally:
        model.train(was_training)
    if task == "refcoco":
        preds = [p if p is not None else [0.0, 0.0, 0.0, 0.0] for p in preds]
    fast_caption = task == "caption" and not s.full_caption_metrics
    options = {"tokenizer": "python", "meteor": False, "spice": False} if fast_caption else {}
    return EvalResult(task, metrics.score(task, preds, refs, **options), rows)


# ------------------------------------------------------------------ the backbone object


def save_directory(out_dir: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Run ``write(tmp)`` on a temporary sibling directory, then replace ``out_dir`` with it."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


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

        return save_directory(out_dir, write)


def florence2_backbone(model_dir: str | os.PathLike, **load_kwargs: Any) -> Florence2Backbone:
    """Load a Florence-2 directory or hub id (see :func:`load_florence2`) as a :class:`Florence2Backbone`."""
    model, processor = load_florence2(model_dir, **load_kwargs)
    return Florence2Backbone(model, processor, source=os.fspath(model_dir))
