"""mmprompt.workbook.runs: parameters, run ids, metrics files, papermill execution, sweeps and reports."""

import importlib.metadata
import json
import math
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from mmprompt.core import atomic

from mmprompt.workbook import params, runs, runs_cli
from mmprompt.workbook.params import int_range, run_id_for, validate_params
from mmprompt.workbook.records import save_metrics
from mmprompt.workbook.runs import RunConfig
from mmprompt.workbook.report import collect_runs, format_cell, markdown_table, write_report


def make_notebook(path: Path, body: str, params: str = "x = 1\nprofile = 'ci'\nrun_dir = None") -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    pcell = nbformat.v4.new_code_cell(params)
    pcell.metadata.tags = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# tiny"), pcell, nbformat.v4.new_code_cell(body)]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


GOOD_BODY = """import sys, pathlib
from mmprompt.core.progress import progress_bar
from mmprompt.workbook.records import save_metrics
for _ in progress_bar(range(40), desc="labelled bar", mininterval=0):
    pass
if run_dir:
    pathlib.Path(run_dir, "exe.txt").write_text(sys.executable)
save_metrics({"acc": x / 4, "n": 4}, run_dir)
"""

# ------------------------------------------------------------------ parameters and run ids


def test_parse_value_like_papermill():
    assert [params.parse_value(v) for v in ("True", "False", "None", "3", "0.5", "1e-3", "cpu")] == [
        True, False, None, 3, 0.5, 0.001, "cpu"]


def test_parse_value_reads_json_lists_and_rejects_broken_ones():
    assert params.parse_value("[0,1,2]") == [0, 1, 2]
    assert params.parse_value('["a", 0.5]') == ["a", 0.5]
    assert params.parse_value("a[0]") == "a[0]"  # only text that starts with '[' is a list
    with pytest.raises(ValueError, match=r"'\[0,1' starts with '\[' but is not a JSON list"):
        params.parse_value("[0,1")


