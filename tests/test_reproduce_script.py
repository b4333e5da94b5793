"""scripts/reproduce_paper.sh: refuses without MODEL_DIR/DATA_DIR; --dry-run prints runner commands whose
notebooks and parameters the runner accepts."""

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from mmprompt.workbook import runs, runs_cli

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "reproduce_paper.sh"


def _run(*args, env=None):
    base = {k: v for k, v in os.environ.items() if k not in ("MODEL_DIR", "DATA_DIR")}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=60)


@pytest.fixture()
def dirs(tmp_path):
    models, data = tmp_path / "ckpt", tmp_path / "data"
    for size in ("base", "large"):
        (models / f"ofa-{size}").mkdir(parents=True)
        (models / f"ofa-{size}" / "config.json").write_text("{}")
    (data / "refcocoplus").mkdir(parents=True)
    return {"MODEL_DIR": str(models), "DATA_DIR": str(data)}


def test_refuses_without_model_and_data_dirs(dirs):
    r = _run("--dry-run")
    assert r.returncode == 2 and "MODEL_DIR is not set" in r.stderr and r.stdout == ""
    r = _run("--dry-run", env={"MODEL_DIR": dirs["MODEL_DIR"]})
    assert r.returncode == 2 and "DATA_DIR is not set" in r.stderr
    r = _run(env={**dirs, "MODEL_DIR": "/no/such/dir"})
    assert r.returncode == 2 and "is not a directory" in r.stderr
    r = _run(env=dirs)  # real mode checks the data before running anything
    assert r.returncode == 2 and "refcoco_train.tsv" in r.stderr
    r = _run("--dry-run", "--only", "table9", env=dirs)
    assert r.returncode == 2 and "unknown section 'table9'" in r.stderr


def test_dry_run_prints_one_valid_runner_command_per_table_cell_group(dirs, tmp_path):
    r = _run("--dry-run", "--out", str(tmp_path / "out"), "--", "--force", env=dirs)
    assert r.returncode == 0, r.stderr
    commands = r.stdout.strip().splitlines()
    assert "refcocog not found" in r.stderr and "refcocoplus not found" not in r.stderr
    seen = []
    for line in commands:
        argv = shlex.split(line)
        assert argv[:4] == ["python", "-m", "mmprompt.runs", "sweep"] and argv[-1] == "--force"
        args = runs_cli._build_parser().parse_args(argv[3:])
        grid = runs_cli._grid_from_args(args)
        assert grid["profile"] == ["gpu"] and args.out == tmp_path / "out"
        assert len(args.notebook) == 1, line  # one notebook per printed command
        notebook = REPO / args.notebook[0]
        for params in runs.expand_grid(grid):  # every run passes the runner's checks before execution
            runs._validate_run_request(notebook, params, runs.RunConfig(out=args.out))
            assert Path(params["model_dir"]).parent == Path(dirs["MODEL_DIR"])
            seen.append((notebook.stem, Path(params["model_dir"]).name, params["task"], params["data_dir"]))
    data, plus = dirs["DATA_DIR"], str(Path(dirs["DATA_DIR"]) / "refcocoplus")
    for size in ("ofa-base", "ofa-large"):  # Table 1: both sizes, every task, RefCOCO+ from its directory
        for task in ("refcoco", "snli_ve", "caption", "vqa"):
            assert ("02_tasks", size, task, data) in seen
        assert ("02_tasks", size, "refcoco", plus) in seen
    for nb in ("08_lightweight_methods", "04_prompt_depth", "05_reparameterization", "03_prompt_length",
               "06_robustness"):  # the ablations: the large model on every task
        assert {t for n, s, t, _ in seen if n == nb and s == "ofa-large"} == {"refcoco", "snli_ve", "caption", "vqa"}
        assert all(s == "ofa-large" for n, s, _, _ in seen if n == nb)
    lengths = {line for line in commands if "03_prompt_length" in line}
    assert all("-p length 10 16 32 64 100 120" in line for line in lengths)
    assert not any("07_efficiency" in line for line in commands)  # opt-in section


def test_only_selects_sections(dirs):
    r = _run("--dry-run", "--only", "table3,efficiency", env=dirs)
    assert r.returncode == 0, r.stderr
    notebooks = {shlex.split(line)[4] for line in r.stdout.strip().splitlines()}
    assert notebooks == {"notebooks/04_prompt_depth.ipynb", "notebooks/07_efficiency.ipynb"}
