"""The on-disk layout of notebook runs, shared by the runner and the report.

``<out>`` defaults to ``papermill_runs``::

    <out>/<notebook-stem>/<run-id>/            a successful run
        <notebook-stem>.ipynb                  the executed notebook
        parameters.json                        the parameters passed (run_dir excluded)
        metrics.json                           written by the notebook: save_metrics(metrics, run_dir)
        environment.json                       python/torch/... versions, platform, CPU/GPU, git commit
        run.json                               status "ok", timings, kernel, notebook defaults
    <out>/<notebook-stem>/_failed/<run-id>/    the latest failed or interrupted attempt (+ error.txt)
    <out>/<notebook-stem>/_work/<run-id>/      checkpoints of the run's tuning runs while it is unfinished;
                                               the next attempt continues them, success removes them

Run ids are ``default`` or ``name-value`` pairs (see :func:`~mmprompt.workbook.params.run_id_for`), so
no run id can name the ``_failed`` folder, and a failure record never touches a good run.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmprompt.core import atomic
from mmprompt.workbook.params import to_json

log = logging.getLogger(__name__)

DEFAULT_OUT = "papermill_runs"
FAILED_DIR = "_failed"
WORK_DIR = "_work"


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Atomically write ``data`` as key-sorted JSON (NaN refused: run records must stay valid JSON)."""
    return atomic.write_json(path, data, sort_keys=True, allow_nan=False)


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def run_dir(out: str | os.PathLike[str], notebook_stem: str, run_id: str) -> Path:
    return Path(out) / notebook_stem / run_id


def failed_dir(out: str | os.PathLike[str], notebook_stem: str, run_id: str) -> Path:
    return Path(out) / notebook_stem / FAILED_DIR / run_id


def work_dir(out: str | os.PathLike[str], notebook_stem: str, run_id: str) -> Path:
    return Path(out) / notebook_stem / WORK_DIR / run_id


def is_done(path: Path, require_metrics: bool = True) -> bool:
    """A finished good run: ``run.json`` says ok and (when required) ``metrics.json`` exists."""
    try:
        info = read_json(path / "run.json")
    except (OSError, ValueError):
        return False
    return info.get("status") == "ok" and (not require_metrics or (path / "metrics.json").is_file())


def save_metrics(metrics: Mapping[str, Any], run_dir: str | os.PathLike[str] | None) -> Path | None:
    """Write ``metrics`` to ``<run_dir>/metrics.json`` (atomically); do nothing when ``run_dir`` is None.

    Call it at the end of a notebook with the injected ``run_dir`` parameter.
    """
    if not isinstance(metrics, Mapping) or not metrics:
        raise ValueError(f"metrics must be a non-empty mapping of name -> value; got {metrics!r}")
    data = {str(k): to_json(v, str(k)) for k, v in metrics.items()}
    if run_dir is None or str(run_dir) == "":
        log.info("run_dir is not set (interactive session): metrics not saved")
        return None
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run_dir={str(run_dir)!r} is not an existing directory")
    return write_json(run_dir / "metrics.json", data)
