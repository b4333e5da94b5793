"""Put executed notebook runs next to the paper's numbers (notebook 10).

Every notebook saves ``results = {task: {variant: {split: headline metric}}}`` in its ``metrics.json``
(:func:`mmprompt.workbook.api.results_dict`); :data:`PAPER_ROWS` says which paper table and row a variant of a
notebook corresponds to. :func:`comparison_table` reads the runs under a ``papermill_runs`` directory
(:func:`mmprompt.workbook.report.collect_runs`) and lines them up with :mod:`mmprompt.workbook.paper`;
:func:`gpu_commands` prints the runs that produce the reproduction on a GPU machine.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

from mmprompt.workbook import paper
from mmprompt.workbook.report import collect_runs

__all__ = ["PAPER_ROWS", "comparison_table", "default_runs_root", "gpu_commands", "natural_key", "paper_size",
           "run_results", "study_table"]

#: notebook stem -> variant label in its ``results`` -> (paper table, row). Table 1 rows also need the
#: model size, filled in from the run's backbone (see :func:`paper_size`).
PAPER_ROWS: dict[str, dict[str, tuple[str, Any]]] = {
    "02_tasks": {"prefix": ("table1", "PT"), "finetune": ("table1", "FT")},
    "04_prompt_depth": {"encoder only": ("table3", "encoder only"), "decoder only": ("table3", "decoder only"),
                        "encoder+decoder": ("table3", "encoder+decoder")},
    "05_reparameterization": {"plain": ("table4", "plain"), "MLP": ("table4", "MLP")},
    "08_lightweight_methods": {"bitfit": ("table2", "BitFit"), "adapter": ("table2", "Adapter"),
                               "prefix": ("table2", "Prompt Tuning")},
}
_SIZES = tuple(paper.OFA_SIZES)


def paper_size(name: str | os.PathLike | None) -> str | None:
    """The OFA size named in a backbone name or model directory (``/ckpt/ofa-large`` -> ``large``), or None."""
    if name is None:
        return None
    words = re.split(r"[^a-z]+", Path(os.fspath(name)).name.lower())
    found = [s for s in _SIZES if s in words]
    return found[0] if len(found) == 1 else None


def run_results(metrics: dict[str, Any]) -> list[tuple[str, str, str, float]]:
    """``(task, variant, split, value)`` from a run's flattened metrics (keys ``results.<task>.<variant>.<split>``)."""
    out = []
    for key, value in metrics.items():
        parts = key.split(".")
        if len(parts) == 4 and parts[0] == "results" and isinstance(value, int | float) and not isinstance(value, bool):
            out.append((parts[1], parts[2], parts[3], float(value)))
    return out


def comparison_table(root: str | os.PathLike, profile: str | None = None):
    """One row per (run, task, variant, split) of the successful runs under ``root``: our value on the
    paper's scale (x100), and the paper's number where :data:`PAPER_ROWS` maps the variant (NaN otherwise).
    ``profile`` keeps only runs executed with that profile. Empty (with the columns) when there are none."""
    import pandas as pd

    columns = ["notebook", "run_id", "profile", "backbone", "task", "variant", "split", "ours", "paper_table",
               "paper_row", "paper", "diff"]
    root = Path(root)
    if not root.is_dir():
        return pd.DataFrame(columns=columns)
    rows = []
    for notebook, runs in collect_runs(root).items():
        for run in runs:
            run_profile = run.parameters.get("profile", "ci")
            if run.status != "ok" or (profile is not None and run_profile != profile):
                continue
            source = run.parameters.get("model_dir") or run.parameters.get("backbone", "ofa-nano")
            size = paper_size(source)
            for task, variant, split, value in run_results(run.metrics):
                table, row = PAPER_ROWS.get(notebook, {}).get(variant, (None, None))
                if table == "table1":
                    row = (size, row) if size in ("base", "large") else None
                target = None
                if table is not None and row is not None and (task, split) in paper.TASK_COLUMNS:
                    target = paper.paper_value(table, row, task, split)
                ours = 100.0 * value
                rows.append({"notebook": notebook, "run_id": run.run_id, "profile": run_profile,
                             "backbone": str(source), "task": task, "variant": variant, "split": split,
                             "ours": ours, "paper_table": table, "paper_row": None if row is None else str(row),
                             "paper": target, "diff": None if target is None else ours - target})
    return pd.DataFrame(rows, columns=columns)