def test_seeds_parameter_parses_to_a_list_and_is_validated(tmp_path):
    args = runs_cli._build_parser().parse_args(["run", "nb.ipynb", "-p", "seeds", "[0,1,2]", "--profile", "cpu"])
    assert runs_cli._grid_from_args(args) == {"profile": ["cpu"], "seeds": [[0, 1, 2]]}
    assert params.validate_params(seeds=[0, 1, 2]) == {"seeds": [0, 1, 2]}
    for bad in ([], [0, 0], [0, -1], [0.5], "0,1,2", 3, [True]):
        with pytest.raises(ValueError, match=r"seeds=.*allowed: a non-empty list of distinct integers >= 0"):
            params.validate_params(seeds=bad)
    nb = make_notebook(tmp_path / "nb.ipynb", GOOD_BODY, params="profile = 'ci'\nseeds = [0]\nx = 1\nrun_dir = None")
    with pytest.raises(ValueError, match=r"seeds=\[1, 1\]"):
        runs.execute_run(nb, {"seeds": [1, 1]}, RunConfig(out=tmp_path / "out"))
    assert runs_cli.main(["run", str(nb), "-p", "seeds", "[0,1", "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_run_id_is_deterministic_with_profile_first():
    assert run_id_for({"length": 64, "profile": "cpu"}) == "profile-cpu_length-64"
    assert run_id_for({"profile": "cpu", "length": 64}) == "profile-cpu_length-64"
    assert run_id_for({"seed": 1, "lr": 0.001}) == "lr-0.001_seed-1"
    assert run_id_for({}) == "default"


def test_run_id_hashes_lossy_values_so_they_never_collide():
    a = run_id_for({"model_dir": "/ckpt/ofa-base"})
    b = run_id_for({"model_dir": "/ckpt_ofa-base"})
    assert a.startswith("model_dir-ckpt-ofa-base_") and b.startswith("model_dir-ckpt-ofa-base_")
    assert a != b and len(a.rsplit("_", 1)[1]) == 8
    assert len(run_id_for({"x": "y" * 500})) <= 110


def test_expand_grid_is_the_cartesian_product():
    grid = runs.expand_grid({"length": [10, 16, 32], "seed": [0, 1]})
    assert len(grid) == 6
    assert grid[0] == {"length": 10, "seed": 0} and grid[-1] == {"length": 32, "seed": 1}
    with pytest.raises(ValueError, match="non-empty list"):
        runs.expand_grid({"length": []})


def test_validate_params_lists_every_bad_parameter_at_once():
    with pytest.raises(ValueError) as err:
        validate_params(profile="laptop", seed=-1, task="coco", lr=0.1, depth=3)
    msg = str(err.value)
    assert "profile='laptop'" in msg and "'ci', 'cpu', 'gpu'" in msg
    assert "seed=-1" in msg and ">= 0" in msg
    assert "task='coco'" in msg and "'refcoco'" in msg
    assert "lr" not in msg and "depth" not in msg  # valid / unchecked
    assert validate_params(profile="gpu", seed=0, task="vqa") == {"profile": "gpu", "seed": 0, "task": "vqa"}


def test_validate_params_rejects_bool_as_int_and_takes_notebook_rules():
    with pytest.raises(ValueError, match="seed=True"):
        validate_params(seed=True)
    rules = {"depth": int_range(1, 12)}
    assert validate_params(rules, depth=12)["depth"] == 12
    with pytest.raises(ValueError, match=r"depth=13 \(allowed: an integer >= 1 and <= 12\)"):
        validate_params(rules, depth=13, profile="ci")


# ------------------------------------------------------------------ metrics files


def test_save_metrics_converts_scalars_and_is_silent_without_run_dir(tmp_path):
    metrics = {"acc": np.float32(0.5), "steps": np.int64(3), "loss": torch.tensor(0.25), "bad": math.nan,
               "per_task": {"vqa": 0.75}}
    assert save_metrics(metrics, None) is None
    path = save_metrics(metrics, tmp_path)
    assert json.loads(path.read_text()) == {"acc": 0.5, "steps": 3, "loss": 0.25, "bad": None,
                                            "per_task": {"vqa": 0.75}}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temp files left
    with pytest.raises(FileNotFoundError, match="run_dir"):
        save_metrics({"a": 1}, tmp_path / "missing")
    with pytest.raises(ValueError, match="unsupported type"):
        save_metrics({"a": object()}, tmp_path)


def test_notebook_parameters_reads_the_parameters_cell(tmp_path):
    nb = make_notebook(tmp_path / "nb.ipynb", "pass", params="x = 1\nname: str = 'a'\ny = x * 2\nrun_dir = None")
    assert params.notebook_parameters(nb) == {"x": 1, "name": "a", "y": "x * 2", "run_dir": None}


def test_bad_requests_fail_before_any_work(tmp_path):
    nb = make_notebook(tmp_path / "nb.ipynb", GOOD_BODY)
    cfg = RunConfig(out=tmp_path / "out")
    with pytest.raises(ValueError, match=r"\['lenght'\] are not declared.*declared: \['profile', 'run_dir', 'x'\]"):
        runs.run_grid(nb, {"x": [1], "lenght": [3]}, cfg)
    with pytest.raises(ValueError, match="set by the runner"):
        runs.execute_run(nb, {"run_dir": "/tmp"}, cfg)
    with pytest.raises(ValueError, match="profile='laptop'"):
        runs.execute_run(nb, {"profile": "laptop"}, cfg)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        runs.execute_run(tmp_path / "missing.ipynb", {}, cfg)
    with pytest.raises(ValueError, match="kernel_name='no-such-kernel'"):
        runs.execute_run(nb, {}, RunConfig(out=tmp_path / "out", kernel_name="no-such-kernel"))
    assert not (tmp_path / "out").exists()


def test_cli_argument_errors_exit_2(tmp_path):
    nb = make_notebook(tmp_path / "nb.ipynb", GOOD_BODY)
    out = ["--out", str(tmp_path / "out")]
    assert runs_cli.main(["run", str(nb), "-p", "x", "1", "2", *out]) == 2
    assert runs_cli.main(["sweep", str(nb), "-p", "x", "1", "-p", "x", "2", *out]) == 2
    assert runs_cli.main(["run", str(nb), "-p", "profile", "cpu", "--profile", "cpu", *out]) == 2
    assert not (tmp_path / "out").exists()


def test_several_notebooks_are_all_validated_before_any_runs(tmp_path):
    good = make_notebook(tmp_path / "a.ipynb", GOOD_BODY)
    other = make_notebook(tmp_path / "b.ipynb", GOOD_BODY, params="profile = 'ci'\nrun_dir = None")  # no x
    out = tmp_path / "out"
    assert runs_cli.main(["run", str(good), str(other), "-p", "x", "2", "--out", str(out)]) == 2
    assert runs_cli.main(["run", str(good), str(tmp_path / "missing.ipynb"), "--out", str(out)]) == 2
    assert not out.exists()  # the good notebook, listed first, did not run either


# ------------------------------------------------------------------ real papermill executions


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One sweep of a throwaway notebook over x in {1, 2} (two kernel starts)."""
    root = tmp_path_factory.mktemp("runs")
    nb = make_notebook(root / "nbs" / "tiny.ipynb", GOOD_BODY)
    out = root / "papermill_runs"
    code = runs_cli.main(["sweep", str(nb), "-p", "x", "1", "2", "--profile", "cpu", "--out", str(out)])
    return {"code": code, "nb": nb, "out": out, "root": root}


def test_sweep_writes_one_directory_per_grid_point(swept):
    assert swept["code"] == 0
    nb_root = swept["out"] / "tiny"
    assert sorted(p.name for p in nb_root.iterdir()) == ["profile-cpu_x-1", "profile-cpu_x-2"]
    run = nb_root / "profile-cpu_x-2"
    assert json.loads((run / "metrics.json").read_text()) == {"acc": 0.5, "n": 4}
    assert json.loads((run / "parameters.json").read_text()) == {"profile": "cpu", "x": 2}
    env = json.loads((run / "environment.json").read_text())
    assert env["packages"]["torch"] == importlib.metadata.version("torch") and env["torch_build"] == torch.__version__
    assert env["python"] == sys.version.split()[0]
    assert json.loads((run / "run.json").read_text())["status"] == "ok"
    # the kernel ran this interpreter (the venv), not some other python
    assert Path((run / "exe.txt").read_text()).resolve() == Path(sys.executable).resolve()
    # the executed notebook's injected run_dir points at its final directory, not the temp one
    executed = nbformat.read(str(run / "tiny.ipynb"), as_version=4)
    injected = next(c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert str(run) in injected.source and ".tmp-" not in injected.source
    assert executed.metadata.papermill.parameters.run_dir == str(run)  # outputs stay as they were


def test_saved_notebook_keeps_the_final_frame_of_each_progress_bar(swept):
    """The runner's kernel draws text bars (core.env.TEXT_PROGRESS); the saved notebook keeps each one finished."""
    executed = nbformat.read(str(swept["out"] / "tiny" / "profile-cpu_x-2" / "tiny.ipynb"), as_version=4)
    streams = [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "stream"]
    bars = [line for o in streams for line in o["text"].splitlines() if line.startswith("labelled bar")]
    assert len(bars) == 1 and "40/40" in bars[0] and "100%" in bars[0], bars
    assert not any("\r" in o["text"] for o in streams)


def test_final_frames_keep_what_a_terminal_shows():
    text = "train: 0%| | 0/6\rtrain: 50%|# | 3/6\rtrain: 100%|##| 6/6\n\x1b[A\r   \r\nnote\n"
    assert runs.final_frames(text) == "train: 100%|##| 6/6\nnote\n"
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text="\r  \r\n"),
                    nbformat.v4.new_output("stream", name="stdout", text="a\rb\n"),
                    nbformat.v4.new_output("stream", name="stderr", text="bar 1/2"),  # sent frame by frame
                    nbformat.v4.new_output("stream", name="stderr", text="\rbar 2/2"),
                    nbformat.v4.new_output("stream", name="stderr", text="\n")]
    nb.cells = [cell]
    runs.tidy_streams(nb)
    # the blank (closed) bar's stream is dropped; the frames sent one by one leave their last
    assert [o["text"] for o in nb.cells[0].outputs] == ["b\n", "bar 2/2\n"]


