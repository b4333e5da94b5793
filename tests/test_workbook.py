"""mmprompt.workbook.api (notebook parameter rules, grids, checks, metrics layout) and mmprompt.workbook.reproduction."""

import json
import math
import warnings
from dataclasses import dataclass, field

import pandas as pd
import pytest

from mmprompt.workbook import reproduction as rp
from mmprompt.workbook import api as wb
from mmprompt.workbook.params import int_range


# ------------------------------------------------------------------------------------------ rules
@pytest.mark.parametrize(("rule", "good", "bad"), [
    (wb.optional(int_range(1)), [None, 1, 7], [0, "3", True, 1.5]),
    (wb.int_list(1), [[1], (4, 16)], [[], [0], [1, 1], 3, ["4"], [True]]),
    (wb.number_list(0.0), [[0.0, 0.1], (1,)], [[], [-0.1], [math.nan], "0.1", [True]]),
    (wb.choice_list("a", "b"), [["a"], ["b", "a"]], [[], ["c"], ["a", "a"], "a"]),
    (wb.name_list(), [["ofa-nano"], ["/ckpt/ofa-base", "x"]], [[], [""], ["a", "a"], "ofa-nano"]),
    (wb.non_empty_str(), ["ofa-nano"], ["", "  ", None, 3]),
])
def test_rules(rule, good, bad):
    assert all(rule.check(v) for v in good), [v for v in good if not rule.check(v)]
    assert not any(rule.check(v) for v in bad), [v for v in bad if rule.check(v)]


def test_validate_reports_every_problem_in_one_error():
    with pytest.raises(ValueError) as info:
        wb.validate(profile="tpu", seed=0, task="refcoco", depth=0, lengths=[4, 4], epsilons=[-1], backbone="")
    message = str(info.value)
    for part in ("profile='tpu'", "depth=0", "lengths=[4, 4]", "epsilons=[-1]", "backbone=''"):
        assert part in message
    assert message.count("\n") == 5  # a header line and one line per bad parameter


def test_validate_accepts_defaults_overrides_and_checks_gpu_data():
    params = dict(profile="ci", seed=0, task="refcoco", backbone="ofa-nano", model_dir=None, data_dir=None,
                  run_dir=None, depth=3, depth_from="top", length=64)
    assert wb.validate(**params) == params
    with pytest.raises(ValueError, match=r"depth=3 \(allowed: an integer >= 1 and <= 2\)"):
        wb.validate({"depth": int_range(1, 2)}, depth=3)
    with pytest.raises(ValueError, match="data_dir=None"):
        wb.validate(**{**params, "profile": "gpu"})
    assert wb.validate(**{**params, "profile": "gpu", "data_dir": "/data"})["profile"] == "gpu"


def test_grid_and_model_source():
    assert wb.grid("lengths", "ci") == (8, 64)
    assert 64 in wb.grid("lengths", "cpu") and len(wb.grid("lengths", "cpu")) >= 6
    assert wb.grid("lengths", "cpu", [5]) == (5,)
    assert all(len(wb.grid(name, "ci")) <= 6 for name in wb.GRIDS)
    with pytest.raises(ValueError, match="grid name='depths'"):
        wb.grid("depths", "ci")
    with pytest.raises(ValueError, match="profile='laptop'"):
        wb.grid("lengths", "laptop")
    assert wb.model_source("ofa-nano", None) == "ofa-nano" and wb.model_source("ofa-nano", "/m") == "/m"


# ------------------------------------------------------------------------------------------ results
@dataclass
class FakeResult:
    task: str = "refcoco"
    method: str = "prefix"
    metrics: dict = field(default_factory=lambda: {"val": {"acc@0.5": 0.5, "n": 4}, "testA": {"acc@0.5": 0.25}})
    trainable: int = 10
    total: int = 100
    history: list = field(default_factory=lambda: [{"event": "train", "step": 1, "loss": 2.0}])
    metric: str = "acc@0.5"


@pytest.mark.parametrize(("change", "message"), [
    (dict(metrics={"val": {"acc@0.5": 1.5}}), "not a finite number in"),
    (dict(metrics={"val": {"acc@0.5": math.nan}}), "not a finite number in"),
    (dict(metrics={"val": {}}), "None"),
    (dict(trainable=0), "trainable=0"),
    (dict(trainable=200), "trainable=200"),
    (dict(history=[{"event": "train", "loss": math.inf}]), "training losses"),
    (dict(history=[]), "training losses"),
    (dict(method="zero-shot", trainable=5), "zero-shot reports 5"),
])
def test_check_result_catches_nonsense(change, message):
    wb.check_result(FakeResult())
    wb.check_result(FakeResult(method="zero-shot", trainable=0, history=[]))
    with pytest.raises(AssertionError, match=message):
        wb.check_result(FakeResult(**change))


