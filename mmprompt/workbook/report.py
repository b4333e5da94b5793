"""Aggregate the runs under ``papermill_runs/`` into a Markdown report with PNG figures.

One table per notebook (a row per run: parameters, then metrics) and, for every parameter that
varies across a notebook's runs, a figure of each numeric metric against it (one line per
combination of the other varying parameters). Failed runs are listed under their notebook.
Figures go to ``<report-stem>_figures/`` next to the report; every file is written atomically.
Run through ``python -m mmprompt.runs report``.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmprompt.core.atomic import write_figure, write_text
from mmprompt.workbook.records import FAILED_DIR, read_json

log = logging.getLogger(__name__)

MAX_METRICS_PER_FIGURE = 6
_NOT_PLOTTED = frozenset({"n"})


@dataclass
class RunRecord:
    """One run directory as read back from disk."""

    notebook: str
    run_id: str
    path: Path
    status: str
    parameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts to dotted keys; lists are left out (they do not fit a table cell)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        elif not isinstance(value, list):
            out[name] = value
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _read_run(nb_dir: Path, run_dir: Path, failed: bool) -> RunRecord | None:
    try:
        info = read_json(run_dir / "run.json")
        params = read_json(run_dir / "parameters.json") if (run_dir / "parameters.json").is_file() else {}
    except (OSError, ValueError) as exc:
        log.warning("skipping %s: unreadable run files (%s)", run_dir, exc)
        return None
    rec = RunRecord(nb_dir.name, info.get("run_id", run_dir.name), run_dir,
                    "failed" if failed else info.get("status", "unknown"), params)
    if failed:
        err = (run_dir / "error.txt").read_text(encoding="utf-8") if (run_dir / "error.txt").is_file() else ""
        rec.error = next((ln for ln in err.splitlines() if ln.startswith("exception:")), err[:200])
    elif (run_dir / "metrics.json").is_file():
        try:
            rec.metrics = flatten(read_json(run_dir / "metrics.json"))
        except (OSError, ValueError) as exc:
            log.warning("unreadable metrics in %s (%s)", run_dir, exc)
    return rec


def _run_dirs(parent: Path) -> list[Path]:
    if not parent.is_dir():
        return []
    return [p for p in sorted(parent.iterdir())
            if p.is_dir() and not p.name.startswith((".", "_")) and (p / "run.json").is_file()]


def collect_runs(root: str | os.PathLike[str]) -> dict[str, list[RunRecord]]:
    """``{notebook stem: [runs]}`` for every ``<root>/<stem>/[_failed/]<run-id>/run.json``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root={str(root)!r} is not a directory of papermill runs")
    out: dict[str, list[RunRecord]] = {}
    for nb_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        runs = [rec for parent, failed in ((nb_dir, False), (nb_dir / FAILED_DIR, True))
                for run_dir in _run_dirs(parent) if (rec := _read_run(nb_dir, run_dir, failed)) is not None]
        if runs:
            out[nb_dir.name] = runs
    return out


def _sort_key(value: Any) -> tuple:
    if value is None:
        return (0, 0.0, "")
    if _is_number(value):
        return (1, float(value), "")
    return (2, 0.0, str(value))


def format_cell(value: Any) -> str:
    """Markdown cell text: floats with 4 decimals (or 4 significant digits when large/small)."""
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-3):
            return f"{value:.4g}"
        return f"{value:.4f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _union_keys(dicts: Iterable[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for d in dicts:
        seen.update(dict.fromkeys(d))
    return list(seen)


def markdown_table(runs: Sequence[RunRecord], max_columns: int = 12) -> str:
    """A Markdown table: run id, the parameters (sorted by name), then the metrics (a metric that repeats a
    parameter, e.g. ``profile``, is left out). Wider than ``max_columns`` it is transposed: one row per
    parameter or metric, one column per run."""
    params = sorted(_union_keys(r.parameters for r in runs), key=lambda k: (k != "profile", k))
    metrics = [m for m in _union_keys(r.metrics for r in runs)
               if not (m in params and all(r.metrics.get(m) == r.parameters.get(m) for r in runs))]
    rows = sorted(runs, key=lambda r: [_sort_key(r.parameters.get(p)) for p in params] + [r.run_id])
    columns = [[f"`{r.run_id}`", *(format_cell(r.parameters.get(p)) for p in params),
                *(format_cell(r.metrics.get(m)) for m in metrics)] for r in rows]
    names = ["run", *params, *metrics]
    if len(names) > max_columns:
        header, body = [names[0], *(c[0] for c in columns)], [[n, *(c[i] for c in columns)]
                                                             for i, n in enumerate(names) if i > 0]
    else:
        header, body = names, columns
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def swept_parameters(runs: Sequence[RunRecord]) -> list[str]:
    """Parameters taking more than one value across ``runs``."""
    keys = _union_keys(r.parameters for r in runs)
    return [k for k in keys if len({repr(r.parameters.get(k)) for r in runs}) > 1]


