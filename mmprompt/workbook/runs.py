"""Parametrised notebook runs with papermill: one run, a grid of runs, their summary.

A run executes in a hidden temporary directory beside its final place and is moved there whole only when
it finishes (:mod:`mmprompt.workbook.records` has the layout); a run whose directory holds ``metrics.json``
and status ok is skipped unless ``force``. A failed run, or one stopped by Ctrl-C or SIGTERM, leaves a
failure record in ``_failed/`` and never touches a good run; temporary directories of runners that died
are removed by the next run of the same notebook.

How a notebook learns where to write: the runner injects the parameter ``run_dir`` (a string path).
Notebooks declare ``run_dir = None`` in their ``parameters`` cell and end with
``save_metrics(metrics, run_dir)``, which does nothing interactively (``run_dir`` None).
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mmprompt.core import atomic, env
from mmprompt.workbook import records
from mmprompt.workbook.environment import PACKAGE_DIR, capture_environment
from mmprompt.workbook.params import RUN_DIR_PARAM, notebook_parameters, run_id_for, to_json, validate_params

log = logging.getLogger(__name__)

DEFAULT_KERNEL = "python3"


@dataclass
class RunConfig:
    """Options shared by all runs of one invocation."""

    out: Path = Path(records.DEFAULT_OUT)
    force: bool = False
    kernel_name: str = DEFAULT_KERNEL
    require_metrics: bool = True
    log_output: bool = False
    progress_bar: bool = False
    execution_timeout: int | None = None
    start_timeout: int = 60

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.execution_timeout is not None and self.execution_timeout <= 0:
            raise ValueError(f"execution_timeout must be > 0 seconds or None; got {self.execution_timeout}")
        if self.start_timeout <= 0:
            raise ValueError(f"start_timeout must be > 0 seconds; got {self.start_timeout}")


@dataclass
class RunResult:
    """Outcome of one run: ``status`` is ``ok``, ``skipped`` or ``failed``."""

    run_id: str
    status: str
    path: Path
    parameters: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    duration_s: float = 0.0


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_kernel(kernel_name: str) -> None:
    """Raise ``ValueError`` unless ``kernel_name`` exists and ipykernel is importable here."""
    if importlib.util.find_spec("ipykernel") is None:
        raise ValueError(f"ipykernel is not installed in {sys.prefix}; `pip install ipykernel` in this environment")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel as exc:
        raise ValueError(f"kernel_name={kernel_name!r} is not installed; add it with "
                         f"`{sys.executable} -m ipykernel install --sys-prefix` or pass another --kernel") from exc
    exe = spec.argv[0] if spec.argv else ""
    if not re.fullmatch(r"python[0-9.]*", exe) and Path(exe).resolve() != Path(sys.executable).resolve():
        log.warning("kernel %r runs %s, not this interpreter (%s): runs may use other packages",
                    kernel_name, exe, sys.executable)


@contextlib.contextmanager
def _kernel_env(work: Path) -> Iterator[None]:
    """The kernel's environment: this ``mmprompt`` first on PYTHONPATH (the notebook imports the same library
    as the runner, also when it is not pip-installed), and ``work`` as the directory where its tuning runs
    keep checkpoints (:data:`mmprompt.core.env.TUNING_WORK_DIR`), and text progress bars
    (:mod:`mmprompt.core.progress`), whose final frame a saved notebook keeps."""
    root = str(PACKAGE_DIR.parent)
    old = {name: os.environ.get(name) for name in ("PYTHONPATH", env.TUNING_WORK_DIR, env.TEXT_PROGRESS)}
    os.environ["PYTHONPATH"] = root + (os.pathsep + old["PYTHONPATH"] if old["PYTHONPATH"] else "")
    os.environ[env.TUNING_WORK_DIR] = str(work)
    os.environ[env.TEXT_PROGRESS] = "1"
    try:
        yield
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def final_frames(text: str) -> str:
    """Stream text as a terminal would leave it: each line's state after its last carriage return (a text
    progress bar's final frame), without blank lines (bars closed with ``leave=False``) or ANSI codes."""
    lines = (_ANSI.sub("", line).rsplit("\r", 1)[-1].rstrip() for line in text.split("\n"))
    return "".join(f"{line}\n" for line in lines if line)