def test_progress_bar_is_text_when_the_runner_asks(monkeypatch, tmp_path):
    import os

    from tqdm.std import tqdm as text_tqdm

    from mmprompt.core import env
    from mmprompt.core.progress import progress_bar

    monkeypatch.setenv(env.TEXT_PROGRESS, "1")
    bar = progress_bar(total=3, desc="x", disable=True, dynamic_ncols=True)
    assert type(bar) is text_tqdm
    bar.close()
    monkeypatch.delenv(env.TEXT_PROGRESS)
    with runs._kernel_env(tmp_path):
        assert os.environ[env.TEXT_PROGRESS] == "1"  # what the notebook's kernel inherits
    assert env.TEXT_PROGRESS not in os.environ  # restored after the run


def test_rerun_skips_done_runs(swept):
    run = swept["out"] / "tiny" / "profile-cpu_x-1"
    before = (run / "tiny.ipynb").stat().st_mtime_ns
    results = runs.run_grid(swept["nb"], {"profile": ["cpu"], "x": [1]}, RunConfig(out=swept["out"]))
    assert [r.status for r in results] == ["skipped"]
    assert (run / "tiny.ipynb").stat().st_mtime_ns == before


def test_failing_run_never_overwrites_a_good_run(swept):
    good = swept["out"] / "tiny" / "profile-cpu_x-1"
    snapshot = {p.name: p.read_bytes() for p in good.iterdir()}
    # same stem, same parameters -> same run id; this version raises in its last cell
    bad_nb = make_notebook(swept["root"] / "broken" / "tiny.ipynb", "y = 2\nraise RuntimeError(f'boom {x}')")
    code = runs_cli.main(["run", str(bad_nb), "-p", "x", "1", "--profile", "cpu", "--force", "--out", str(swept["out"])])
    assert code == 1
    assert {p.name: p.read_bytes() for p in good.iterdir()} == snapshot
    failed = swept["out"] / "tiny" / "_failed" / "profile-cpu_x-1"
    error = (failed / "error.txt").read_text()
    assert "RuntimeError: boom 1" in error and "raise RuntimeError(f'boom {x}')" in error
    assert "failing cell: index 3" in error  # title, parameters, injected parameters, then the failing cell
    assert json.loads((failed / "run.json").read_text())["status"] == "failed"
    executed = nbformat.read(str(failed / "tiny.ipynb"), as_version=4)
    assert executed.metadata.papermill.parameters.run_dir == str(failed)
    assert ".tmp-" not in executed.metadata.papermill.output_path
    assert not [p for p in (swept["out"] / "tiny").iterdir() if p.name.startswith(".")]  # no temp dirs left

    # a notebook that finishes without writing metrics.json is a failure too
    quiet = make_notebook(swept["root"] / "quiet" / "tiny.ipynb", "z = 1")
    res = runs.execute_run(quiet, {"profile": "cpu", "x": 2}, RunConfig(out=swept["out"], force=True))
    assert res.status == "failed" and "wrote no metrics.json" in res.error
    assert json.loads((swept["out"] / "tiny" / "profile-cpu_x-2" / "metrics.json").read_text())["acc"] == 0.5


