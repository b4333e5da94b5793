"""``python -m mmprompt.bench model``: the dispatcher and a tiny OFA-vs-BART run."""

import pytest

from mmprompt.bench import available
from mmprompt.bench import model as bench_model
from mmprompt.bench.__main__ import main


def test_dispatcher_lists_and_rejects(capsys):
    assert "model" in available()
    assert main(["--help"]) == 0
    assert "model" in capsys.readouterr().out
    assert main(["no-such-bench"]) == 2
    assert "available" in capsys.readouterr().err


def test_tiny_run_measures_both_models_and_the_ratio(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["model", "--preset", "ofa-nano-small", "--batch", "1", "--src-len", "4", "--tgt-len", "2",
                 "--image-size", "32", "--warmup", "0", "--reps", "1", "--threads", "1", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "| ofa |" in text and "| bart |" in text and "OFA / BART step time" in text
    import json

    report = json.loads(out.read_text())
    ofa, bart = report["results"]["ofa"], report["results"]["bart"]
    assert ofa["encoder_length"] == bart["encoder_length"] == 4 + 2 * 2  # 32 px → 2×2 patches + 4 tokens
    assert ofa["step_seconds"] > 0 and bart["peak_rss_mb"] > 0
    assert report["time_ratio"] == pytest.approx(ofa["step_seconds"] / bart["step_seconds"])


@pytest.mark.parametrize("kwargs,match", [
    ({"preset": "ofa-colossal"}, "preset"),
    ({"batch": 0}, "batch"),
    ({"image_size": 4096}, "image_size"),
    ({"models": ("gpt",)}, "models"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bench_model.run(**{"preset": "ofa-nano-small", **kwargs})
