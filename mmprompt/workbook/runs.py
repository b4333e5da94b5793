"""Parametrised notebook runs with papermill: single runs, sweeps, metrics and reports.

Layout of a run (``<out>`` defaults to ``papermill_runs``)::

    <out>/<notebook-stem>/<run-id>/          a successful run
        <notebook-stem>.ipynb                the executed notebook
        parameters.json                      the parameters passed (run_dir excluded)
        metrics.json                         written by the notebook: save_metrics(metrics, run_dir)
        environment.json                     python/torch/... versions, platform, CPU/GPU, git commit
        run.json                             status "ok", timings, kernel, notebook defaults
    <out>/<notebook-stem>/<run-id>.failed/   the latest failed attempt (+ error.txt); never a good run

How a notebook learns where to write: the runner injects the parameter ``run_dir`` (a string
path). Notebooks declare ``run_dir = None`` in their ``parameters`` cell and end with
``save_metrics(metrics, run_dir)``, which does nothing interactively (``run_dir`` None).

The run id is derived from the parameters passed (``profile`` first, the rest sorted), e.g.
``profile-cpu_length-64``. A run executes in a hidden temporary directory beside its final place
and is moved there only on success; a run whose directory holds ``metrics.json`` and status ok
is skipped unless ``force``.

CLI::

    python -m mmprompt.runs run NOTEBOOK [NOTEBOOK ...] [-p NAME VALUE ...] [--profile ci|cpu|gpu] [--out DIR] [--force]
    python -m mmprompt.runs sweep NOTEBOOK [NOTEBOOK ...] -p length 10 16 32 [-p seed 0 1] [--profile cpu]
    python -m mmprompt.runs report [--root papermill_runs] [--out papermill_runs/REPORT.md]
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import itertools
import json
import logging
import math
import numbers
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mmprompt.core import atomic

log = logging.getLogger("mmprompt.workbook.runs")  # same name under `python -m`

PROFILES: tuple[str, ...] = ("ci", "cpu", "gpu")
TASKS: tuple[str, ...] = ("refcoco", "snli_ve", "caption", "vqa")
RUN_DIR_PARAM = "run_dir"
DEFAULT_KERNEL = "python3"
DEFAULT_OUT = "papermill_runs"
FAILED_SUFFIX = ".failed"
_ENV_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "papermill", "nbclient", "ipykernel")
#: The package directory (``mmprompt/``) of the library that runs the notebooks.
PACKAGE_DIR = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------
# Small file helpers
# --------------------------------------------------------------------------------------------


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Atomically write ``data`` as key-sorted JSON (NaN refused: run records must stay valid JSON)."""
    return atomic.write_json(path, data, sort_keys=True, allow_nan=False)


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------
# Parameter validation for notebooks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamRule:
    """A check for one notebook parameter and the human description of what it allows."""

    check: Callable[[Any], bool]
    allowed: str


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def one_of(*values: Any) -> ParamRule:
    """The parameter must equal one of ``values``."""
    return ParamRule(lambda v: any(v == x and type(v) is type(x) for x in values),
                     "one of " + ", ".join(repr(x) for x in values))


def int_range(lo: int | None = None, hi: int | None = None) -> ParamRule:
    """An integer (not bool) with ``lo <= v <= hi`` (either bound optional)."""
    bounds = " and ".join(b for b in (f">= {lo}" if lo is not None else "", f"<= {hi}" if hi is not None else "") if b)
    return ParamRule(lambda v: _is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi),
                     "an integer" + (f" {bounds}" if bounds else ""))


def positive_number() -> ParamRule:
    """A finite real number > 0."""
    return ParamRule(lambda v: _is_real(v) and v > 0, "a finite number > 0")


def fraction() -> ParamRule:
    """A real number in [0, 1)."""
    return ParamRule(lambda v: _is_real(v) and 0 <= v < 1, "a number in [0, 1)")


def optional_path() -> ParamRule:
    """None, or a non-empty string/path."""
    return ParamRule(lambda v: v is None or (isinstance(v, str | os.PathLike) and str(v) != ""),
                     "None or a non-empty path string")


COMMON_RULES: dict[str, ParamRule] = {
    "profile": one_of(*PROFILES),
    "seed": int_range(0),
    "task": one_of(*TASKS),
    RUN_DIR_PARAM: optional_path(),
    "model_dir": optional_path(),
    "data_dir": optional_path(),
    "batch_size": int_range(1),
    "max_steps": int_range(1),
    "epochs": int_range(1),
    "lr": positive_number(),
    "prompt_length": int_range(1),
    "dropout": fraction(),
}