def tidy_streams(nb: Any) -> None:
    """Merge each run of consecutive stream outputs of one name (the kernel sends a progress bar frame by
    frame) and keep :func:`final_frames` of it; drop streams left empty."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        merged: list[Any] = []
        for out in cell.get("outputs", []):
            last = merged[-1] if merged else None
            if (out.get("output_type") == "stream" and last is not None and last.get("output_type") == "stream"
                    and last.get("name") == out.get("name")):
                last["text"] = last.get("text", "") + out.get("text", "")
            else:
                merged.append(out)
        for out in merged:
            if out.get("output_type") == "stream":
                out["text"] = final_frames(out.get("text", ""))
        cell["outputs"] = [o for o in merged if o.get("output_type") != "stream" or o["text"]]


def _defaults_json(defaults: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for name, value in defaults.items():
        try:
            out[name] = to_json(value, name)
        except ValueError:
            out[name] = repr(value)
    return out


def _describe_error(exc: BaseException) -> str:
    """error.txt text: the failing cell (index, execution count, source) and the exception."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        tb = _ANSI.sub("", "\n".join(exc.traceback or []))
        return (f"failing cell: index {exc.cell_index} of the executed notebook, which has the injected "
                f"parameters cell (execution count {exc.exec_count})\n"
                f"exception: {exc.ename}: {exc.evalue}\n\n--- cell source ---\n{exc.source}\n\n"
                f"--- traceback ---\n{tb}\n")
    return f"exception: {type(exc).__name__}: {exc}\n"


def _relocate_run_dir(nb_path: Path, tmp_dir: Path, final_dir: Path) -> None:
    """Point the injected ``run_dir`` (and papermill's record of it) of the executed notebook at
    the directory the run is moved to, and keep only the final frame of its progress bars."""
    import nbformat

    if not nb_path.is_file():
        return
    old, new = str(tmp_dir), str(final_dir)  # the temporary name is unique: plain replacement is safe
    nb = nbformat.read(str(nb_path), as_version=4)
    for cell in nb.cells:
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            cell.source = cell.source.replace(old, new)
    record = nb.metadata.get("papermill", {})
    if isinstance(record.get("parameters"), dict) and record["parameters"].get(RUN_DIR_PARAM) == old:
        record["parameters"][RUN_DIR_PARAM] = new
    if isinstance(record.get("output_path"), str):
        record["output_path"] = record["output_path"].replace(old, new)
    tidy_streams(nb)
    atomic.write_text(nb_path, nbformat.writes(nb))


def _validate_run_request(notebook: Path, params: Mapping[str, Any], config: RunConfig) -> dict[str, Any]:
    """All checks that must pass before any execution starts; returns the notebook defaults."""
    if not notebook.is_file():
        raise FileNotFoundError(f"notebook {str(notebook)!r} does not exist")
    if notebook.suffix != ".ipynb":
        raise ValueError(f"notebook must be an .ipynb file; got {str(notebook)!r}")
    if RUN_DIR_PARAM in params:
        raise ValueError(f"parameter {RUN_DIR_PARAM!r} is set by the runner; do not pass it")
    defaults = notebook_parameters(notebook)
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"parameter(s) {unknown} are not declared in the parameters cell of "
                         f"{notebook.name}; declared: {sorted(defaults)}")
    if RUN_DIR_PARAM not in defaults:
        log.warning("%s does not declare %r in its parameters cell; it can still use the injected value",
                    notebook.name, RUN_DIR_PARAM)
    validate_params(**params)
    for name, value in params.items():
        to_json(value, f"parameter {name}")
    check_kernel(config.kernel_name)
    return defaults


def _execute(notebook: Path, params: dict[str, Any], tmp_dir: Path, work: Path, config: RunConfig) -> None:
    import papermill as pm

    if work.is_dir():
        log.info("%s: continuing the tuning runs an earlier attempt kept in %s", notebook.stem, work)
    work.mkdir(parents=True, exist_ok=True)
    with _kernel_env(work):
        pm.execute_notebook(
            str(notebook), str(tmp_dir / notebook.name),
            parameters={**params, RUN_DIR_PARAM: str(tmp_dir)},
            kernel_name=config.kernel_name, language="python", cwd=str(notebook.parent),
            log_output=config.log_output, progress_bar=config.progress_bar,
            start_timeout=config.start_timeout, execution_timeout=config.execution_timeout,
        )
    if config.require_metrics and not (tmp_dir / "metrics.json").is_file():
        raise RuntimeError(f"the notebook finished but wrote no metrics.json; end it with "
                           f"`mmprompt.workbook.records.save_metrics(metrics, {RUN_DIR_PARAM})`")


def execute_run(notebook: str | os.PathLike[str], params: Mapping[str, Any], config: RunConfig | None = None
                ) -> RunResult:
    """Validate, then execute ``notebook`` once with ``params`` (see :mod:`mmprompt.workbook.records`)."""
    config = config or RunConfig()
    notebook = Path(notebook).resolve()
    defaults = _validate_run_request(notebook, dict(params), config)
    return _execute_validated(notebook, dict(params), defaults, config)


