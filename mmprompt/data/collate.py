"""Torch datasets over OFA-layout TSV files and the collate function producing the batch contract.

Batch contract (every model, training and evaluation module relies on it)::

    input_ids              LongTensor[B, Ts]   bos=0 ... eos=2, right-padded with pad=1
    patch_images           FloatTensor[B, 3, S, S] in [-1, 1] (zeros where an example has no image)
    patch_masks            BoolTensor[B]       True = the example has an image
    decoder_input_ids      LongTensor[B, Tt]   bos + target, or the prev_output layout; pad=1
    target_ids             LongTensor[B, Tt]   target + eos; pad=1 where no loss
    constraint_masks       BoolTensor[B, Tt, V] (VE/VQA only; True = allowed; all True where no loss)
    decoder_prompt_lengths LongTensor[B]       decoder-input positions that are prompt (1 = just bos)
    task                   str                 "refcoco" | "snli_ve" | "caption" | "vqa" | "pretrain"
    ids                    list[str]           uniq_id of each example
    refs                   list                refcoco: dict(box=[x0,y0,x1,y1] in S pixels, image_size=S,
                                               orig_box, orig_size); snli_ve: "yes"/"no"/"maybe";
                                               caption: list[str]; vqa: list of 10 answers;
                                               pretrain: dict(subtask, target[, box])
    answer_scores          list[dict]          (vqa only) answer -> OFA confidence (the VQA score)
    loss_weights           FloatTensor[B]      (vqa with ``confidence_weights``) the target answer's confidence;
                                               OFA multiplies each row's token losses by it
    subtasks               list[str]           (pretrain only)

Datasets index their file once (byte offsets of the good rows; with ``validate=True`` every row is parsed
and its image header checked) and read rows lazily, so files of any size stream.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from mmprompt.core.checks import read_json
from mmprompt.data.boxes import bin_tokens, ofa_box_bins, scale_box
from mmprompt.data.preprocess import check_patch_image_size, preprocess_image
from mmprompt.data.tasks import (
    BOX_PLACEHOLDER_RE,
    DEFAULT_PROMPT_TYPE,
    TASKS,
    MAX_SRC_WORDS,
    MAX_TGT_WORDS,
    PROMPT_TYPES,
    VE_ANSWERS,
    VE_LABEL_TO_ANSWER,
    Trie,
    build_trie,
    caption_source,
    clean_caption_target,
    constraint_mask,
    encode_pair,
    pretrain_source_target,
    refcoco_source,
    refcoco_target,
    scaled_refcoco_ref,
    snli_ve_source,
    vqa_answer_list,
    vqa_source,
    vqa_target_answer,
)
from mmprompt.data.texts import PRETRAIN_SUBTASKS
from mmprompt.data.cider_cache import load_cider_cache
from mmprompt.data.safe_pickle import load_plain_pickle
from mmprompt.data.tokenizer import PAD, num_bins_of
from mmprompt.data.tsv import (
    CaptionRecord,
    PretrainRecord,
    Record,
    RefcocoRecord,
    SnliVeRecord,
    TSVFormatError,
    TSVReader,
    VqaRecord,
    check_task,
)

logger = logging.getLogger(__name__)
#: Answer-list files looked for next to a VQA TSV, in this order: OFA's pickle, then this project's JSON.
ANSWER_FILES = ("trainval_ans2label.pkl", "trainval_ans2label.json")
ANSWER_FILE = ANSWER_FILES[1]
ID_COLUMNS = ("uniq_id", "image_id")


def load_answer_list(path: str | os.PathLike) -> list[str]:
    """Candidate answers from an ``ans2label`` file ({answer: label}), ordered by label: OFA's pickle
    (``.pkl``, read by a restricted unpickler that admits only plain data) or a JSON object."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"answers path={str(p)!r}: no such file (an ans2label .pkl or .json)")
    if p.suffix in (".pkl", ".p", ".pickle"):
        ans2label = load_plain_pickle(p)
    else:
        ans2label = read_json(p, "answers file")
    if not isinstance(ans2label, dict) or not ans2label or not all(
            isinstance(a, str) and isinstance(i, int) for a, i in ans2label.items()):
        raise ValueError(f"answers path={str(p)!r}: expected a non-empty mapping {{answer (str): label (int)}}")
    return [a for a, _ in sorted(ans2label.items(), key=lambda kv: kv[1])]


