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