def _execute_validated(notebook: Path, params: dict[str, Any], defaults: dict[str, Any],
                       config: RunConfig) -> RunResult:
    run_id = run_id_for(params)
    final_dir = records.run_dir(config.out.resolve(), notebook.stem, run_id)
    failed_dir = records.failed_dir(config.out.resolve(), notebook.stem, run_id)
    work = records.work_dir(config.out.resolve(), notebook.stem, run_id)
    if not config.force and records.is_done(final_dir, config.require_metrics):
        log.info("%s/%s: already done, skipped (use force to rerun)", notebook.stem, run_id)
        return RunResult(run_id, "skipped", final_dir, params)
    _remove_stale_temps(final_dir.parent)
    tmp_dir = atomic.temp_dir_for(final_dir)
    info = {"run_id": run_id, "notebook": str(notebook), "kernel_name": config.kernel_name,
            "started": _now(), "notebook_defaults": _defaults_json(defaults)}
    log.info("%s/%s: running", notebook.stem, run_id)
    t0 = time.perf_counter()
    try:
        error, interrupt = None, None
        try:
            with _sigterm_as_interrupt():
                _execute(notebook, params, tmp_dir, work, config)
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: keep a record, then stop
            error, interrupt = f"exception: interrupted ({exc or 'KeyboardInterrupt'})\n", exc
        except Exception as exc:  # noqa: BLE001 - any failure is recorded, never raised past here
            error = _describe_error(exc)
        duration = time.perf_counter() - t0
        info.update(finished=_now(), duration_s=round(duration, 3), metrics_required=config.require_metrics,
                    status="interrupted" if interrupt else "failed" if error else "ok")
        records.write_json(tmp_dir / "parameters.json", to_json(params, "parameters"))
        records.write_json(tmp_dir / "environment.json", {**capture_environment(str(notebook.parent)),
                                                          "kernel_name": config.kernel_name})
        _relocate_run_dir(tmp_dir / notebook.name, tmp_dir, failed_dir if error else final_dir)
        records.write_json(tmp_dir / "run.json", info)
        if error:
            atomic.write_text(tmp_dir / "error.txt", error)
            failed_dir.parent.mkdir(parents=True, exist_ok=True)
            atomic.replace_dir(tmp_dir, failed_dir)
            first = next((ln for ln in error.splitlines() if ln.startswith("exception:")), error.splitlines()[0])
            log.error("%s/%s: %s after %.1f s (%s); see %s", notebook.stem, run_id, info["status"].upper(),
                      duration, first, failed_dir)
            if interrupt is not None:
                raise interrupt
            return RunResult(run_id, "failed", failed_dir, params, error, duration)
        atomic.replace_dir(tmp_dir, final_dir)
        shutil.rmtree(failed_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(OSError):
            work.parent.rmdir()  # only when no other run keeps a work directory
        log.info("%s/%s: ok in %.1f s", notebook.stem, run_id, duration)
        return RunResult(run_id, "ok", final_dir, params, None, duration)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _remove_stale_temps(nb_root: Path) -> None:
    """Delete the temporary directories of runs whose runner died (kill -9, power loss)."""
    for stale in atomic.stale_temp_dirs(nb_root):
        log.warning("removing %s, left by a run that died", stale)
        shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs (in the main thread), SIGTERM raises KeyboardInterrupt like Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def expand_grid(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Cartesian product of parameter value lists, in the given order."""
    for name, values in grid.items():
        if isinstance(values, str | bytes) or not isinstance(values, Sequence) or len(values) == 0:
            raise ValueError(f"grid parameter {name!r} needs a non-empty list of values; got {values!r}")
    names = list(grid)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(grid[n] for n in names))]


def run_grid(notebook: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
             grid: Mapping[str, Sequence[Any]], config: RunConfig | None = None) -> list[RunResult]:
    """Execute every combination of ``grid`` (an empty grid: one run with the defaults) for each notebook, in
    order; every (notebook, combination) is validated before the first runs."""
    from tqdm.auto import tqdm

    config = config or RunConfig()
    notebooks = [notebook] if isinstance(notebook, str | os.PathLike) else list(notebook)
    paths = [Path(p).resolve() for p in notebooks]
    jobs = [(path, params, _validate_run_request(path, params, config)) for path in paths for params in expand_grid(grid)]
    label = paths[0].stem if len(paths) == 1 else "notebooks"
    return [_execute_validated(path, params, defaults, config)
            for path, params, defaults in tqdm(jobs, desc=label, unit="run", disable=len(jobs) < 2)]


def summarize(results: Sequence[RunResult]) -> str:
    """One line of counts plus one line per failed run."""
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "skipped", "failed")}
    lines = [f"{len(results)} run(s): {counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed"]
    for r in results:
        if r.status == "failed":
            exc = next((ln for ln in (r.error or "").splitlines() if ln.startswith("exception:")), "")
            lines.append(f"  FAILED {r.run_id}: {exc} -> {r.path / 'error.txt'}")
    return "\n".join(lines)