def find_answer_file(directory: str | os.PathLike) -> Path | None:
    """The first of :data:`ANSWER_FILES` present in ``directory`` (None when neither is)."""
    return next((Path(directory) / n for n in ANSWER_FILES if (Path(directory) / n).is_file()), None)


class _IndexedTSV(Dataset):
    """Shared machinery: one scan of the file, then random access by byte offset."""

    task: str

    def __init__(self, path, task: str, on_error: str, validate: bool, check: Callable[[Record], str | None] | None):
        self.path = Path(path)
        self.reader = TSVReader(path, task, on_error=on_error, images="header" if validate else "none")
        self._loader = TSVReader(path, task, on_error="raise", images="full")
        self.index: list[tuple[int, int, int]] = []  # (byte offset, line, sub-item)
        self.problems: list[str] = []
        self.skip_reasons: Counter[str] = Counter()
        extra = 0
        for offset, rec in self.reader.scan():
            problem = check(rec) if check else None
            if problem is not None:
                if on_error == "raise":
                    raise TSVFormatError(self.path, rec.line, problem)
                extra += 1
                self.skip_reasons["check"] += 1
                self.problems.append(f"{self.path}:{rec.line}: {problem}")
                logger.warning("skipping row: %s:%d: %s", self.path, rec.line, problem)
                continue
            for k in range(self._n_items(rec)):
                self.index.append((offset, rec.line, k))
        self.skipped = self.reader.skipped + extra
        self.problems = self.reader.problems + self.problems
        self.skip_reasons.update(self.reader.skip_reasons)
        if not self.index:
            logger.warning("%s: no usable rows", self.path)

    def _n_items(self, rec: Record) -> int:
        return 1

    def __len__(self) -> int:
        return len(self.index)

    def record(self, i: int) -> tuple[Record, int]:
        offset, line, k = self.index[i]
        return self._loader.read_at(offset, line), k

    def collater(self, samples: list[dict]) -> dict:
        return collate_batch(samples)