def test_check_learned_asks_for_a_changed_loss_at_ci_and_a_better_score_beyond():
    wb.check_learned("p", "ci", score=0.1, zero_score=0.2, loss=2.5, zero_loss=2.0)  # a worse prefix after 8 steps
    with pytest.raises(AssertionError, match="p: tuning left the held-out loss unchanged"):
        wb.check_learned("p", "ci", score=0.3, zero_score=0.2, loss=2.0, zero_loss=2.0)
    with pytest.raises(AssertionError, match="held-out loss nan"):
        wb.check_learned("p", "cpu", score=0.3, zero_score=0.2, loss=float("nan"), zero_loss=2.0)
    wb.check_learned("p", "cpu", score=0.3, zero_score=0.2, loss=2.1, zero_loss=2.0)  # the score decides
    with pytest.raises(AssertionError, match=r"p: score 0.2000 does not beat zero-shot \(0.2000\)"):
        wb.check_learned("p", "gpu", score=0.2, zero_score=0.2, loss=1.0, zero_loss=2.0)


def test_results_dict_and_score_table():
    a, b = FakeResult(), FakeResult(task="vqa", method="finetune", metric="accuracy",
                                    metrics={"val": {"accuracy": 0.75}, "test": {"accuracy": 0.5}})
    assert wb.results_dict({"prefix": a}) == {"refcoco": {"prefix": {"val": 0.5, "testA": 0.25}}}
    both = wb.results_dict([("x", a), ("x", b)])
    assert both == {"refcoco": {"x": {"val": 0.5, "testA": 0.25}}, "vqa": {"x": {"val": 0.75, "test": 0.5}}}
    table = wb.score_table({"prefix": a})
    assert table.loc["prefix", ("refcoco", "val", "acc@0.5")] == 50.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pandas deprecates partial keys on MultiIndex columns: none used
        table = wb.score_table({"prefix": a, "finetune": a}, extra={"trainable": [7, 9]})
    assert table["trainable"].tolist() == [7, 9]
    with pytest.raises(ValueError, match="'trainable' has 1 values for 2 rows"):
        wb.score_table({"prefix": a, "finetune": a}, extra={"trainable": [7]})
    with pytest.raises(ValueError, match="without dots"):
        wb.results_dict({"P=0.5": a})


def test_checkpoint_card(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"name": "ofa-nano", "model_type": "ofa", "d_model": 128,
                                                      "encoder_layers": 6, "decoder_layers": 6}))
    assert wb.checkpoint_card(tmp_path)["d_model"] == 128 and "parameters" not in wb.checkpoint_card(tmp_path)
    record = {"config": {"steps": 12, "batch_size": 32, "lr": 0.001, "profile": "ci",
                         "stages": [{"max_objects": 1, "fraction": 0.25}, {"max_objects": 4, "fraction": 0.75}]},
              "parameters": 123, "wall_time_s_this_session": 4.5, "machine": {"platform": "x"}}  # an older record
    (tmp_path / "pretrain.json").write_text(json.dumps(record))
    card = wb.checkpoint_card(tmp_path)
    assert card["parameters"] == 123 and card["pretrain_steps"] == 12 and card["pretrain_wall_time_s"] == 4.5
    assert card["pretrain_stages"] == ["<= 1 objects: 25%", "<= 4 objects: 75%"]
    record.update(steps=10, wall_time_s=99.0)  # the current record: the whole run's time and steps
    (tmp_path / "pretrain.json").write_text(json.dumps(record))
    card = wb.checkpoint_card(tmp_path)
    assert card["pretrain_steps"] == 10 and card["pretrain_wall_time_s"] == 99.0
    with pytest.raises(FileNotFoundError, match="config.json"):
        wb.checkpoint_card(tmp_path / "missing")


# ------------------------------------------------------------------------------------------ reproduction
def _write_run(root, notebook, run_id, params, metrics, status="ok"):
    d = root / notebook / run_id
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"run_id": run_id, "status": status}))
    (d / "parameters.json").write_text(json.dumps(params))
    (d / "metrics.json").write_text(json.dumps(metrics))


