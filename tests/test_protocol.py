"""The evaluation protocol: per-example scores on every split, intervals, budgets, seeds."""

import numpy as np
import pytest

from mmprompt import load_model, results_table, tune, tune_seeds
from mmprompt.experiment.profiles import budget_overrides
from mmprompt.eval.stats import check_seeds

HEADLINE = {"refcoco": "acc@0.5", "snli_ve": "accuracy", "vqa": "accuracy", "caption": "cider"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def backbone(random_ofa_dir):
    return load_model(random_ofa_dir)


@pytest.mark.parametrize("task", ["refcoco", "snli_ve", "vqa", "caption"])
def test_every_split_carries_per_example_scores_that_average_to_its_metric(backbone, tiny_synthetic, task):
    r = tune(backbone, task, "zero-shot", data_dir=tiny_synthetic, eval_examples=6, progress=False)
    assert set(r.per_example) == set(r.metrics) and len(r.metrics) >= 2  # validation and test splits
    for split, scores in r.per_example.items():
        assert len(scores) == r.metrics[split]["n"] == 6
        assert float(np.mean(scores)) == pytest.approx(r.metrics[split][HEADLINE[task]], abs=1e-9)
    assert r.test_splits == tuple(s for s in r.metrics if s != list(r.metrics)[0])
    est = r.interval(r.test_splits[0])
    assert est.kind == "examples" and est.n == 6 and est.low <= est.mean <= est.high
    row = r.row()
    for split in r.metrics:
        assert row[f"{split}_{HEADLINE[task]}_±"] == pytest.approx(r.interval(split).half_width)
    assert r.budget == {"budget": "fixed"} and r.seed == 0


def test_converge_budget_stops_early_on_validation_and_states_the_budget(backbone, tiny_synthetic):
    r = tune(backbone, "snli_ve", "prefix", data_dir=tiny_synthetic, batch_size=4, eval_examples=4,
             test_splits=False, budget="converge", progress=False)
    b = r.budget
    assert (b["budget"], b["max_steps"], b["eval_every"], b["patience"]) == ("converge", 24, 8, 1)
    assert b["steps"] == r.steps <= 24 and b["examples"] == r.steps * 4
    evals = [h for h in r.history if "accuracy" in h]
    if b["stop_reason"] == "early_stopping":  # the metric did not improve at the last validation
        assert r.steps < 24 and evals[-1]["accuracy"] <= max(h["accuracy"] for h in evals[:-1])
    else:
        assert b["stop_reason"] == "max_steps" and r.steps == 24
    fixed = tune(backbone, "snli_ve", "prefix", data_dir=tiny_synthetic, batch_size=4, eval_examples=4,
                 test_splits=False, progress=False)
    assert fixed.budget["max_steps"] == 8 and fixed.budget["patience"] is None


def test_budget_bad_input():
    assert budget_overrides("cpu", "fixed") == {}
    assert budget_overrides("cpu", "converge")["patience"] >= 1
    with pytest.raises(ValueError, match="budget='forever'"):
        budget_overrides("cpu", "forever")
    with pytest.raises(ValueError, match="not 'gpu'"):
        budget_overrides("gpu", "converge")


def test_seeds_give_one_run_each_and_a_t_interval(backbone, tiny_synthetic):
    runs = tune_seeds(backbone, "refcoco", "prefix", seeds=[3, 5], data_dir=tiny_synthetic, steps=1,
                      batch_size=4, eval_examples=4, progress=False)
    assert [r.seed for r in runs.results] == [3, 5]
    val, test = runs.splits[0], runs.splits[1]
    scores = runs.scores(test)
    est = runs.estimate(test)
    assert (est.kind, est.n) == ("seeds", 2) and est.mean == pytest.approx(np.mean(scores))
    assert set(runs.estimates) == set(runs.splits)
    table = results_table([runs])
    assert table.loc[0, "seeds"] == 2 and table.loc[0, f"{val}_acc@0.5"] == pytest.approx(np.mean(runs.scores()))
    single = tune_seeds(backbone, "refcoco", "zero-shot", seeds=[0], data_dir=tiny_synthetic, eval_examples=4,
                        test_splits=False, progress=False)
    assert single.estimate().kind == "examples"  # one seed: the bootstrap over examples


@pytest.mark.parametrize(
    ("seeds", "match"),
    [([], "non-empty"), ("012", "non-empty"), ([0, -1], "integers >= 0"), ([0, 1.5], "integers >= 0"),
     ([1, 1], "distinct"), ([True], "integers >= 0")],
)
def test_seeds_bad_input(seeds, match):
    with pytest.raises(ValueError, match=match):
        check_seeds(seeds)


def test_tune_seeds_refuses_a_single_seed_argument(backbone, tiny_synthetic):
    with pytest.raises(ValueError, match="not seed="):
        tune_seeds(backbone, "refcoco", "prefix", seeds=[0], seed=1, data_dir=tiny_synthetic)