def validate_params(rules: Mapping[str, ParamRule] | None = None, /, **params: Any) -> dict[str, Any]:
    """Check notebook parameters; raise ONE ``ValueError`` listing every bad one.

    Common parameters (``profile``, ``seed``, ``task``, ``run_dir``, ``lr``, ... see
    ``COMMON_RULES``) are always checked; ``rules`` adds or overrides notebook-specific ones::

        validate_params({"depth": int_range(1, 12)}, profile=profile, seed=seed, depth=depth)

    Parameters without a rule pass unchecked. Returns the parameters as a dict.
    """
    all_rules = {**COMMON_RULES, **(rules or {})}
    bad = []
    for name, value in params.items():
        rule = all_rules.get(name)
        if rule is not None and not rule.check(value):
            bad.append(f"  {name}={value!r} (allowed: {rule.allowed})")
    if bad:
        raise ValueError("invalid notebook parameter(s):\n" + "\n".join(bad))
    return dict(params)


# --------------------------------------------------------------------------------------------
# Metrics written by notebooks
# --------------------------------------------------------------------------------------------


def _jsonable(value: Any, where: str) -> Any:
    """Convert metric values (numpy/torch scalars included) to JSON; NaN/inf become None."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if value is None or isinstance(value, bool | str):
        return value
    if _is_int(value):
        return int(value)
    if isinstance(value, numbers.Real):
        if not math.isfinite(float(value)):
            log.warning("%s is %s; stored as null", where, value)
            return None
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise ValueError(f"metric {where} has unsupported type {type(value).__name__}; "
                     "allowed: numbers, bool, str, None, lists and dicts of those")


def save_metrics(metrics: Mapping[str, Any], run_dir: str | os.PathLike[str] | None) -> Path | None:
    """Write ``metrics`` to ``<run_dir>/metrics.json`` (atomically); do nothing when ``run_dir`` is None.

    Call it at the end of a notebook with the injected ``run_dir`` parameter.
    """
    if not isinstance(metrics, Mapping) or not metrics:
        raise ValueError(f"metrics must be a non-empty mapping of name -> value; got {metrics!r}")
    data = {str(k): _jsonable(v, str(k)) for k, v in metrics.items()}
    if run_dir is None or str(run_dir) == "":
        log.info("run_dir is not set (interactive session): metrics not saved")
        return None
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run_dir={str(run_dir)!r} is not an existing directory")
    return write_json(run_dir / "metrics.json", data)


# --------------------------------------------------------------------------------------------
# Parameters: parsing, notebook introspection, run ids
# --------------------------------------------------------------------------------------------


def parse_value(text: str) -> Any:
    """Parse a CLI value like papermill's ``-p``: True/False/None, int, float, else the string."""
    if text in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[text]
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str | bool | int) or value is None:
        return str(value)
    return json.dumps(value, sort_keys=True)


def run_id_for(params: Mapping[str, Any]) -> str:
    """Deterministic run id from the passed parameters: ``profile-cpu_length-64``.

    ``profile`` comes first, the rest sorted by name. Characters outside ``[A-Za-z0-9.+-]`` in
    values are replaced by ``-``; when that (or the 100-character cap) changes anything, an
    8-character hash of the exact parameters is appended so different runs never collide.
    """
    if not params:
        return "default"
    keys = sorted(params, key=lambda k: (k != "profile", k))
    parts, lossy = [], False
    for key in keys:
        raw = _format_value(params[key])
        safe = re.sub(r"[^A-Za-z0-9.+-]+", "-", raw).strip("-.") or "x"
        lossy |= safe != raw
        parts.append(f"{key}-{safe}")
    rid = "_".join(parts)
    if lossy or len(rid) > 100:
        digest = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8]
        rid = rid[:100].rstrip("-_.") + "_" + digest
    return rid


def _parameters_cell(nb: Any) -> Any | None:
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            return cell
    return None