def test_paper_size():
    assert rp.paper_size("/ckpt/ofa-large") == "large" and rp.paper_size("OFA_base") == "base"
    assert rp.paper_size("ofa-nano") is None and rp.paper_size(None) is None
    assert rp.paper_size("ofa-base-vs-large") is None  # ambiguous


def test_comparison_table_lines_runs_up_with_the_paper(tmp_path):
    results = {"refcoco": {"prefix": {"val": 0.9, "testA": 0.91}, "zero-shot": {"val": 0.1}}}
    _write_run(tmp_path, "02_tasks", "profile-gpu_task-refcoco",
               {"profile": "gpu", "task": "refcoco", "model_dir": "/ckpt/ofa-large"}, {"results": results})
    _write_run(tmp_path, "04_prompt_depth", "profile-gpu",
               {"profile": "gpu"}, {"results": {"snli_ve": {"encoder only": {"dev": 0.8}}}})
    _write_run(tmp_path, "02_tasks", "profile-cpu", {"profile": "cpu"}, {"results": results})
    _write_run(tmp_path, "02_tasks", "broken", {"profile": "gpu"}, {"results": results}, status="failed")
    table = rp.comparison_table(tmp_path, profile="gpu")
    assert len(table) == 4  # 3 numbers of the 02 run + 1 of the 04 run; cpu and failed runs left out
    row = table[(table.variant == "prefix") & (table.split == "val")].iloc[0]
    assert row["ours"] == pytest.approx(90.0) and row["paper"] == 90.05 and row["diff"] == pytest.approx(-0.05)
    assert row["paper_row"] == str(("large", "PT"))
    enc = table[table.variant == "encoder only"].iloc[0]
    assert enc["paper"] == 89.64 and enc["paper_table"] == "table3"
    assert table[table.variant == "zero-shot"]["paper"].isna().all()
    assert rp.comparison_table(tmp_path / "nothing").empty
    assert len(rp.comparison_table(tmp_path, profile="cpu")) == 3


def test_study_table_sorts_lengths_by_value_and_fills_the_paper_column(tmp_path):
    lengths = {f"P={p}": {"val": p / 1000, "testA": p / 2000, "testB": p / 4000} for p in (10, 100, 120, 16, 200)}
    _write_run(tmp_path, "03_prompt_length", "profile-cpu", {"profile": "cpu"},
               {"results": {"refcoco": {"zero-shot": {"val": 0.1}, **lengths}}})
    _write_run(tmp_path, "04_prompt_depth", "profile-cpu", {"profile": "cpu"},
               {"results": {"snli_ve": {"encoder only": {"dev": 0.8, "test": 0.7}}}})
    table = rp.study_table(rp.comparison_table(tmp_path, profile="cpu"))
    assert list(table.loc[("03_prompt_length", "refcoco")].index) == ["P=10", "P=16", "P=100", "P=120", "P=200",
                                                                       "zero-shot"]
    p100 = table.loc[("03_prompt_length", "refcoco", "P=100")]
    assert p100["validation"] == pytest.approx(10.0) and p100["test (mean)"] == pytest.approx(3.75)
    assert p100["paper"] == 92.10 and p100["paper table"] == "table6 (score)"
    assert pd.isna(table.loc[("03_prompt_length", "refcoco", "P=200"), "paper"])  # not in the paper
    enc = table.loc[("04_prompt_depth", "snli_ve", "encoder only")]
    assert enc["validation"] == pytest.approx(80.0) and enc["test (mean)"] == pytest.approx(70.0)
    assert enc["paper table"] == "table3" and enc["paper"] > 0
    assert rp.natural_key("P=16") < rp.natural_key("P=100") < rp.natural_key("zero-shot")


def test_gpu_commands():
    cmds = rp.gpu_commands("/ckpt/ofa-large", "/data/ofa", sizes=("base",))
    assert all(c.startswith("python -m mmprompt.runs sweep notebooks/") and "--profile gpu" in c for c in cmds)
    assert any("04_prompt_depth" in c for c in cmds) and "-p model_dir /ckpt/ofa-base" in cmds[-1]
    assert all("-p data_dir /data/ofa" in c for c in cmds)
    with pytest.raises(ValueError, match="sizes contains 'xl'"):
        rp.gpu_commands(sizes=("xl",))