def natural_key(text: Any) -> tuple:
    """Sort key that orders numbers inside labels by value: ``P=10 < P=16 < P=100``."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", str(text)) if t)


def _table6_score(notebook: str, variant: str) -> float | None:
    """Appendix Table 6's score for a prompt-length variant (``P=64``) of notebook 03, else None."""
    m = re.fullmatch(r"P=(\d+)", variant)
    return paper.TABLE6_LENGTH.get(int(m.group(1))) if notebook == "03_prompt_length" and m else None


def study_table(comparison):
    """:func:`comparison_table` laid out for reading: one row per (notebook, task, variant) in natural order
    (``P=10`` before ``P=100``), our validation score, our mean over the task's test splits (tasks differ in
    their split names, so splits are not columns), and the paper's number for the row with its table (the
    validation split's; for notebook 03's prompt lengths, appendix Table 6's score, whose task the paper
    does not state). Scores ×100."""
    import pandas as pd

    from mmprompt.experiment.profiles import SPLITS

    columns = ["notebook", "task", "variant", "validation", "test (mean)", "paper", "paper table"]
    rows = []
    for (notebook, task, variant), group in comparison.groupby(["notebook", "task", "variant"], sort=False):
        val_split = SPLITS[task][0] if task in SPLITS else None
        val = group[group["split"] == val_split]
        tests = group[group["split"] != val_split]
        target, table = _table6_score(notebook, variant), "table6 (score)"
        if target is None:
            known = val.dropna(subset=["paper"])
            target = float(known["paper"].iloc[0]) if len(known) else None
            table = known["paper_table"].iloc[0] if len(known) else None
        rows.append({"notebook": notebook, "task": task, "variant": variant,
                     "validation": float(val["ours"].mean()) if len(val) else None,
                     "test (mean)": float(tests["ours"].mean()) if len(tests) else None,
                     "paper": target, "paper table": table if target is not None else ""})
    frame = pd.DataFrame(rows, columns=columns)
    order = sorted(range(len(frame)), key=lambda i: (frame["notebook"][i], frame["task"][i],
                                                     natural_key(frame["variant"][i])))
    return frame.iloc[order].set_index(["notebook", "task", "variant"])


#: Notebooks of the GPU reproduction and the parameters swept for each (one run per combination).
_GPU_PLAN: tuple[tuple[str, str], ...] = (
    ("02_tasks", "-p task refcoco snli_ve caption vqa"),
    ("03_prompt_length", "-p task refcoco -p length 10 16 32 64 100 120"),
    ("04_prompt_depth", "-p task refcoco snli_ve caption vqa"),
    ("05_reparameterization", "-p task refcoco snli_ve caption vqa"),
    ("06_robustness", "-p task refcoco snli_ve caption vqa"),
    ("07_efficiency", "-p task refcoco"),
    ("08_lightweight_methods", "-p task refcoco snli_ve caption vqa"),
)


def gpu_commands(model_dir: str = "/ckpt/ofa-large", data_dir: str = "/data/ofa",
                 out: str = "papermill_runs/gpu", sizes: tuple[str, ...] = ()) -> list[str]:
    """Shell commands (run from the repository root) that execute the GPU reproduction with
    :mod:`mmprompt.workbook.runs` into ``out``. ``data_dir`` holds the real datasets in OFA's TSV layout
    (``<task>_<split>.tsv``); ``sizes`` adds Table 1 runs of notebook 02 for other OFA checkpoints
    (``/ckpt/ofa-<size>`` next to ``model_dir``)."""
    common = f"--profile gpu -p model_dir {shlex.quote(model_dir)} -p data_dir {shlex.quote(data_dir)} " \
             f"--out {shlex.quote(out)}"
    cmds = [f"python -m mmprompt.runs sweep notebooks/{nb}.ipynb {grid} {common}" for nb, grid in _GPU_PLAN]
    parent = str(Path(model_dir).parent)
    for size in sizes:
        if size not in _SIZES:
            raise ValueError(f"sizes contains {size!r}; allowed {_SIZES}")
        other = shlex.quote(f"{parent}/ofa-{size}")
        cmds.append(f"python -m mmprompt.runs sweep notebooks/02_tasks.ipynb -p task refcoco snli_ve caption vqa "
                    f"--profile gpu -p model_dir {other} -p data_dir {shlex.quote(data_dir)} --out {shlex.quote(out)}")
    return cmds


def default_runs_root() -> Path:
    """``papermill_runs`` of the source checkout this package runs from, else ``./papermill_runs``."""
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file():
        return repo / "papermill_runs"
    return Path("papermill_runs")
