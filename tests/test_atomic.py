import json
import math
import os

import pytest

from mmprompt.core.atomic import atomic_write, default_mode, write_figure, write_json, write_jsonl, write_text


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "record.json"
    write_json(target, {"a": 1})

    def broken(tmp):
        with open(tmp, "w") as fh:
            fh.write("{half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken)
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_writes_create_parents_and_use_the_umask_mode(tmp_path):
    path = write_text(tmp_path / "a" / "b.txt", "x\n")
    assert path.read_text() == "x\n" and (os.stat(path).st_mode & 0o777) == default_mode()


def test_json_options_and_lines(tmp_path):
    write_json(tmp_path / "s.json", {"b": 1, "a": 2}, sort_keys=True)
    assert (tmp_path / "s.json").read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    with pytest.raises(ValueError):
        write_json(tmp_path / "nan.json", {"x": math.nan}, allow_nan=False)
    assert not (tmp_path / "nan.json").exists()
    write_jsonl(tmp_path / "m.jsonl", [{"step": 1}, {"step": 2}])
    assert [json.loads(line)["step"] for line in (tmp_path / "m.jsonl").read_text().splitlines()] == [1, 2]


def test_write_figure_saves_in_the_suffix_format(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [1, 0])
    png = write_figure(tmp_path / "a.png", fig, dpi=50)
    svg = write_figure(tmp_path / "a.svg", fig)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in svg.read_bytes()[:500]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "a.svg"]  # no temporary left behind


# -- directories ----------------------------------------------------------------------------------

_FINISH = """
import sys, time
from pathlib import Path
from mmprompt.core.atomic import atomic_dir
target, tag, start = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
with atomic_dir(target) as tmp:
    for i in range(20):
        (tmp / f"part{i}.txt").write_text(tag)
    while time.time() < start:
        pass
"""


def test_concurrent_writers_of_one_directory_leave_one_complete_copy_and_no_debris(tmp_path):
    import subprocess
    import sys
    import time

    target = tmp_path / "run"
    start = str(time.time() + 1.5)
    procs = [subprocess.Popen([sys.executable, "-c", _FINISH, str(target), tag, start]) for tag in "ab" * 3]
    assert [p.wait(timeout=60) for p in procs] == [0] * 6
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    contents = {(target / f"part{i}.txt").read_text() for i in range(20)}
    assert len(contents) == 1 and len(list(target.iterdir())) == 20  # one writer's complete copy


def test_a_failed_directory_write_keeps_the_old_one(tmp_path):
    from mmprompt.core.atomic import atomic_dir

    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "x").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "d") as tmp:
        (tmp / "x").write_text("new")
        raise RuntimeError("crash")
    assert (tmp_path / "d" / "x").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["d"]


def test_replace_false_keeps_the_existing_directory(tmp_path):
    from mmprompt.core.atomic import atomic_dir, replace_dir, temp_dir_for

    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "x").write_text("first")
    src = temp_dir_for(tmp_path / "d")
    (src / "x").write_text("second")
    assert replace_dir(src, tmp_path / "d", replace=False) is False
    assert (tmp_path / "d" / "x").read_text() == "first" and not src.exists()


def test_stale_temp_dirs_are_those_of_dead_processes(tmp_path):
    from mmprompt.core.atomic import stale_temp_dirs, temp_dir_for

    mine = temp_dir_for(tmp_path / "a")
    dead = tmp_path / ".b.tmp-999999999-x"
    dead.mkdir()
    assert stale_temp_dirs(tmp_path) == [dead] and mine.exists()


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _modes(root) -> set[int]:
    from pathlib import Path

    return {os.stat(p).st_mode & 0o777 for p in [Path(root), *Path(root).rglob("*")] if p.is_dir()}


def test_every_directory_the_project_writes_follows_the_umask(tmp_path, umask_022):
    """Checkpoints, tokenizers, generated data, finished runs, Florence-2 directories: 0755 under umask 022
    (mkdtemp alone would leave 0700)."""
    import torch

    from mmprompt.core.atomic import atomic_dir
    from mmprompt.data.synth import generate
    from mmprompt.data.tokenizer import train_nano_tokenizer
    from mmprompt.models.florence2.tiny import ensure_tiny_florence2
    from mmprompt.training.checkpoint import write_checkpoint

    written = {
        "checkpoint": write_checkpoint(tmp_path / "ck", weights={"w": torch.ones(1)}, meta={"step": 0}) or tmp_path / "ck",
        "tokenizer": train_nano_tokenizer(["a red circle"] * 3, out_dir=tmp_path / "tok") and tmp_path / "tok",
        "synthetic data": generate(tmp_path / "syn", "ci", max_per_split=2, progress=False),
        "florence-2": ensure_tiny_florence2(tmp_path / "f2"),
    }
    with atomic_dir(tmp_path / "plain") as tmp:
        (tmp / "sub").mkdir()
    written["nested"] = tmp_path / "plain"
    for what, path in written.items():
        assert _modes(path) == {0o755}, f"{what}: {sorted(map(oct, _modes(path)))}"

