"""``python -m mmprompt.bench serve --quick``: every contender measured, the mixed batch answers like the four
single-task batches, and the disk figures are the files' sizes."""

import json
import math

import pytest

from mmprompt.bench import available, serve
from mmprompt.bench.__main__ import main as bench_main


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "serve.json"
    assert bench_main(["serve", "--quick", "--in-process", "--threads", "1", "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_every_contender_on_both_backbones(report, capsys):
    assert "serve" in available()
    assert [r["workload"]["backbone"] for r in report["runs"]] == ["ofa-nano-small", serve.NANO_DIR]
    for one in report["runs"]:
        rows = one["results"]
        assert list(rows) == list(serve.CONTENDERS)
        assert one["mixed_equals_four_batches"] is True
        for r in rows.values():
            assert r["rows_per_s"] > 0 and math.isfinite(r["mixed_speedup"])
        assert rows["mixed"]["mixed_speedup"] == 1.0
        verdict = serve._verdicts(one)[1]  # mixed rows/s over single's = single's time over mixed's
        assert verdict.startswith(f"mixed / single-prompt throughput: {rows['single']['mixed_speedup']:.2f}×")
        backbone_mb = rows["four_models"]["weights_mb"] / 4
        prompts = 4 * one["prompt_parameters"] * 4 / 2**20
        assert rows["mixed"]["weights_mb"] == pytest.approx(backbone_mb + prompts)


def test_disk_ratio_is_files_over_four_copies(report):
    for one in report["runs"]:
        d = one["disk"]
        assert d["four_copies_mb"] == pytest.approx(4 * d["backbone_mb"])
        assert d["disk_ratio"] == pytest.approx((d["backbone_mb"] + d["prompts_mb"]) / d["four_copies_mb"])
        assert 0.25 < d["disk_ratio"] < 0.3  # one backbone is 0.25 of four; the prompts add little
        assert d["prompts_mb"] > 4 * one["prompt_parameters"] * 4 / 2**20  # weights + JSON + header


def test_bad_arguments_refused():
    with pytest.raises(ValueError, match="batch=6: must be a multiple of 4"):
        serve.Workload(batch=6)
    with pytest.raises(ValueError, match="contenders"):
        serve.run([serve.Workload()], contenders=("four_models",))