def notebook_parameters(notebook: str | os.PathLike[str]) -> dict[str, Any]:
    """Names and defaults declared in the notebook's ``parameters`` cell (literal values where
    possible, else the source text of the expression)."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    cell = _parameters_cell(nb)
    if cell is None:
        raise ValueError(f"notebook {str(notebook)!r} has no code cell tagged 'parameters'")
    source = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ValueError(f"parameters cell of {str(notebook)!r} is not valid Python: {exc}") from exc
    out: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        value = node.value
        for target in targets:
            if isinstance(target, ast.Name):
                try:
                    out[target.id] = ast.literal_eval(value) if value is not None else None
                except ValueError:
                    out[target.id] = ast.get_source_segment(source, value)
    return out


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


@functools.lru_cache(maxsize=4)
def capture_environment(repo_dir: str | None = None) -> dict[str, Any]:
    """Versions, platform, CPU/GPU and git commit of the interpreter that runs the notebooks."""
    packages: dict[str, str | None] = {}
    for name in ("mmprompt", *_ENV_PACKAGES):
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    gpu, cuda = None, None
    with contextlib.suppress(Exception):
        import torch

        cuda = torch.version.cuda
        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    cwd = Path(repo_dir or PACKAGE_DIR)
    commit = _git(["rev-parse", "HEAD"], cwd)
    dirty = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    return {
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpu": gpu,
        "cuda": cuda,
        "packages": packages,
        "git_commit": commit,
        "git_dirty": None if dirty is None else bool(dirty),
    }


# --------------------------------------------------------------------------------------------
# Execution
# --------------------------------------------------------------------------------------------


@dataclass
class RunConfig:
    """Options shared by all runs of one invocation."""

    out: Path = Path(DEFAULT_OUT)
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


def is_done(run_dir: Path, require_metrics: bool = True) -> bool:
    """A finished good run: ``run.json`` says ok and (when required) ``metrics.json`` exists."""
    try:
        info = read_json(run_dir / "run.json")
    except (OSError, ValueError):
        return False
    return info.get("status") == "ok" and (not require_metrics or (run_dir / "metrics.json").is_file())


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
def _kernel_env() -> Iterator[None]:
    """Put the directory holding this ``mmprompt`` first on the kernel's PYTHONPATH, so the
    notebook imports the same library as the runner (also when it is not pip-installed)."""
    root = str(PACKAGE_DIR.parent)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = root + (os.pathsep + old if old else "")
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _defaults_json(defaults: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for name, value in defaults.items():
        try:
            out[name] = _jsonable(value, name)
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
    the directory the run is moved to."""
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
        _jsonable(value, f"parameter {name}")
    check_kernel(config.kernel_name)
    return defaults


def _execute(notebook: Path, params: dict[str, Any], tmp_dir: Path, config: RunConfig) -> None:
    import papermill as pm

    with _kernel_env():
        pm.execute_notebook(
            str(notebook), str(tmp_dir / notebook.name),
            parameters={**params, RUN_DIR_PARAM: str(tmp_dir)},
            kernel_name=config.kernel_name, language="python", cwd=str(notebook.parent),
            log_output=config.log_output, progress_bar=config.progress_bar,
            start_timeout=config.start_timeout, execution_timeout=config.execution_timeout,
        )
    if config.require_metrics and not (tmp_dir / "metrics.json").is_file():
        raise RuntimeError(f"the notebook finished but wrote no metrics.json; end it with "
                           f"`mmprompt.workbook.runs.save_metrics(metrics, {RUN_DIR_PARAM})`")


def _replace_dir(src: Path, dst: Path) -> None:
    """Move directory ``src`` to ``dst``, replacing an existing ``dst`` only after ``src`` is ready."""
    if dst.exists():
        old = dst.with_name(f".old-{dst.name}-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def execute_run(notebook: str | os.PathLike[str], params: Mapping[str, Any], config: RunConfig | None = None,
                *, _validated: bool = False) -> RunResult:
    """Execute ``notebook`` once with ``params`` into ``<out>/<stem>/<run-id>/`` (see module doc)."""
    config = config or RunConfig()
    notebook = Path(notebook).resolve()
    params = dict(params)
    defaults = notebook_parameters(notebook) if _validated else _validate_run_request(notebook, params, config)
    run_id = run_id_for(params)
    nb_root = config.out.resolve() / notebook.stem
    final_dir, failed_dir = nb_root / run_id, nb_root / f"{run_id}{FAILED_SUFFIX}"
    if not config.force and is_done(final_dir, config.require_metrics):
        log.info("%s/%s: already done, skipped (use force to rerun)", notebook.stem, run_id)
        return RunResult(run_id, "skipped", final_dir, params)
    nb_root.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(dir=nb_root, prefix=f".tmp-{run_id}-"))
    tmp_dir.chmod(atomic.default_mode(directory=True))  # mkdtemp's 0700 would stick to the finished run
    info = {"run_id": run_id, "notebook": str(notebook), "kernel_name": config.kernel_name,
            "started": _now(), "notebook_defaults": _defaults_json(defaults)}
    log.info("%s/%s: running", notebook.stem, run_id)
    t0 = time.perf_counter()
    try:
        try:
            _execute(notebook, params, tmp_dir, config)
            error = None
        except Exception as exc:  # noqa: BLE001 - any failure is recorded, never raised past here
            error = _describe_error(exc)
        duration = time.perf_counter() - t0
        info.update(finished=_now(), duration_s=round(duration, 3), status="failed" if error else "ok",
                    metrics_required=config.require_metrics)
        write_json(tmp_dir / "parameters.json", _jsonable(params, "parameters"))
        write_json(tmp_dir / "environment.json", {**capture_environment(str(notebook.parent)),
                                                  "kernel_name": config.kernel_name})
        _relocate_run_dir(tmp_dir / notebook.name, tmp_dir, failed_dir if error else final_dir)
        if error:
            atomic.write_text(tmp_dir / "error.txt", error)
            write_json(tmp_dir / "run.json", info)
            _replace_dir(tmp_dir, failed_dir)
            first = next((ln for ln in error.splitlines() if ln.startswith("exception:")), error.splitlines()[0])
            log.error("%s/%s: FAILED after %.1f s (%s); see %s", notebook.stem, run_id, duration, first, failed_dir)
            return RunResult(run_id, "failed", failed_dir, params, error, duration)
        write_json(tmp_dir / "run.json", info)
        _replace_dir(tmp_dir, final_dir)
        shutil.rmtree(failed_dir, ignore_errors=True)
        log.info("%s/%s: ok in %.1f s", notebook.stem, run_id, duration)
        return RunResult(run_id, "ok", final_dir, params, None, duration)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


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
    jobs = [(Path(nb).resolve(), params) for nb in notebooks for params in expand_grid(grid)]
    for nb, params in jobs:
        _validate_run_request(nb, params, config)
    label = jobs[0][0].stem if len(notebooks) == 1 else "notebooks"
    return [execute_run(nb, params, config, _validated=True)
            for nb, params in tqdm(jobs, desc=label, unit="run", disable=len(jobs) < 2)]


