"""The paper's numbers as data: "Prompt Tuning for Generative Multimodal Pretrained Models" (Yang, Lin et al.,
2022, arXiv 2208.02532), Tables 1-6, with the mapping from this project's tasks and splits to its columns.

Every number is copied exactly from the paper's text (see ``reference/paper-and-ofa.md`` sections 1-4);
the notebooks compare their own runs against these. Tables 1-4 share 16 result columns (:data:`COLUMNS`):
RefCOCO / RefCOCO+ / RefCOCOg Acc@0.5, SNLI-VE accuracy, COCO captions (Karpathy test, cross-entropy
training only) B@4 / METEOR / CIDEr / SPICE, and VQA v2 accuracy. All are percentages except CIDEr,
which is reported ×100 (138.2 means 1.382).

>>> from mmprompt import paper
>>> float(paper.table("table1").loc[("large", "PT"), ("RefCOCO", "val", "Acc@0.5")])
90.05
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mmprompt.core.checks import check_int

__all__ = [
    "COLUMNS", "Column", "LENGTHS", "LENGTHS_APPENDIX", "OFA_SIZES", "TABLES", "TABLE5_GPU_HOURS",
    "TABLE6_LENGTH", "TASK_COLUMNS", "column", "paper_value", "prefix_parameters", "refcoco_gap", "relative",
    "table", "task_values",
]


@dataclass(frozen=True)
class Column:
    """One result column of Tables 1-4: dataset, split and metric."""

    dataset: str
    split: str
    metric: str


#: The 16 result columns of Tables 1-4, in the paper's order.
COLUMNS: tuple[Column, ...] = (
    Column("RefCOCO", "val", "Acc@0.5"), Column("RefCOCO", "testA", "Acc@0.5"),
    Column("RefCOCO", "testB", "Acc@0.5"),
    Column("RefCOCO+", "val", "Acc@0.5"), Column("RefCOCO+", "testA", "Acc@0.5"),
    Column("RefCOCO+", "testB", "Acc@0.5"),
    Column("RefCOCOg", "val-u", "Acc@0.5"), Column("RefCOCOg", "test-u", "Acc@0.5"),
    Column("SNLI-VE", "dev", "Acc"), Column("SNLI-VE", "test", "Acc"),
    Column("COCO", "test", "B@4"), Column("COCO", "test", "METEOR"), Column("COCO", "test", "CIDEr"),
    Column("COCO", "test", "SPICE"),
    Column("VQA", "test-dev", "Acc"), Column("VQA", "test-std", "Acc"),
)

_ROWS: dict[str, dict[Any, tuple[float, ...]]] = {
    # Table 1: finetuning (FT) vs prompt tuning (PT), base (~180M) and large (~470M) OFA.
    "table1": {
        ("base", "FT"): (88.48, 90.67, 83.30, 81.39, 87.15, 74.29, 82.29, 82.31, 89.30, 89.20,
                         41.00, 30.90, 138.2, 24.20, 78.00, 78.10),
        ("base", "PT"): (84.53, 85.21, 77.36, 76.34, 81.44, 67.68, 75.61, 76.57, 88.18, 88.59,
                         39.70, 30.10, 134.2, 23.50, 74.31, 74.47),
        ("large", "FT"): (90.05, 92.93, 85.26, 85.80, 89.87, 79.22, 85.89, 86.55, 90.30, 90.20,
                          42.40, 31.50, 142.2, 24.50, 80.40, 80.70),
        ("large", "PT"): (90.05, 92.31, 85.59, 84.54, 89.40, 77.77, 85.27, 85.89, 90.04, 90.12,
                          41.81, 31.51, 141.4, 24.42, 78.30, 78.53),
    },
    # Table 2: other light-weight methods on the large model (LoRA is not in the paper).
    "table2": {
        "BitFit": (89.61, 92.20, 84.91, 82.60, 88.08, 75.16, 84.66, 84.68, 89.70, 89.42,
                   41.02, 30.92, 138.8, 24.23, 78.23, 78.44),
        "Adapter": (90.01, 92.30, 85.02, 83.79, 88.93, 76.09, 85.10, 85.45, 89.84, 89.78,
                    41.38, 31.16, 139.5, 24.30, 78.27, 78.47),
        "Prompt Tuning": (90.05, 92.31, 85.59, 84.54, 89.40, 77.77, 85.27, 85.89, 90.04, 90.12,
                          41.81, 31.51, 141.4, 24.42, 78.30, 78.53),
    },
    # Table 3: where the prefixes go (always every layer of the chosen stacks), large model.
    "table3": {
        "encoder only": (89.48, 91.71, 84.98, 84.50, 89.22, 77.71, 85.07, 85.58, 89.64, 89.70,
                         41.39, 31.08, 141.1, 24.34, 78.10, 78.26),
        "decoder only": (88.90, 91.28, 84.32, 83.46, 88.24, 76.82, 84.54, 85.02, 88.56, 88.71,
                         40.08, 30.43, 140.8, 24.06, 77.84, 78.03),
        "encoder+decoder": (90.05, 92.31, 85.59, 84.54, 89.40, 77.77, 85.27, 85.89, 90.04, 90.12,
                            41.81, 31.51, 141.4, 24.42, 78.30, 78.53),
    },
    # Table 4: reparameterisation of the prefix table, large model.
    "table4": {
        "plain": (90.05, 92.31, 85.59, 84.54, 89.40, 77.77, 85.27, 85.89, 90.04, 90.12,
                  41.81, 31.51, 141.4, 24.42, 78.30, 78.53),
        "MLP": (90.12, 92.56, 85.63, 84.83, 89.65, 77.94, 85.42, 86.01, 89.98, 90.02,
                41.67, 31.48, 140.7, 24.40, 78.26, 78.48),
    },
}
TABLES: tuple[str, ...] = tuple(_ROWS)

#: Table 5: total GPU hours of finetuning (FT) and prompt tuning (PT) per task.
TABLE5_GPU_HOURS: dict[str, dict[str, float]] = {
    "RefCOCO": {"FT": 40.00, "PT": 77.44},
    "SNLI-VE": {"FT": 80.96, "PT": 164.48},
    "COCO Captions": {"FT": 29.60, "PT": 16.16},
    "VQA": {"FT": 616.16, "PT": 455.52},
}

#: Prompt lengths named in the text (Section 4.4) and in the appendix table header (32 instead of 30).
LENGTHS: tuple[int, ...] = (10, 16, 30, 64, 100, 120)
LENGTHS_APPENDIX: tuple[int, ...] = (10, 16, 32, 64, 100, 120)
#: Appendix Table 6: one "Score" per prompt length (which task/metric it averages is not stated).
TABLE6_LENGTH: dict[int, float] = {10: 91.84, 16: 91.29, 32: 91.94, 64: 92.29, 100: 92.10, 120: 91.93}
#: The paper's recommendation.
RECOMMENDED_LENGTH = 64
PROMPT_LR = 0.03

#: OFA sizes (README): parameters and (d_model, encoder layers, decoder layers).
OFA_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"parameters": 33_000_000, "d_model": 256, "encoder_layers": 4, "decoder_layers": 4},
    "medium": {"parameters": 93_000_000, "d_model": 512, "encoder_layers": 4, "decoder_layers": 4},
    "base": {"parameters": 180_000_000, "d_model": 768, "encoder_layers": 6, "decoder_layers": 6},
    "large": {"parameters": 470_000_000, "d_model": 1024, "encoder_layers": 12, "decoder_layers": 12},
    "huge": {"parameters": 930_000_000, "d_model": 1280, "encoder_layers": 24, "decoder_layers": 12},
}

#: Which paper column a (task, split) of this project is compared with. The synthetic world's VQA has
#: val/test splits: they stand in for the evaluation-server splits test-dev/test-std.
TASK_COLUMNS: dict[tuple[str, str], Column] = {
    ("refcoco", "val"): COLUMNS[0], ("refcoco", "testA"): COLUMNS[1], ("refcoco", "testB"): COLUMNS[2],
    ("snli_ve", "dev"): COLUMNS[8], ("snli_ve", "test"): COLUMNS[9],
    ("caption", "test"): COLUMNS[12], ("caption", "val"): COLUMNS[12],
    ("vqa", "val"): COLUMNS[14], ("vqa", "test"): COLUMNS[15],
}
#: This project's metric name for each paper metric, and the factor that puts it on the paper's scale.
METRIC_SCALE: dict[str, tuple[str, float]] = {
    "Acc@0.5": ("acc@0.5", 100.0), "Acc": ("accuracy", 100.0), "CIDEr": ("cider", 100.0),
    "B@4": ("bleu4", 100.0), "METEOR": ("meteor", 100.0), "SPICE": ("spice", 100.0),
}


def _check_table(name: str) -> None:
    if name not in _ROWS:
        raise ValueError(f"name={name!r}: allowed {TABLES} (Table 5: TABLE5_GPU_HOURS, Table 6: TABLE6_LENGTH)")


def table(name: str):
    """Tables 1-4 as a pandas DataFrame: one row per setting (Table 1: (size, method)), columns
    (dataset, split, metric): ``table("table1").loc[("large", "PT"), ("RefCOCO", "val", "Acc@0.5")]``."""
    import pandas as pd

    _check_table(name)
    rows = _ROWS[name]
    index = pd.MultiIndex.from_tuples(list(rows), names=["size", "method"]) if name == "table1" else list(rows)
    cols = pd.MultiIndex.from_tuples([(c.dataset, c.split, c.metric) for c in COLUMNS],
                                     names=["dataset", "split", "metric"])
    return pd.DataFrame([list(v) for v in rows.values()], index=index, columns=cols)


def column(dataset: str, split: str, metric: str) -> int:
    """Index of a column in :data:`COLUMNS`."""
    for i, c in enumerate(COLUMNS):
        if (c.dataset, c.split, c.metric) == (dataset, split, metric):
            return i
    allowed = [(c.dataset, c.split, c.metric) for c in COLUMNS]
    raise ValueError(f"no column ({dataset!r}, {split!r}, {metric!r}); allowed {allowed}")


def paper_value(name: str, row: Any, task: str, split: str) -> float:
    """The paper's number for one of this project's (task, split) in table ``name``, row ``row``."""
    _check_table(name)
    if row not in _ROWS[name]:
        raise ValueError(f"row={row!r}: allowed {list(_ROWS[name])}")
    if (task, split) not in TASK_COLUMNS:
        raise ValueError(f"(task, split)={(task, split)!r}: allowed {sorted(TASK_COLUMNS)}")
    return _ROWS[name][row][COLUMNS.index(TASK_COLUMNS[(task, split)])]


def refcoco_gap(size: str) -> float:
    """Table 1's FT - PT gap averaged over the 8 RefCOCO/+/g numbers (the paper: base 5.64, large 0.59)."""
    if size not in ("base", "large"):
        raise ValueError(f"size={size!r}: allowed 'base' or 'large'")
    ft, pt = _ROWS["table1"][(size, "FT")][:8], _ROWS["table1"][(size, "PT")][:8]
    return sum(a - b for a, b in zip(ft, pt)) / 8


def prefix_parameters(length: int, size: str) -> int:
    """Prefix table size P x (L_enc + L_dec) x 2 x d of an OFA size (no reparameterisation)."""
    if size not in OFA_SIZES:
        raise ValueError(f"size={size!r}: allowed {sorted(OFA_SIZES)}")
    check_int("length", length, 1)
    s = OFA_SIZES[size]
    return length * (s["encoder_layers"] + s["decoder_layers"]) * 2 * s["d_model"]


def task_values(name: str, row: Any) -> dict[tuple[str, str], float]:
    """The paper's numbers of one row for every (task, split) of this project (see :data:`TASK_COLUMNS`)."""
    return {key: paper_value(name, row, *key) for key in TASK_COLUMNS}


def relative(name: str, row: Any, baseline: Any) -> dict[tuple[str, str], float]:
    """``row / baseline`` for every (task, split), e.g. how much of finetuning's score prompt tuning keeps:
    ``relative("table1", ("base", "PT"), ("base", "FT"))``."""
    num, den = task_values(name, row), task_values(name, baseline)
    return {key: num[key] / den[key] for key in TASK_COLUMNS}
