"""Florence-2 datasets over OFA-layout TSV files, batches in the project's batch contract, model inputs.

Batches follow :mod:`mmprompt.data.collate`'s contract: ``input_ids`` (the processor's: ``<image>``×N,
``<s>`` prompt ``</s>``), ``attention_mask``, ``patch_images`` (the processor's ``pixel_values``),
``patch_masks``, ``decoder_input_ids`` (``</s> <s>`` + target), ``target_ids`` (``<s>`` + target +
``</s>``), ``decoder_prompt_lengths`` (1), ``task``, ``ids``, ``refs`` (refcoco boxes in pixels of the
processed S × S image), ``answer_scores`` (vqa) and ``generation_budget`` (new tokens a prediction needs
at most, from the prompt alone; refcoco only).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from mmprompt.core.checks import check_int
from mmprompt.data.tasks import (
    TASKS,
    MAX_SRC_WORDS,
    MAX_TGT_WORDS,
    VE_LABEL_TO_ANSWER,
    clean_caption_target,
    scaled_refcoco_ref,
    vqa_answer_list,
    vqa_target_answer,
)
from mmprompt.data.tsv import CaptionRecord, RefcocoRecord, SnliVeRecord, TSVReader, VqaRecord, check_task
from mmprompt.models.florence2.conventions import (
    DECODER_START_ID,
    PAD_ID,
    box_to_loc_tokens,
    grounding_phrase,
    task_prompt,
)

logger = logging.getLogger(__name__)


def image_side(processor: Any) -> int:
    """The square side the processor resizes images to."""
    size = processor.image_processor.size
    height = size.get("height") if isinstance(size, dict) else getattr(size, "height", None)
    width = size.get("width") if isinstance(size, dict) else getattr(size, "width", None)
    if height is None or width != height:
        raise ValueError(f"image processor size={size!r}: expected a square {{'height': S, 'width': S}}")
    return int(height)


class Florence2TaskDataset(Dataset):
    """Examples of one downstream task (refcoco, snli_ve, caption, vqa) from an OFA-layout TSV, encoded for
    Florence-2 by its processor. ``expand_refs`` turns a caption row with k references into k examples.
    Rows are indexed once and read lazily; ``on_error="skip"`` skips bad rows (see ``skipped``)."""

    def __init__(
        self,
        path: str | os.PathLike,
        task: str,
        processor: Any,
        *,
        add_premise: bool = True,
        expand_refs: bool = False,
        max_src_words: int = MAX_SRC_WORDS,
        max_tgt_words: int = MAX_TGT_WORDS,
        on_error: str = "raise",
    ) -> None:
        check_task(task)
        if task not in TASKS:
            raise ValueError(f"task={task!r}: allowed {TASKS}")
        for name, value in (("max_src_words", max_src_words), ("max_tgt_words", max_tgt_words)):
            check_int(f"{name}", value, 1)
        self.path, self.task, self.processor = Path(path), task, processor
        self.tokenizer = processor.tokenizer
        self.patch_image_size = image_side(processor)
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.add_premise, self.expand_refs = add_premise, expand_refs
        self.max_src_words, self.max_tgt_words = max_src_words, max_tgt_words
        scanner = TSVReader(path, task, on_error=on_error, images="header")
        self._loader = TSVReader(path, task, on_error="raise", images="full")
        self.index: list[tuple[int, int, int]] = []  # (byte offset, line, caption index)
        for offset, rec in scanner.scan():
            count = len(rec.captions) if (expand_refs and isinstance(rec, CaptionRecord)) else 1
            self.index += [(offset, rec.line, k) for k in range(count)]
        self.skipped, self.problems = scanner.skipped, list(scanner.problems)
        if not self.index:
            logger.warning("%s: no usable rows", self.path)

    def __len__(self) -> int:
        return len(self.index)

    def _target(self, rec: Any, k: int) -> tuple[str, Any, dict]:
        S = self.patch_image_size
        if isinstance(rec, RefcocoRecord):
            ref = scaled_refcoco_ref(rec.box, rec.image.size, S)
            # quantised against the original image, as Florence-2's processor does (no rescale rounding)
            return grounding_phrase(rec.text, self.max_src_words) + box_to_loc_tokens(rec.box, rec.image.size), ref, {}
        if isinstance(rec, SnliVeRecord):
            ref = VE_LABEL_TO_ANSWER[rec.label]
            return ref, ref, {}
        if isinstance(rec, CaptionRecord):
            ref = [clean_caption_target(c, max_words=10_000) for c in rec.captions]
            return clean_caption_target(rec.captions[k], self.max_tgt_words), ref, {}
        assert isinstance(rec, VqaRecord)
        return vqa_target_answer(rec.answers), vqa_answer_list(rec.answers), {"answer_scores": dict(rec.answers)}

    def _budget(self, rec: Any) -> int | None:
        """refcoco: <s> + the echoed phrase + four location tokens + </s>, with room for an echo up to twice
        the phrase's length (a zero-shot model may rephrase it) still followed by a full box."""
        if not isinstance(rec, RefcocoRecord):
            return None
        phrase = grounding_phrase(rec.text, self.max_src_words)
        return 2 * len(self.tokenizer(phrase, add_special_tokens=False)["input_ids"]) + 6

    def __getitem__(self, i: int) -> dict:
        offset, line, k = self.index[i]
        rec = self._loader.read_at(offset, line)
        prompt = task_prompt(self.task, rec, add_premise=self.add_premise, max_words=self.max_src_words)
        enc = self.processor(text=prompt, images=rec.image.convert("RGB"), return_tensors="pt")
        target, ref, extra = self._target(rec, k)
        tok = self.tokenizer
        labels = [tok.bos_token_id, *tok(target, add_special_tokens=False)["input_ids"], tok.eos_token_id]
        return {
            "id": rec.uniq_id,
            "task": self.task,
            "source": enc["input_ids"][0],
            "pixel_values": enc["pixel_values"][0],
            "decoder_input": torch.tensor([DECODER_START_ID, *labels[:-1]]),
            "labels": torch.tensor(labels),
            "prompt_length": 1,
            "prompt": prompt,
            "target": target,
            "ref": ref,
            "generation_budget": self._budget(rec),
            **extra,
        }

    def collater(self, samples: list[dict]) -> dict:
        return collate_florence2(samples, self.pad_id)


