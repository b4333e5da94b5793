"""Fault injection (issue #15): each case runs a command in a subprocess, breaks something (kill -9 or
SIGTERM at a random point of a tuning run, a truncated or corrupted file, a wrong directory) and asserts what
survives: resumed weights and metrics equal to an uninterrupted run's, checkpoints and shipped files
byte-identical. Runs use a random ofa-nano-small, the tiny synthetic data and a few steps (seconds each)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "data" / "checkpoints"
RECIPE = '{"save_every": 3}'


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd or ROOT, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def _tune_args(model: Path, data: Path, out_dir: Path, *extra: str) -> list[str]:
    return ["mmprompt.tune_cli", "--model-dir", str(model), "--data-dir", str(data), "--task", "snli_ve",
            "--profile", "ci", "--steps", "24", "--no-test-splits", "--recipe", RECIPE, "--out-dir", str(out_dir),
            *extra]


def _digests(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _step(out_dir: Path) -> int:
    try:
        return json.loads((out_dir / "last" / "meta.json").read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError):
        return -1


def _errors(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]


@pytest.fixture(scope="module")
def reference(random_ofa_dir, tiny_synthetic, tmp_path_factory):
    """An uninterrupted run: its result record and its final weights."""
    out = tmp_path_factory.mktemp("reference")
    proc = _run(*_tune_args(random_ofa_dir, tiny_synthetic, out / "run"), "--out", str(out / "result.json"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def _same_run(reference: Path, out: Path) -> None:
    ref, got = (json.loads((d / "result.json").read_text()) for d in (reference, out))
    assert got["metrics"] == ref["metrics"] and got["history"] == ref["history"] and got["steps"] == 24
    a, b = (load_file(d / "run" / "last" / "weights.safetensors") for d in (reference, out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("sig,seed", [(signal.SIGKILL, 0), (signal.SIGTERM, 2)])
def test_a_killed_tuning_run_resumes_to_the_uninterrupted_result(reference, random_ofa_dir, tiny_synthetic,
                                                                   tmp_path, sig, seed):
    rng = random.Random(seed)
    threshold, delay = rng.choice([3, 6, 9, 12, 15]), rng.uniform(0.0, 0.3)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", *_tune_args(random_ofa_dir, tiny_synthetic, run)], cwd=ROOT,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while _step(run) < threshold and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == -sig, "the run ended before the signal: nothing was interrupted"
    survived = _step(run)
    assert threshold <= survived < 24
    kept = _digests(run)
    again = _run(*_tune_args(random_ofa_dir, tiny_synthetic, run))  # the same command without --resume
    assert again.returncode == 2 and "already holds a tuning run" in again.stderr
    assert _digests(run) == kept  # the partial run was not deleted
    resumed = _run(*_tune_args(random_ofa_dir, tiny_synthetic, run), "--resume", "--out", str(tmp_path / "result.json"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {run / 'last'} at step {survived}" in resumed.stderr
    _same_run(reference, tmp_path)
    assert not list(run.glob(".*tmp-*")), "temporary checkpoint directories were left behind"


@pytest.mark.parametrize("name", ["weights.safetensors", "state.pt", "meta.json"])
def test_a_damaged_checkpoint_is_refused_and_left_as_it_is(reference, random_ofa_dir, tiny_synthetic, tmp_path, name):
    run = Path(shutil.copytree(reference / "run", tmp_path / "run"))
    path = run / "last" / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    kept = _digests(run)
    proc = _run(*_tune_args(random_ofa_dir, tiny_synthetic, run), "--resume")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (error,) = _errors(proc)
    assert f"checkpoint file '{path}' is damaged" in error and "nothing was changed" in error
    assert _digests(run) == kept


def test_a_truncated_tsv_stops_the_run_before_training(random_ofa_dir, tiny_synthetic, tmp_path):
    data = Path(shutil.copytree(tiny_synthetic, tmp_path / "data"))
    path = data / "snli_ve_train.tsv"
    rows = path.read_text().splitlines()
    cols = rows[-1].split("\t")
    cols[2] = cols[2][: len(cols[2]) // 8 * 4]  # the image column cut in half (valid base64, no end marker)
    path.write_text("\n".join(rows[:-1] + ["\t".join(cols)]))  # and no final newline: a file cut short
    proc = _run(*_tune_args(random_ofa_dir, data, tmp_path / "run"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert any(f"{path}:{len(rows)}: truncated JPEG image" in e for e in _errors(proc))
    assert not (tmp_path / "run" / "last").exists()  # refused before the first step


def test_malformed_config_json_names_the_file(random_ofa_dir, tiny_synthetic, tmp_path):
    model = Path(shutil.copytree(random_ofa_dir, tmp_path / "model"))
    config = model / "config.json"
    config.write_text(config.read_text()[:-30])
    proc = _run(*_tune_args(model, tiny_synthetic, tmp_path / "run"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert any(f"config file '{config}' is not valid JSON" in e for e in _errors(proc))


def test_a_non_finite_loss_ends_with_one_true_line(random_ofa_dir, tiny_synthetic, tmp_path):
    run = tmp_path / "run"
    proc = _run(*_tune_args(random_ofa_dir, tiny_synthetic, run, "--lr", "1e30"))
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    (error,) = _errors(proc)
    assert "non-finite loss nan at step" in error
    step = _step(run)
    if step > 0:
        assert f"the checkpoint {run / 'last'} (step {step}) is kept untouched" in error
    else:
        assert f"no checkpoint was saved in {run}" in error


@pytest.mark.parametrize("where", ["same", "inside", "parent"])
def test_tune_cli_refuses_an_out_dir_overlapping_the_model_dir(random_ofa_dir, tiny_synthetic, tmp_path, where):
    model = Path(shutil.copytree(random_ofa_dir, tmp_path / "models" / "model"))
    kept = _digests(model)
    out = {"same": model, "inside": model / "run", "parent": model.parent}[where]
    proc = _run(*_tune_args(model, tiny_synthetic, out))
    assert proc.returncode == 2 and any("--out-dir=" in e and "--model-dir=" in e for e in _errors(proc))
    assert _digests(model) == kept and not (model / "run").exists()


# ------------------------------------------------------------------------------------ pretraining
def _pretrain(cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    return _run("mmprompt.pretrain", "--preset", "ofa-nano-small", "--profile", "ci", "--steps", "4",
                "--batch-size", "4", "--resnet-warmup-steps", "0", "--warmup-steps", "0", "--eval-every", "2",
                "--threads", "1", *extra, cwd=cwd)


def test_pretraining_never_touches_the_shipped_checkpoints(tmp_path):
    """Run from a checkout (``tmp_path`` holds a copy of ``data/checkpoints``) with default options."""
    from mmprompt.data import ensure_synthetic

    ensure_synthetic("ci")  # generated once, outside the measured run
    checkout = Path(shutil.copytree(SHIPPED, tmp_path / "data" / "checkpoints"))
    shipped = _digests(SHIPPED)
    assert _digests(checkout) == shipped
    first = _pretrain(tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert _digests(checkout) == shipped and _digests(SHIPPED) == shipped
    (out,) = (tmp_path / "runs" / "pretrain").glob("ofa-nano-small-*/checkpoint")
    assert (out / "model.safetensors").is_file()
    made = _digests(out)
    again = _pretrain(tmp_path)  # the same command: refuses to restart over the finished stages
    assert again.returncode == 2 and "holds an earlier run" in again.stderr and "--resume" in again.stderr
    assert _digests(out) == made

    card = checkout / "ofa-nano-small"
    old = _digests(card)
    refused = _pretrain(tmp_path, "--resume", "--out", str(card))
    assert refused.returncode == 2 and "already exists" in refused.stderr and "--overwrite" in refused.stderr
    assert _digests(card) == old
    replaced = _pretrain(tmp_path, "--resume", "--out", str(card), "--overwrite")
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    now = _digests(card)  # replaced as a whole: no stale model card or study files
    assert now.keys() == made.keys() and now["config.json"] == made["config.json"]
    a, b = load_file(card / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not {"README.md", "tuning.json", "zero_shot.json", "perception.json"} & {p.name for p in card.iterdir()}
    assert sorted(p.name for p in checkout.iterdir()) == ["ofa-nano", "ofa-nano-small"]  # no temp/.old debris
    assert _digests(SHIPPED) == shipped


# ------------------------------------------------------------------------------------ model card
def test_model_card_at_another_profile_keeps_the_cpu_study(tmp_path):
    card = Path(shutil.copytree(SHIPPED / "ofa-nano-small", tmp_path / "ofa-nano-small"))
    kept = _digests(card)
    proc = _run("mmprompt.model_card", str(card), "--transfer", "--profile", "ci")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "measured at other settings" in proc.stderr and "zero_shot.json (profile cpu)" in proc.stderr
    assert _digests(card) == kept
    assert json.loads((card / "tuning.json").read_text())["profile"] == "cpu"
