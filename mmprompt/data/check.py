"""Check a real data directory before any run: ``python -m mmprompt.data.check DIR --task T``.

For the dataset the directory holds (RefCOCO, RefCOCO+, RefCOCOg, SNLI-VE, caption or VQA in OFA's released
layout, :mod:`mmprompt.data.ofa_files`) it reports every split file and extra file: present or missing (with
where OFA publishes it), the column count, and the first ``--rows`` rows parsed with their images decoded. It
exits with status 1 when a file a run needs is missing or a sampled row is bad.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mmprompt.core.checks import check_int
from mmprompt.data.collate import load_answer_list
from mmprompt.data.ofa_files import OFA_DATASETS_DOC, TASK_DATASETS, dataset_files, extra_file
from mmprompt.data.safe_pickle import load_plain_pickle
from mmprompt.data.tasks import vqa_target_answer
from mmprompt.data.tsv import LAYOUTS, RowProblem, VqaRecord, parse_row


@dataclass
class CheckReport:
    """What :func:`check_data_dir` found: one line per file, and whether a run can start."""

    dataset: str
    lines: list[str] = field(default_factory=list)
    problems: int = 0

    @property
    def ok(self) -> bool:
        return self.problems == 0

    def add(self, ok: bool, text: str) -> None:
        self.lines.append(f"{'ok     ' if ok else 'PROBLEM'} {text}")
        self.problems += not ok


def _sample_rows(path: Path, task: str, rows: int) -> tuple[int, list, list[str]]:
    """(columns of the first row, parsed records, problems) of the first ``rows`` rows."""
    records, problems, ncols = [], [], 0
    with open(path, "rb") as f:
        for n, raw in enumerate(itertools.islice(f, rows), start=1):
            values = raw.decode("utf-8", errors="replace").rstrip("\r\n").split("\t")
            ncols = ncols or len(values)
            try:
                records.append(parse_row(task, values, n, "full"))
            except RowProblem as err:
                problems.append(f"line {n}: {err}")
    return ncols, records, problems


def _check_split(report: CheckReport, d: Path, task: str, split: str, names: tuple[str, ...], rows: int,
                 answers: set[str] | None) -> None:
    path = next((d / n for n in names if (d / n).is_file()), None)
    if path is None:
        report.add(False, f"{split}: {' or '.join(names)} missing")
        return
    ncols, records, problems = _sample_rows(path, task, rows)
    text = (f"{split}: {path.name}: {ncols} columns (layout {', '.join(LAYOUTS[task])}), "
            f"{len(records)} of the first {len(records) + len(problems)} rows parsed with images decoded")
    if records and records[0].image is not None:
        text += f" (first image {records[0].image.size[0]}x{records[0].image.size[1]})"
    if answers is not None and records:
        listed = sum(vqa_target_answer(r.answers) in answers for r in records if isinstance(r, VqaRecord))
        text += f"; {listed} of {len(records)} target answers in the answer list (the others are kept, scored 0)"
    report.add(not problems and bool(records), text)
    for p in problems[:5]:
        report.lines.append(f"          {p}")


def check_data_dir(data_dir: str | Path, task: str, rows: int = 5) -> CheckReport:
    """Check ``data_dir`` for ``task`` (see the module docstring)."""
    if task not in TASK_DATASETS:
        raise ValueError(f"task={task!r}: allowed {tuple(TASK_DATASETS)}")
    check_int("rows", rows, 1)
    d = Path(data_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"data_dir={str(d)!r}: no such directory")
    spec = dataset_files(d, task)
    report = CheckReport(spec.name)
    answers = None
    if "answers" in spec.required:
        path = extra_file(d, task, "answers")
        if path is None:
            report.add(False, f"answers: {' or '.join(spec.required['answers'])} missing")
        else:
            try:
                answers = set(load_answer_list(path))
                report.add(True, f"answers: {path.name}: {len(answers)} candidate answers")
            except ValueError as err:
                report.add(False, f"answers: {err}")
    for split, names in spec.splits.items():
        _check_split(report, d, task, split, names, rows, answers)
    for role, names in spec.optional.items():
        _check_optional(report, d, role, names)
    if not report.ok:
        report.lines.append(f"OFA publishes {spec.name} in {spec.url} (list: {OFA_DATASETS_DOC})")
    return report


def _check_optional(report: CheckReport, d: Path, role: str, names: tuple[str, ...]) -> None:
    path = next((d / n for n in names if (d / n).is_file()), None)
    if path is None:
        report.lines.append(f"absent  {role}: {' or '.join(names)} (optional)")
        return
    try:
        if path.suffix == ".p":
            value = load_plain_pickle(path)
            report.add(isinstance(value, dict) and "document_frequency" in value,
                       f"{role}: {path.name}: {len(value.get('document_frequency', {}))} cached n-gram frequencies")
        elif path.suffix == ".json":
            value = json.loads(path.read_text(encoding="utf-8"))
            report.add(True, f"{role}: {path.name}: {len(value.get('annotations', []))} annotations")
        else:
            report.add(True, f"{role}: {path.name} present")
    except (ValueError, OSError) as err:
        report.add(False, f"{role}: {err}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmprompt.data.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", help="the dataset directory (e.g. refcocog_data/ as OFA's zip unpacks)")
    parser.add_argument("--task", required=True, choices=tuple(TASK_DATASETS))
    parser.add_argument("--rows", type=int, default=5, help="rows parsed (images decoded) per split file")
    args = parser.parse_args(argv)
    report = check_data_dir(args.data_dir, args.task, args.rows)
    print(f"{args.data_dir}: {report.dataset}")
    print("\n".join(report.lines))
    print("ready" if report.ok else f"{report.problems} problem(s)")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