def summarize(results: Sequence[RunResult]) -> str:
    """One line of counts plus one line per failed run."""
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "skipped", "failed")}
    lines = [f"{len(results)} run(s): {counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed"]
    for r in results:
        if r.status == "failed":
            exc = next((ln for ln in (r.error or "").splitlines() if ln.startswith("exception:")), "")
            lines.append(f"  FAILED {r.run_id}: {exc} -> {r.path / 'error.txt'}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mmprompt.runs", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("run", "execute each notebook once"),
                        ("sweep", "execute the cartesian grid of -p lists for each notebook")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("notebook", type=Path, nargs="+", help="notebook(s) to execute, in order")
        p.add_argument("-p", "--parameter", nargs="+", action="append", default=[], metavar=("NAME", "VALUE"),
                       help="parameter NAME and its value"
                       + (" (several values: one run each)" if name == "sweep" else ""))
        p.add_argument("--profile", choices=PROFILES, help="shorthand for -p profile VALUE")
        p.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help=f"root of run directories ({DEFAULT_OUT})")
        p.add_argument("--force", action="store_true", help="rerun runs that are already done")
        p.add_argument("--kernel", default=DEFAULT_KERNEL, help=f"Jupyter kernel name ({DEFAULT_KERNEL})")
        p.add_argument("--allow-no-metrics", action="store_true", help="a run that writes no metrics.json is ok")
        p.add_argument("--log-output", action="store_true", help="stream the notebook's output to the log")
        p.add_argument("--execution-timeout", type=int, default=None, help="per-cell timeout in seconds")
        p.add_argument("--start-timeout", type=int, default=60, help="kernel start timeout in seconds")
    rep = sub.add_parser("report", help="aggregate metrics.json of all runs into Markdown + PNG figures")
    rep.add_argument("--root", type=Path, default=Path(DEFAULT_OUT))
    rep.add_argument("--out", type=Path, default=None, help="Markdown file (default <root>/REPORT.md)")
    return parser


def _grid_from_args(args: argparse.Namespace) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for entry in args.parameter:
        name, values = entry[0], entry[1:]
        if not values:
            raise ValueError(f"-p {name} needs a value")
        if args.command == "run" and len(values) != 1:
            raise ValueError(f"-p {name} got {len(values)} values {values}; `run` takes one (use `sweep` for several)")
        if name in grid:
            raise ValueError(f"parameter {name!r} is given twice")
        grid[name] = [parse_value(v) for v in values]
    if args.profile is not None:
        if "profile" in grid:
            raise ValueError("give the profile either with --profile or with -p profile, not both")
        grid = {"profile": [args.profile], **grid}
    return grid


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit code (1 when any run failed, 2 on bad input)."""
    args = _build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "report":
            from mmprompt.workbook.report import write_report

            path = write_report(args.root, args.out)
            log.info("report written to %s", path)
            return 0
        grid = _grid_from_args(args)
        config = RunConfig(out=args.out, force=args.force, kernel_name=args.kernel,
                           require_metrics=not args.allow_no_metrics, log_output=args.log_output,
                           progress_bar=len(args.notebook) == 1 and all(len(v) == 1 for v in grid.values())
                           and sys.stderr.isatty(),
                           execution_timeout=args.execution_timeout, start_timeout=args.start_timeout)
        results = run_grid(args.notebook, grid, config)
    except (ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    summary = summarize(results)
    failed = any(r.status == "failed" for r in results)
    (log.error if failed else log.info)("%s", summary)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