class TaskDataset(_IndexedTSV):
    """Examples of one downstream task (refcoco, snli_ve, caption, vqa) from an OFA-layout TSV.

    ``prompt_type`` defaults to OFA's (prev_output for snli_ve and vqa, none otherwise). ``answers``: the VQA
    candidate list (default: ``trainval_ans2label.json`` next to the TSV); with ``constraints`` (default on
    for snli_ve and vqa) each example carries its trie constraint mask. ``expand_refs`` turns a caption row
    with k references into k training examples (OFA trains on one caption per row).

    OFA's conventions for its released data and checkpoints (off by default: the nano world has its own):
    ``max_image_size`` quantises RefCOCO boxes by that fixed size (OFA: 512) instead of the resized side;
    ``confidence_weights`` gives each VQA row the loss weight of its answer's confidence; ``keep_unlisted``
    keeps VQA rows whose answer is not a candidate (trained without the trie constraint, scored 0 unless
    another of its answers is predicted) instead of refusing them; ``id_column="image_id"`` uses column 1 as
    the example id (OFA's caption evaluation selects columns 1,4,2, so ids join COCO-format references).
    ``cider_cache`` (OFA's ``cider_cached_tokens/coco-valid-words.p``) makes the caption ``cider`` metric
    CIDEr-D with those document frequencies, as OFA's validation computes it (:mod:`mmprompt.eval.cider`).
    ``add_object`` appends OFA's " object: ..." suffix built from the raw objects column.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        task: str,
        tokenizer,
        patch_image_size: int,
        *,
        prompt_type: str | None = None,
        num_bins: int | None = None,
        add_premise: bool = True,
        add_object: bool = False,
        answers: Sequence[str] | str | os.PathLike | None = None,
        constraints: bool | None = None,
        expand_refs: bool = False,
        max_src_words: int = MAX_SRC_WORDS,
        max_tgt_words: int = MAX_TGT_WORDS,
        on_error: str = "raise",
        validate: bool = True,
        max_image_size: int | None = None,
        confidence_weights: bool = False,
        keep_unlisted: bool = False,
        id_column: str = "uniq_id",
        cider_cache: str | os.PathLike | None = None,
    ):
        check_task(task)
        if max_image_size is not None and (isinstance(max_image_size, bool) or not isinstance(max_image_size, int)
                                           or max_image_size < 1):
            raise ValueError(f"max_image_size={max_image_size!r}: must be None or an int >= 1")
        if id_column not in ID_COLUMNS:
            raise ValueError(f"id_column={id_column!r}: allowed {ID_COLUMNS}")
        self.max_image_size, self.confidence_weights = max_image_size, confidence_weights
        self.keep_unlisted, self.id_column = keep_unlisted, id_column
        self.cider_cache = None
        if cider_cache is not None:
            self.cider_cache = load_cider_cache(cider_cache)
        if task not in TASKS:
            raise ValueError(f"task={task!r}: TaskDataset takes {TASKS}; use PretrainDataset for 'pretrain'")
        self.task = task
        self.tokenizer = tokenizer
        self.patch_image_size = check_patch_image_size(patch_image_size)
        self.prompt_type = DEFAULT_PROMPT_TYPE[task] if prompt_type is None else prompt_type
        if self.prompt_type not in PROMPT_TYPES:
            raise ValueError(f"prompt_type={prompt_type!r}: allowed {PROMPT_TYPES}")
        self.num_bins = num_bins_of(tokenizer) if num_bins is None else num_bins
        if task == "refcoco" and self.num_bins < 2:
            raise ValueError(f"num_bins={self.num_bins!r}: refcoco needs a tokenizer with <bin_i> tokens")
        self.add_premise, self.add_object, self.expand_refs = add_premise, add_object, expand_refs
        self.max_src_words, self.max_tgt_words = max_src_words, max_tgt_words
        self.constraints = task in ("snli_ve", "vqa") if constraints is None else constraints
        self.candidates = self._candidates(path, answers) if (task in ("snli_ve", "vqa")) else None
        self.trie: Trie | None = build_trie(tokenizer, self.candidates) if self.candidates and self.constraints else None
        self._candidate_set = set(self.candidates or ())
        self.vocab_size = len(tokenizer)
        super().__init__(path, task, on_error, validate, self._check)

    def _candidates(self, path, answers) -> list[str] | None:
        if self.task == "snli_ve":
            return list(VE_ANSWERS) if answers is None else list(answers)  # type: ignore[arg-type]
        if answers is None:
            default = find_answer_file(Path(path).parent)
            if default is None:
                if self.constraints is False:
                    return None
                raise FileNotFoundError(
                    f"answers=None: no {' or '.join(ANSWER_FILES)} next to {path}; pass answers=<list or "
                    "ans2label .pkl/.json path>"
                )
            return load_answer_list(default)
        if isinstance(answers, (str, os.PathLike)):
            return load_answer_list(answers)
        return list(answers)

    def _check(self, rec: Record) -> str | None:
        if isinstance(rec, VqaRecord) and self.trie is not None and not self.keep_unlisted:
            ans = vqa_target_answer(rec.answers)
            if ans not in self._candidate_set:
                return f"answer {ans!r} is not in the candidate answer list"
        return None

    def _n_items(self, rec: Record) -> int:
        return len(rec.captions) if (self.expand_refs and isinstance(rec, CaptionRecord)) else 1

    def __getitem__(self, i: int) -> dict:
        rec, k = self.record(i)
        S = self.patch_image_size
        assert rec.image is not None
        ref: object
        extra: dict = {}
        if isinstance(rec, RefcocoRecord):
            ref = scaled_refcoco_ref(rec.box, rec.image.size, S)
            src = refcoco_source(rec.text, self.max_src_words)
            if self.max_image_size is None:
                tgt = refcoco_target(ref["box"], S, self.num_bins)
            else:
                tgt = bin_tokens(ofa_box_bins(rec.box, rec.image.size, S, self.max_image_size, self.num_bins))
        elif isinstance(rec, SnliVeRecord):
            ref = VE_LABEL_TO_ANSWER[rec.label]
            src = snli_ve_source(rec.hypothesis, rec.premise if self.add_premise else None, self.max_src_words)
            tgt = " " + ref
        elif isinstance(rec, CaptionRecord):
            ref = [clean_caption_target(c, max_words=10_000) for c in rec.captions]
            src, tgt = caption_source(), " " + clean_caption_target(rec.captions[k], self.max_tgt_words)
        else:
            assert isinstance(rec, VqaRecord)
            ref = vqa_answer_list(rec.answers)
            extra["answer_scores"] = dict(rec.answers)
            answer = vqa_target_answer(rec.answers)
            if self.confidence_weights:
                extra["loss_weight"] = rec.answers[answer]
            objects = rec.objects_column.strip().split("&&") if self.add_object else None  # OFA keeps empty items
            src = vqa_source(rec.question, objects, self.max_src_words)
            tgt = " " + answer
        enc = encode_pair(self.tokenizer, src, tgt, self.prompt_type)
        cmask = None
        if self.trie is not None:
            listed = not isinstance(rec, VqaRecord) or vqa_target_answer(rec.answers) in self._candidate_set
            cmask = (constraint_mask(self.trie, enc.labels, enc.prompt_length, self.vocab_size) if listed
                     else torch.ones(len(enc.labels), self.vocab_size, dtype=torch.bool))
        return {
            "id": rec.image_id if self.id_column == "image_id" else rec.uniq_id,
            "task": self.task,
            "source": torch.tensor(enc.source, dtype=torch.long),
            "decoder_input": torch.tensor(enc.decoder_input, dtype=torch.long),
            "labels": torch.tensor(enc.labels, dtype=torch.long),
            "prompt_length": enc.prompt_length,
            "patch_image": preprocess_image(rec.image, S),
            "patch_image_size": S,
            "constraint_mask": cmask,
            "ref": ref,
            **extra,
        }


class PretrainDataset(_IndexedTSV):
    """The pretraining mixture (layout ``pretrain``). Curriculum knobs: ``max_objects`` keeps only scenes with
    at most that many objects (text-only rows always stay); ``subtasks`` keeps only those sub-tasks."""

    task = "pretrain"

    def __init__(
        self,
        path: str | os.PathLike,
        tokenizer,
        patch_image_size: int,
        *,
        max_objects: int | None = None,
        subtasks: Sequence[str] | None = None,
        num_bins: int | None = None,
        on_error: str = "raise",
        validate: bool = True,
    ):
        if max_objects is not None and (not isinstance(max_objects, int) or max_objects < 1):
            raise ValueError(f"max_objects={max_objects!r}: must be None or an int >= 1")
        if subtasks is not None:
            bad = [s for s in subtasks if s not in PRETRAIN_SUBTASKS]
            if bad or not subtasks:
                raise ValueError(f"subtasks={subtasks!r}: allowed a non-empty subset of {PRETRAIN_SUBTASKS}")
        self.tokenizer = tokenizer
        self.patch_image_size = check_patch_image_size(patch_image_size)
        self.num_bins = num_bins_of(tokenizer) if num_bins is None else num_bins
        self.max_objects, self.subtasks = max_objects, (tuple(subtasks) if subtasks else None)
        self.filtered = 0
        self._kept_subtasks: list[str] = []
        super().__init__(path, "pretrain", on_error, validate, None)

    def _n_items(self, rec: Record) -> int:
        assert isinstance(rec, PretrainRecord)
        keep = (self.subtasks is None or rec.subtask in self.subtasks) and (
            self.max_objects is None or rec.subtask == "infill" or rec.num_objects <= self.max_objects
        )
        self.filtered += not keep
        if keep:
            self._kept_subtasks.append(rec.subtask)
        return int(keep)

    def subtask_counts(self) -> Counter[str]:
        """How many examples of each sub-task the dataset holds."""
        return Counter(self._kept_subtasks)

    def __getitem__(self, i: int) -> dict:
        rec, _ = self.record(i)
        assert isinstance(rec, PretrainRecord)
        return encode_pretrain_item(rec.uniq_id, rec.subtask, rec.source, rec.target, rec.image, self.tokenizer,
                                    self.patch_image_size, self.num_bins)


def encode_pretrain_item(uid: str, subtask: str, source: str, target: str, image, tokenizer,
                         patch_image_size: int, num_bins: int) -> dict:
    """A pretraining example (a TSV row's fields, or a streamed one) as a dataset item."""
    size = image.size if image is not None else None
    src, tgt = pretrain_source_target(subtask, source, target, size, num_bins)
    enc = encode_pair(tokenizer, src, tgt, "none")
    ref: dict = {"subtask": subtask, "target": tgt.strip()}
    if subtask == "grounding" and size is not None:
        m = BOX_PLACEHOLDER_RE.search(target)
        if m:
            ref["box"] = scale_box([float(v) for v in m.groups()], size, patch_image_size)
            ref["image_size"] = patch_image_size
    return {
        "id": uid,
        "task": "pretrain",
        "subtask": subtask,
        "source": torch.tensor(enc.source, dtype=torch.long),
        "decoder_input": torch.tensor(enc.decoder_input, dtype=torch.long),
        "labels": torch.tensor(enc.labels, dtype=torch.long),
        "prompt_length": enc.prompt_length,
        "patch_image": preprocess_image(image, patch_image_size) if image is not None else None,
        "patch_image_size": patch_image_size,
        "constraint_mask": None,
        "ref": ref,
    }


def pad_sequences(seqs: Sequence[torch.Tensor], pad_id: int = PAD) -> torch.Tensor:
    """Right-pad 1-D tensors into ``[B, max_len]``."""
    out = torch.full((len(seqs), max(len(s) for s in seqs)), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


def collate_batch(samples: list[dict], pad_id: int = PAD) -> dict:
    """Merge dataset items into a batch following the batch contract (see the module docstring)."""
    if not samples:
        raise ValueError("samples: cannot collate an empty list")
    tasks = {s["task"] for s in samples}
    if len(tasks) != 1:
        raise ValueError(f"samples mix tasks {sorted(tasks)}: a batch holds one task (collate_mixed mixes them)")
    return _merge(samples, pad_id)


def collate_mixed(samples: list[dict], pad_id: int = PAD) -> dict:
    """Merge items of several tasks (one prompt bank serving them): the batch contract with ``task`` =
    ``"mixed"`` and ``tasks``, the task of each row (constraint masks only when every item has one)."""
    if not samples:
        raise ValueError("samples: cannot collate an empty list")
    sizes = {s["patch_image_size"] for s in samples}
    if len(sizes) != 1:
        raise ValueError(f"samples have image sizes {sorted(sizes)}: a batch holds one size")
    widths = {s["constraint_mask"].shape[1] for s in samples if s.get("constraint_mask") is not None}
    if len(widths) > 1:
        samples = [{**s, "constraint_mask": None} for s in samples]
    batch = _merge([{**s, "task": "mixed"} for s in samples], pad_id)
    batch["tasks"] = [s["task"] for s in samples]
    return batch


def _merge(samples: list[dict], pad_id: int) -> dict:
    B, S = len(samples), samples[0]["patch_image_size"]
    patch_images = torch.zeros(B, 3, S, S)
    patch_masks = torch.zeros(B, dtype=torch.bool)
    for i, s in enumerate(samples):
        if s["patch_image"] is not None:
            patch_images[i] = s["patch_image"]
            patch_masks[i] = True
    batch = {
        "input_ids": pad_sequences([s["source"] for s in samples], pad_id),
        "patch_images": patch_images,
        "patch_masks": patch_masks,
        "decoder_input_ids": pad_sequences([s["decoder_input"] for s in samples], pad_id),
        "target_ids": pad_sequences([s["labels"] for s in samples], pad_id),
        "decoder_prompt_lengths": torch.tensor([s["prompt_length"] for s in samples], dtype=torch.long),
        "task": samples[0]["task"],
        "ids": [s["id"] for s in samples],
        "refs": [s["ref"] for s in samples],
    }
    masks = [s.get("constraint_mask") for s in samples]
    if all(m is not None for m in masks):
        T = batch["target_ids"].shape[1]
        cm = torch.ones(B, T, masks[0].shape[1], dtype=torch.bool)
        for i, m in enumerate(masks):
            cm[i, : m.shape[0]] = m
        batch["constraint_masks"] = cm
    if any("answer_scores" in s for s in samples):
        batch["answer_scores"] = [s.get("answer_scores") for s in samples]
    if any("loss_weight" in s for s in samples):  # a mixed batch: rows without one weigh 1
        batch["loss_weights"] = torch.tensor([float(s.get("loss_weight", 1.0)) for s in samples])
    if batch["task"] == "pretrain":
        batch["subtasks"] = [s["subtask"] for s in samples]
    return batch