def test_report_tables_the_metrics_of_real_runs(swept):
    out = swept["root"] / "REPORT.md"
    assert runs_cli.main(["report", "--root", str(swept["out"]), "--out", str(out)]) == 0
    text = out.read_text()
    assert "## tiny" in text
    assert "| `profile-cpu_x-1` | cpu | 1 | 0.2500 | 4 |" in text
    assert "| `profile-cpu_x-2` | cpu | 2 | 0.5000 | 4 |" in text
    png = swept["root"] / "REPORT_figures" / "tiny__x.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](REPORT_figures/tiny__x.png)" in text


# ------------------------------------------------------------------ report without kernels


def _fake_run(root: Path, nb: str, params: dict, metrics: dict | None, failed: bool = False) -> Path:
    d = root / nb / ("_failed" if failed else "") / run_id_for(params)
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"run_id": run_id_for(params), "status": "failed" if failed else "ok"}))
    (d / "parameters.json").write_text(json.dumps(params))
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps(metrics))
    if failed:
        (d / "error.txt").write_text("failing cell: index 2\nexception: ValueError: bad depth\n")
    return d


def test_report_sorts_rows_numerically_and_plots_each_swept_parameter(tmp_path):
    root = tmp_path / "papermill_runs"
    for length in (100, 16, 64):
        for seed in (0, 1):
            _fake_run(root, "03_prompt_length", {"profile": "cpu", "length": length, "seed": seed},
                      {"acc@0.5": length / 200 + seed / 100, "n": 50})
    _fake_run(root, "04_prompt_depth", {"depth": 2}, {"acc@0.5": 0.5})
    _fake_run(root, "04_prompt_depth", {"depth": 99}, None, failed=True)
    (root / "03_prompt_length" / ".tmp-junk").mkdir()  # in-progress temp dirs are ignored
    path = write_report(root)
    text = path.read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| `profile-cpu_length")]
    assert [r.split(" | ")[2] for r in rows] == ["16", "16", "64", "64", "100", "100"]
    assert "| `profile-cpu_length-64_seed-1` | cpu | 64 | 1 | 0.3300 | 50 |" in text
    assert "- `depth-99`: exception: ValueError: bad depth" in text
    figs = sorted(p.name for p in (root / "REPORT_figures").iterdir())
    assert figs == ["03_prompt_length__length.png", "03_prompt_length__seed.png"]
    assert len(collect_runs(root)["03_prompt_length"]) == 6
    # rewriting is stable and leaves no temporary files behind
    assert write_report(root).read_text() == text
    assert not [p for p in root.rglob(".*") if p.is_file()]


def test_format_cell_and_table_escape():
    assert format_cell(0.123456) == "0.1235" and format_cell(1.382) == "1.3820"
    assert format_cell(123456.0) == "1.235e+05" and format_cell(None) == "–" and format_cell(3) == "3"
    rec = runs_report_record("a|b")
    assert "a\\|b" in markdown_table([rec])


def runs_report_record(value):
    from mmprompt.workbook.report import RunRecord

    return RunRecord("nb", "rid", Path("."), "ok", {"p": value}, {"m": 1.0})


def test_run_executes_several_notebooks_in_order(tmp_path):
    first = make_notebook(tmp_path / "first.ipynb", GOOD_BODY)
    second = make_notebook(tmp_path / "second.ipynb", GOOD_BODY)
    out = tmp_path / "out"
    assert runs_cli.main(["run", str(first), str(second), "--profile", "cpu", "--out", str(out)]) == 0
    for stem in ("first", "second"):
        assert json.loads((out / stem / "profile-cpu" / "metrics.json").read_text())["acc"] == 0.25
        assert (out / stem / "profile-cpu").stat().st_mode & 0o777 == atomic.default_mode(directory=True)
    assert runs_cli.main(["run", str(first), str(second), "--profile", "cpu", "--out", str(out)]) == 0  # both skipped


def test_wide_tables_are_transposed_and_repeated_parameters_dropped():
    from mmprompt.workbook.report import RunRecord

    metrics = {"profile": "cpu", **{f"m{i}": float(i) for i in range(12)}}
    runs_ = [RunRecord("nb", rid, Path("."), "ok", {"profile": "cpu", "x": x}, metrics) for rid, x in (("b", 2), ("a", 1))]
    lines = markdown_table(runs_).splitlines()
    assert lines[0] == "| run | `a` | `b` |"  # one column per run, ordered by parameters
    assert lines[2:4] == ["| profile | cpu | cpu |", "| x | 1 | 2 |"]
    assert len(lines) == 2 + 2 + 12  # profile and x, then the 12 metrics; the metric copy of profile is gone
    narrow = markdown_table(runs_, max_columns=20).splitlines()
    assert narrow[0].startswith("| run | profile | x | m0 |") and len(narrow) == 4


# ------------------------------------------------------------------ interruption and crashes


def test_run_ids_can_never_name_the_failure_folder():
    """Failure records live in ``_failed/``: every run id is ``default`` or holds ``name-value`` pairs."""
    for given in ({}, {"_failed": 1}, {"x": "_failed"}, {"failed": ""}, {"a": "/"}, {"_": "-"}):
        rid = run_id_for(given)
        assert rid != "_failed" and (rid == "default" or "-" in rid), rid


SLEEP_BODY = """import pathlib, time
pathlib.Path(run_dir, "started").write_text("1")
time.sleep(120)
"""


def test_sigterm_keeps_a_failure_record_and_removes_the_temp_directory(tmp_path, swept):
    """SIGTERM on ``python -m mmprompt.runs run`` behaves like Ctrl-C: exit 130, an ``interrupted`` record
    under ``_failed/``, no hidden temporary directory, and the earlier good runs untouched."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "papermill_runs"
    shutil.copytree(swept["out"], out)
    good = out / "tiny" / "profile-cpu_x-1"
    before = (good / "metrics.json").read_bytes()
    nb = make_notebook(tmp_path / "tiny.ipynb", SLEEP_BODY)
    proc = subprocess.Popen([sys.executable, "-m", "mmprompt.runs", "run", str(nb), "-p", "x", "3", "--profile", "cpu",
                             "--out", str(out)], env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    deadline = time.time() + 120
    while not list((out / "tiny").glob(".*.tmp-*/started")):
        assert proc.poll() is None and time.time() < deadline, "the notebook never started"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    record = json.loads((out / "tiny" / "_failed" / "profile-cpu_x-3" / "run.json").read_text())
    assert record["status"] == "interrupted"
    assert not [p for p in (out / "tiny").iterdir() if p.name.startswith(".")]
    assert (good / "metrics.json").read_bytes() == before
    assert {r.run_id: r.status for r in collect_runs(out)["tiny"]}["profile-cpu_x-3"] == "failed"


def test_the_next_run_removes_temp_directories_of_runners_that_died(tmp_path):
    nb = make_notebook(tmp_path / "tiny.ipynb", GOOD_BODY)
    out = tmp_path / "out"
    dead = out / "tiny" / ".profile-cpu_x-1.tmp-999999999-abc"
    dead.mkdir(parents=True)
    assert runs_cli.main(["run", str(nb), "-p", "x", "1", "--profile", "cpu", "--out", str(out)]) == 0
    assert not dead.exists() and (out / "tiny" / "profile-cpu_x-1" / "metrics.json").is_file()


RESUME_BODY = """import json, os, pathlib
from mmprompt import load_model, tune
from mmprompt.workbook.records import save_metrics
r = tune(load_model("ofa-nano-small"), "vqa", "prefix", profile="ci", steps=4, test_splits=False, progress=False)
(kept,) = pathlib.Path(os.environ["MMPROMPT_TUNING_WORK_DIR"]).iterdir()
weights = next(kept.glob("last/*.safetensors"))
log = pathlib.Path(LOG)
attempts = json.loads(log.read_text()) if log.exists() else []
attempts.append({"score": r.score, "steps": r.steps, "inode": os.stat(weights).st_ino})
log.write_text(json.dumps(attempts))
if len(attempts) == 1:
    raise RuntimeError("the first attempt dies after its tuning run")
save_metrics({"score": r.score}, run_dir)
"""


@pytest.mark.slow
def test_a_notebook_run_that_died_continues_its_tuning_runs(tmp_path):
    """The runner keeps a notebook run's tuning checkpoints in ``_work/<run-id>/`` until the run succeeds; the
    next attempt continues them (the finished tuning run is not trained again) and success removes them."""
    nb = make_notebook(tmp_path / "tuned.ipynb", RESUME_BODY,
                       params=f"LOG = {str(tmp_path / 'attempts.json')!r}\nprofile = 'ci'\nrun_dir = None")
    out = tmp_path / "out"
    assert runs_cli.main(["run", str(nb), "--out", str(out)]) == 1
    kept = out / "tuned" / "_work" / "default"
    assert [p.name for p in kept.iterdir()][0].startswith("vqa-prefix-")
    assert runs_cli.main(["run", str(nb), "--out", str(out)]) == 0
    first, second = json.loads((tmp_path / "attempts.json").read_text())
    assert second == first  # same score and steps, and the checkpoint file was not written again
    assert not kept.parent.exists() and (out / "tuned" / "default" / "metrics.json").is_file()


def _runner(nb: Path, out: Path, *params: str):
    import os
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "mmprompt.runs", "run", str(nb), *params, "--out", str(out)],
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}, start_new_session=True)


def test_kill_9_of_the_runner_leaves_nothing_the_next_run_does_not_clean(tmp_path):
    """kill -9 of ``runs run`` (and its kernel) mid-notebook: no run directory and no failure record appear
    (only the killed run's work directory, kept for its next attempt), and the next run of that notebook
    removes the dead runner's temporary directory."""
    import os
    import signal
    import time

    body = SLEEP_BODY.replace("time.sleep(120)", "time.sleep(120 if x == 3 else 0)") + GOOD_BODY
    nb = make_notebook(tmp_path / "tiny.ipynb", body)
    out = tmp_path / "out"
    proc = _runner(nb, out, "-p", "x", "3")
    deadline = time.time() + 120
    while not list((out / "tiny").glob(".*.tmp-*/started")):
        assert proc.poll() is None and time.time() < deadline, "the notebook never started"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    left = sorted(p.name for p in (out / "tiny").iterdir())
    assert len(left) == 2 and left[0].startswith(".x-3.tmp-") and left[1] == "_work"
    assert _runner(nb, out, "-p", "x", "1").wait(timeout=300) == 0
    assert sorted(p.name for p in (out / "tiny").iterdir()) == ["_work", "x-1"]
    assert [p.name for p in (out / "tiny" / "_work").iterdir()] == ["x-3"]


def test_two_runners_finishing_the_same_run_leave_one_complete_directory(tmp_path):
    nb = make_notebook(tmp_path / "tiny.ipynb", GOOD_BODY)
    out = tmp_path / "out"
    procs = [_runner(nb, out, "-p", "x", "2", "--force") for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    assert sorted(p.name for p in (out / "tiny").iterdir()) == ["x-2"]
    run = out / "tiny" / "x-2"
    assert json.loads((run / "metrics.json").read_text()) == {"acc": 0.5, "n": 4}
    assert json.loads((run / "run.json").read_text())["status"] == "ok"
