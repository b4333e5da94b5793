"""The file names of OFA's released datasets, which split files a run needs, and where OFA publishes them.

OFA-Sys ships one zip per dataset (``datasets.md`` of OFA-Sys/OFA), each unpacking to a directory:

============  ===============================================================  ====================
dataset       files                                                            splits scored
============  ===============================================================  ====================
refcoco       refcoco_{train,val,testA,testB}.tsv                              val; testA, testB
refcocoplus   refcocoplus_{train,val,testA,testB}.tsv                          val; testA, testB
refcocog      refcocog_{train,val,test}.tsv                                    val; test
snli_ve       snli_ve_{train,dev,test}.tsv                                     dev; test
caption       caption_stage1_train.tsv, caption_stage2_train.tsv,              val; test
              caption_{val,test}.tsv, cider_cached_tokens/coco-valid-words.p,
              test_caption_coco_format.json
vqa           vqa_{train,val,test}.tsv, trainval_ans2label.pkl                 val; test predicted
============  ===============================================================  ====================

The synthetic nano data uses the same names except ``caption_train.tsv`` (accepted in place of
``caption_stage1_train.tsv``) and ``trainval_ans2label.json`` (accepted in place of the pickle). Which RefCOCO
dataset a directory holds is read off its file names (one per directory, as OFA ships them).

OFA's ``vqa_test.tsv`` (test-dev/test-std) carries dummy answers: with OFA's conventions its predictions are
written as an official submission file instead of being scored (:func:`write_vqa_submission`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmprompt.core.atomic import write_json

OFA_DATA_URL = "https://ofa-beijing.oss-cn-beijing.aliyuncs.com/datasets/{0}_data/{0}_data.zip"
OFA_DATASETS_DOC = "https://github.com/OFA-Sys/OFA/blob/main/datasets.md"


@dataclass(frozen=True)
class DataFiles:
    """One released dataset: its task, split files (alternatives in order of preference), scored splits and
    extra files (``required`` ones must be there; the others are used when present)."""

    name: str
    task: str
    splits: dict[str, tuple[str, ...]]
    val: str
    tests: tuple[str, ...]
    required: dict[str, tuple[str, ...]] = field(default_factory=dict)
    optional: dict[str, tuple[str, ...]] = field(default_factory=dict)
    predicted_only: tuple[str, ...] = ()  # splits with dummy answers (OFA's conventions): predicted, not scored

    @property
    def url(self) -> str:
        return OFA_DATA_URL.format(self.name)


def _tsv(prefix: str, splits: Sequence[str]) -> dict[str, tuple[str, ...]]:
    return {s: (f"{prefix}_{s}.tsv",) for s in splits}


DATASETS: dict[str, DataFiles] = {
    "refcoco": DataFiles("refcoco", "refcoco", _tsv("refcoco", ("train", "val", "testA", "testB")), "val",
                         ("testA", "testB")),
    "refcocoplus": DataFiles("refcocoplus", "refcoco", _tsv("refcocoplus", ("train", "val", "testA", "testB")),
                             "val", ("testA", "testB")),
    "refcocog": DataFiles("refcocog", "refcoco", _tsv("refcocog", ("train", "val", "test")), "val", ("test",)),
    "snli_ve": DataFiles("snli_ve", "snli_ve", _tsv("snli_ve", ("train", "dev", "test")), "dev", ("test",)),
    "caption": DataFiles(
        "caption", "caption",
        {"train": ("caption_stage1_train.tsv", "caption_train.tsv"), **_tsv("caption", ("val", "test"))},
        "val", ("test",),
        optional={"stage2_train": ("caption_stage2_train.tsv",),
                  "cider_df": ("cider_cached_tokens/coco-valid-words.p",),
                  "coco_refs": ("test_caption_coco_format.json",)}),
    "vqa": DataFiles("vqa", "vqa", _tsv("vqa", ("train", "val", "test")), "val", ("test",),
                     required={"answers": ("trainval_ans2label.pkl", "trainval_ans2label.json")},
                     predicted_only=("test",)),
}
TASK_DATASETS: dict[str, tuple[str, ...]] = {
    "refcoco": ("refcoco", "refcocoplus", "refcocog"), "snli_ve": ("snli_ve",), "caption": ("caption",),
    "vqa": ("vqa",),
}


def _first(directory: Path, names: Sequence[str]) -> Path | None:
    return next((directory / n for n in names if (directory / n).is_file()), None)


def dataset_files(data_dir: str | os.PathLike, task: str) -> DataFiles:
    """The released dataset of ``task`` that ``data_dir`` holds (RefCOCO, RefCOCO+ or RefCOCOg for
    ``refcoco``, read off the file names; RefCOCO when there are none yet)."""
    if task not in TASK_DATASETS:
        raise ValueError(f"task={task!r}: allowed {tuple(TASK_DATASETS)}")
    d = Path(data_dir)
    found = [n for n in TASK_DATASETS[task]
             if any(_first(d, names) for names in DATASETS[n].splits.values())]
    if len(found) > 1:
        raise ValueError(f"data_dir={str(d)!r} holds files of several {task} datasets {found}; OFA ships each in "
                         "its own directory (refcoco_data/, refcocoplus_data/, refcocog_data/): pass one of them")
    return DATASETS[found[0] if found else TASK_DATASETS[task][0]]


def split_file(data_dir: str | os.PathLike, task: str, split: str) -> Path:
    """The TSV of one split (the first of its accepted names that exists, else the OFA name)."""
    spec = dataset_files(data_dir, task)
    if split not in spec.splits:
        raise ValueError(f"split={split!r}: allowed for {spec.name}: {tuple(spec.splits)}")
    names = spec.splits[split]
    return _first(Path(data_dir), names) or Path(data_dir) / names[0]


def extra_file(data_dir: str | os.PathLike, task: str, role: str) -> Path | None:
    """An extra file (``answers``, ``cider_df``, ``coco_refs``, ``stage2_train``) when present, else None."""
    spec = dataset_files(data_dir, task)
    names = {**spec.required, **spec.optional}.get(role)
    return None if names is None else _first(Path(data_dir), names)


def scored_splits(data_dir: str | os.PathLike, task: str) -> tuple[str, tuple[str, ...]]:
    """(validation split, test splits) of the dataset ``data_dir`` holds."""
    spec = dataset_files(data_dir, task)
    return spec.val, spec.tests


def missing_files(data_dir: str | os.PathLike, task: str, splits: Sequence[str]) -> list[str]:
    """The files a run over ``splits`` needs that ``data_dir`` lacks (OFA names; alternatives joined by 'or')."""
    spec, d = dataset_files(data_dir, task), Path(data_dir)
    wanted = [spec.splits[s] for s in splits] + list(spec.required.values())
    return [" or ".join(names) for names in wanted if _first(d, names) is None]


def check_run_files(data_dir: str | os.PathLike, task: str, splits: Sequence[str]) -> None:
    """Raise FileNotFoundError naming every missing file (and where OFA publishes it) before any training."""
    missing = missing_files(data_dir, task, splits)
    if missing:
        spec = dataset_files(data_dir, task)
        raise FileNotFoundError(
            f"data_dir={str(data_dir)!r}: the {spec.name} run over splits {list(splits)} needs {missing}, which "
            f"are missing; OFA publishes them in {spec.url} (see {OFA_DATASETS_DOC})")


def ofa_dataset_kwargs(task: str, split: str, data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """:class:`~mmprompt.data.TaskDataset` keyword arguments reading a split as OFA's dataset classes do
    (with ``data_dir``, the caption validation split takes OFA's cached CIDEr tokens when present)."""
    kwargs: dict[str, Any] = {}
    if task == "refcoco":
        kwargs["max_image_size"] = 512  # tasks/mm_tasks/refcoco.py: max_image_size default
    if task == "vqa":  # confidences weight the training loss only (held-out losses stay plain token means)
        kwargs.update(confidence_weights=split == "train", keep_unlisted=True)
    if task == "caption" and split != "train":
        kwargs["id_column"] = "image_id"  # OFA's caption evaluation selects columns 1,4,2
        cache = extra_file(data_dir, task, "cider_df") if (data_dir is not None and split == "val") else None
        if cache is not None:
            kwargs["cider_cache"] = cache  # OFA's --eval-cider-cached-tokens (validation during training)
    return kwargs


def write_vqa_submission(predictions: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write ``[{"question_id": int, "answer": str}, ...]`` (the VQA challenge's result format) atomically.

    ``predictions`` are evaluation rows (``id`` = OFA's uniq_id, the question id; ``prediction``)."""
    rows = []
    for r in predictions:
        qid = str(r["id"])
        if not qid.lstrip("-").isdigit():
            raise ValueError(f"prediction id={qid!r}: a VQA question id must be an integer")
        rows.append({"question_id": int(qid), "answer": str(r["prediction"])})
    return write_json(path, rows)
