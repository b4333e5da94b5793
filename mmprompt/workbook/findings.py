"""Findings a notebook prints, and the check that each one still says what its numbers say.

A notebook states a comparison only through :func:`show_finding`: it computes the verdict
(:func:`mmprompt.eval.stats.verdict`) and displays one output with two representations,

* ``text/plain``: ``Finding: <verdict text>`` (what a reader sees), and
* ``application/vnd.mmprompt.finding+json`` (:data:`FINDING_MIME`): the record — both lists of scores, the
  verdict's settings, its text and its interval — the numbers the text stands for.

:func:`check_notebook` scans an executed notebook and recomputes every recorded verdict from its numbers.
It reports a problem when the recomputed text differs from the recorded or displayed text, and when a
verdict line (``Finding: …``, or the verdict wording "… ahead of … by x ± y", "no difference at this
resolution") appears anywhere without a record (printed prose, or a markdown cell): findings are generated
from data, never typed. :func:`assert_findings_hold` raises on any problem, which is what the
test over the executed reference notebooks calls.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmprompt.eval.stats import DEFAULT_RESAMPLES, DEFAULT_SEED, POINTS, Verdict, verdict

FINDING_MIME = "application/vnd.mmprompt.finding+json"
FINDING_PREFIX = "Finding: "
RECORD_VERSION = 1
#: The verdict settings a record carries (keyword arguments of :func:`mmprompt.eval.stats.verdict`).
SETTINGS: tuple[str, ...] = ("profile", "unit", "scale", "digits", "paired", "over", "confidence",
                             "n_resamples", "seed")


@dataclass(frozen=True)
class Problem:
    """One disagreement between a notebook's findings and its data: cell index and what is wrong."""

    cell: int
    message: str

    def __str__(self) -> str:
        return f"cell {self.cell}: {self.message}"


@dataclass(frozen=True)
class FindingsReport:
    """The findings a notebook records (their texts) and the problems found."""

    findings: list[str]
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems


def finding(name_a: str, a: Sequence[float], name_b: str, b: Sequence[float], *, profile: str = "cpu",
            unit: str = "points", scale: float = POINTS, digits: int = 1, paired: bool = True,
            over: str = "examples", confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES,
            seed: int = DEFAULT_SEED) -> tuple[Verdict, dict[str, Any]]:
    """The verdict of A vs B (:func:`mmprompt.eval.stats.verdict`) and the record that lets it be rechecked."""
    settings = dict(profile=profile, unit=unit, scale=scale, digits=digits, paired=paired, over=over,
                    confidence=confidence, n_resamples=n_resamples, seed=seed)
    v = verdict(name_a, a, name_b, b, **settings)
    record = {"version": RECORD_VERSION, "text": v.text, "winner": v.winner, "smoke": v.smoke,
              "name_a": name_a, "a": [float(x) for x in a], "name_b": name_b, "b": [float(x) for x in b],
              "settings": settings, "diff": v.diff.as_dict()}
    return v, record


def show_finding(name_a: str, a: Sequence[float], name_b: str, b: Sequence[float], **settings: Any) -> Verdict:
    """Display ``Finding: <verdict>`` with its record (see the module docstring); returns the verdict.
    ``settings``: the keyword arguments of :func:`finding`."""
    from IPython.display import display

    v, record = finding(name_a, a, name_b, b, **settings)
    display({"text/plain": FINDING_PREFIX + v.text, FINDING_MIME: record}, raw=True)
    return v


# ------------------------------------------------------------------------------------ checking


def _text(data: Any) -> str:
    return "".join(data) if isinstance(data, list) else str(data or "")


#: A line that states a verdict: a ``Finding:`` line, or the wording of :func:`mmprompt.eval.stats.verdict`.
_VERDICT_LINE = re.compile(r"^\s*Finding:|no difference at this resolution|\bahead of\b.*\bby -?[\d.]+ ± [\d.]+")


def _finding_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if _VERDICT_LINE.search(line)]


def recheck(record: dict[str, Any]) -> list[str]:
    """What is wrong with one finding record (empty: its text is what its numbers give)."""
    try:
        if record.get("version") != RECORD_VERSION:
            return [f"record version {record.get('version')!r}, expected {RECORD_VERSION}"]
        settings = {k: record["settings"][k] for k in SETTINGS}
        v = verdict(record["name_a"], record["a"], record["name_b"], record["b"], **settings)
    except (KeyError, TypeError, ValueError) as exc:
        return [f"finding record cannot be recomputed ({type(exc).__name__}: {exc})"]
    wrong = []
    if v.text != record.get("text"):
        wrong.append(f"recorded text {record.get('text')!r} but its numbers give {v.text!r}")
    if v.winner != record.get("winner"):
        wrong.append(f"recorded winner {record.get('winner')!r} but its numbers give {v.winner!r}")
    diff = record.get("diff", {})
    for key in ("mean", "low", "high"):
        got = diff.get(key)
        if not isinstance(got, (int, float)) or not math.isclose(got, getattr(v.diff, key), rel_tol=1e-9,
                                                                 abs_tol=1e-12):
            wrong.append(f"recorded diff {key}={got!r} but its numbers give {getattr(v.diff, key)!r}")
    return wrong


def _check_output(index: int, output: dict[str, Any], findings: list[str], problems: list[Problem]) -> None:
    kind = output.get("output_type")
    if kind == "stream":
        problems += [Problem(index, f"{line!r} is printed without its numbers (use show_finding)")
                     for line in _finding_lines(_text(output.get("text")))]
        return
    if kind not in ("display_data", "execute_result"):
        return
    data = output.get("data", {})
    shown = _finding_lines(_text(data.get("text/plain")))
    record = data.get(FINDING_MIME)
    if record is None:
        problems += [Problem(index, f"{line!r} is displayed without its numbers (use show_finding)") for line in shown]
        return
    problems += [Problem(index, msg) for msg in recheck(record)]
    text = record.get("text")
    if shown != [FINDING_PREFIX + str(text)]:
        problems.append(Problem(index, f"displayed {shown!r} but the record says {text!r}"))
    findings.append(str(text))


def check_notebook(notebook: str | os.PathLike[str] | Any) -> FindingsReport:
    """Every finding of an executed notebook (a path or an ``nbformat`` node) rechecked against its numbers."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4) if isinstance(notebook, str | os.PathLike) else notebook
    findings: list[str] = []
    problems: list[Problem] = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            problems += [Problem(index, f"{line!r} is typed in a markdown cell; findings are generated "
                                        "(show_finding)") for line in _finding_lines(cell.source)]
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            _check_output(index, output, findings, problems)
    return FindingsReport(findings, problems)


def assert_findings_hold(notebook: str | os.PathLike[str]) -> FindingsReport:
    """:func:`check_notebook`, raising ``AssertionError`` that lists every problem."""
    report = check_notebook(notebook)
    if report.problems:
        listed = "\n".join(f"  {p}" for p in report.problems)
        raise AssertionError(f"{Path(notebook)}: {len(report.problems)} finding(s) disagree with their data:\n{listed}")
    return report
