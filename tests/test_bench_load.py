"""``python -m mmprompt.bench load``: fresh-process load times of a shipped checkpoint, judged against a target."""

import pytest

from mmprompt.bench.__main__ import main as bench_main


def test_load_benchmark_reports_and_judges_the_target(capsys):
    assert bench_main(["load", "--model", "ofa-nano-small", "--reps", "1", "--target", "600"]) == 0
    out = capsys.readouterr().out
    assert "| run 1 |" in out and "| median |" in out and "within the 600 s target" in out
    assert bench_main(["load", "--model", "ofa-nano-small", "--reps", "1", "--target", "0.001"]) == 1
    assert "OVER the 0.001 s target" in capsys.readouterr().out


def test_bad_reps_is_refused():
    with pytest.raises(SystemExit):
        bench_main(["load", "--reps", "0"])