def _pad(seqs: Sequence[torch.Tensor], pad_id: int) -> torch.Tensor:
    out = torch.full((len(seqs), max(len(s) for s in seqs)), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


def collate_florence2(samples: list[dict], pad_id: int = PAD_ID) -> dict:
    """Merge :class:`Florence2TaskDataset` items into a batch-contract batch (plus ``attention_mask``)."""
    if not samples:
        raise ValueError("samples: cannot collate an empty list")
    tasks = {s["task"] for s in samples}
    if len(tasks) != 1:
        raise ValueError(f"samples mix tasks {sorted(tasks)}: a batch holds one task")
    batch = {
        "input_ids": _pad([s["source"] for s in samples], pad_id),
        "attention_mask": _pad([torch.ones(len(s["source"]), dtype=torch.long) for s in samples], 0),
        "patch_images": torch.stack([s["pixel_values"] for s in samples]),
        "patch_masks": torch.ones(len(samples), dtype=torch.bool),
        "decoder_input_ids": _pad([s["decoder_input"] for s in samples], pad_id),
        "target_ids": _pad([s["labels"] for s in samples], pad_id),
        "decoder_prompt_lengths": torch.tensor([s["prompt_length"] for s in samples], dtype=torch.long),
        "task": samples[0]["task"],
        "ids": [s["id"] for s in samples],
        "refs": [s["ref"] for s in samples],
    }
    if "answer_scores" in samples[0]:
        batch["answer_scores"] = [s["answer_scores"] for s in samples]
    budgets = [s.get("generation_budget") for s in samples]
    if all(b is not None for b in budgets):
        batch["generation_budget"] = max(budgets)
    return batch


def _checked_masks(masks: torch.Tensor | None) -> None:
    if masks is not None and not bool(masks.all()):
        raise ValueError("patch_masks has False entries: Florence-2 needs an image for every example")


def model_inputs(batch: dict, pad_id: int = PAD_ID) -> dict[str, torch.Tensor]:
    """Florence-2 keyword inputs of a batch-contract batch (``patch_images`` → ``pixel_values``)."""
    _checked_masks(batch.get("patch_masks"))
    ids = batch["input_ids"]
    out = {"input_ids": ids, "pixel_values": batch["patch_images"]}
    out["attention_mask"] = batch["attention_mask"] if "attention_mask" in batch else ids.ne(pad_id).long()
    if "decoder_input_ids" in batch:
        out["decoder_input_ids"] = batch["decoder_input_ids"]
    return out


def accept_batch_contract(model: torch.nn.Module, pad_id: int = PAD_ID) -> torch.utils.hooks.RemovableHandle:
    """Let ``model(...)`` take batch-contract keywords: ``patch_images`` becomes ``pixel_values``,
    ``patch_masks`` is checked (all True) and dropped, and a missing ``attention_mask`` is derived from
    ``input_ids != pad``. Calls using Florence-2's own names are untouched. Returns the hook's handle."""

    def hook(_module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if "patch_images" not in kwargs and "patch_masks" not in kwargs:
            return None
        kwargs = dict(kwargs)
        if "patch_images" in kwargs:
            if kwargs.get("pixel_values") is not None:
                raise ValueError("pass either patch_images or pixel_values, not both")
            kwargs["pixel_values"] = kwargs.pop("patch_images")
        _checked_masks(kwargs.pop("patch_masks", None))
        ids = kwargs.get("input_ids", args[0] if args else None)
        if kwargs.get("attention_mask") is None and ids is not None:
            kwargs["attention_mask"] = ids.ne(pad_id).long()
        return args, kwargs

    return model.register_forward_pre_hook(hook, with_kwargs=True)