def _plot_metric_vs(runs: Sequence[RunRecord], x: str, others: Sequence[str], metrics: Sequence[str]):
    from matplotlib.figure import Figure

    xs_all = [r.parameters.get(x) for r in runs]
    numeric_x = all(_is_number(v) for v in xs_all)
    categories = sorted({repr(v) for v in xs_all}, key=lambda s: _sort_key(s))
    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    groups: dict[tuple, list[RunRecord]] = {}
    for r in runs:
        groups.setdefault(tuple(repr(r.parameters.get(o)) for o in others), []).append(r)
    for ax, metric in zip(axes, metrics):
        for key, members in sorted(groups.items()):
            pts = sorted(((r.parameters.get(x), r.metrics.get(metric)) for r in members
                          if _is_number(r.metrics.get(metric))), key=lambda p: _sort_key(p[0]))
            if not pts:
                continue
            xv = [p[0] if numeric_x else categories.index(repr(p[0])) for p in pts]
            label = ", ".join(f"{o}={k}" for o, k in zip(others, key)) or None
            ax.plot(xv, [p[1] for p in pts], marker="o", label=label)
        ax.set_xlabel(x)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        if not numeric_x:
            ax.set_xticks(range(len(categories)), categories)
        if others and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    return fig


def plot_sweeps(notebook: str, runs: Sequence[RunRecord], fig_dir: Path) -> list[Path]:
    """One PNG per swept parameter of ``notebook``: every numeric metric against it."""
    ok = [r for r in runs if r.status == "ok"]
    metrics = [m for m in _union_keys(r.metrics for r in ok)
               if m not in _NOT_PLOTTED and any(_is_number(r.metrics.get(m)) for r in ok)]
    metrics = metrics[:MAX_METRICS_PER_FIGURE]
    if len(ok) < 2 or not metrics:
        return []
    swept = swept_parameters(ok)
    paths = []
    for x in swept:
        fig = _plot_metric_vs(ok, x, [o for o in swept if o != x], metrics)
        paths.append(write_figure(fig_dir / f"{notebook}__{x}.png", fig, dpi=100))
    return paths


def render_report(runs_by_nb: Mapping[str, Sequence[RunRecord]], fig_dir: Path, report_dir: Path) -> str:
    """The Markdown text of the report (writes the figures as a side effect)."""
    lines = ["# papermill runs", "", "Generated by `python -m mmprompt.runs report`; one section per notebook.", ""]
    if not runs_by_nb:
        lines.append("No runs found.")
    for nb, runs in runs_by_nb.items():
        ok = [r for r in runs if r.status == "ok"]
        failed = [r for r in runs if r.status == "failed"]
        lines += [f"## {nb}", ""]
        lines += [markdown_table(ok), ""] if ok else ["No successful runs.", ""]
        for png in plot_sweeps(nb, ok, fig_dir):
            lines += [f"![{png.stem}]({os.path.relpath(png, report_dir).replace(os.sep, '/')})", ""]
        if failed:
            lines += ["Failed runs:", ""]
            good = {r.run_id for r in ok}
            lines += [f"- `{r.run_id}`: {r.error or 'see error.txt'} (`{r.path.name}/error.txt`)"
                      + (" — the earlier good run is kept above" if r.run_id in good else "") for r in failed]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write_report(root: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Write ``out`` (default ``<root>/REPORT.md``) and its figures; returns the report path."""
    root = Path(root)
    runs = collect_runs(root)
    out = Path(out) if out is not None else root / "REPORT.md"
    if out.suffix.lower() != ".md":
        raise ValueError(f"out must be a Markdown file ending in .md; got {str(out)!r}")
    fig_dir = out.parent / f"{out.stem}_figures"
    text = render_report(runs, fig_dir, out.parent)
    if fig_dir.is_dir():  # drop figures of sweeps that no longer exist
        for stale in fig_dir.glob("*.png"):
            if f"]({fig_dir.name}/{stale.name})" not in text:
                stale.unlink()
    write_text(out, text)
    return out
