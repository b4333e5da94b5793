"""Intervals, differences and verdicts of mmprompt.eval.stats."""

import math

import numpy as np
import pytest

from mmprompt.eval import stats as S


def test_t_quantiles_match_tables():
    # two-sided 95 % critical values of Student's t (standard tables)
    for df, expected in [(1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281), (30, 2.0423)]:
        assert S.t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)
    assert S.t_quantile(0.95, 5) == pytest.approx(2.0150, abs=1e-4)


def test_seed_interval_is_the_t_interval():
    est = S.estimate([0.30, 0.32, 0.34], over="seeds")
    # mean 0.32, s = 0.02, half = 4.3027 * 0.02 / sqrt(3)
    assert est.mean == pytest.approx(0.32)
    assert est.half_width == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-5)
    assert (est.n, est.kind) == (3, "seeds")
    assert est.low == pytest.approx(est.mean - est.half_width)
    assert str(est) == "32.0 ± 5.0"
    assert est.format(scale=1, digits=3) == "0.320 ± 0.050"


def test_bootstrap_interval_of_a_proportion_matches_its_standard_error():
    values = np.r_[np.ones(300), np.zeros(700)]  # p = 0.3, n = 1000, s.e. = 0.01449
    est = S.estimate(values)
    assert est.mean == pytest.approx(0.3)
    assert est.half_width == pytest.approx(1.96 * math.sqrt(0.3 * 0.7 / 1000), rel=0.1)
    assert est.kind == "examples" and est.n == 1000
    # fixed seed: the same numbers give the same interval
    assert S.estimate(values) == est
    smooth = np.random.default_rng(3).random(50)
    assert S.estimate(smooth) == S.estimate(smooth)
    assert S.estimate(smooth, seed=1) != S.estimate(smooth)


def test_bootstrap_covers_the_truth_at_about_the_nominal_rate():
    rng = np.random.default_rng(123)
    truth, hits, trials = 0.3, 0, 300
    for _ in range(trials):
        est = S.estimate(rng.random(200) < truth, n_resamples=1000, seed=int(rng.integers(1 << 30)))
        hits += est.low <= truth <= est.high
    # 95 % nominal; binomial s.d. of the rate over 300 trials is ~1.3 points
    assert 0.91 <= hits / trials <= 0.99


def test_seed_interval_covers_the_truth_at_the_nominal_rate():
    rng = np.random.default_rng(7)
    trials = 4000
    draws = rng.normal(0.5, 0.02, size=(trials, 3))
    hits = sum(S.estimate(row, over="seeds").low <= 0.5 <= S.estimate(row, over="seeds").high for row in draws[:1000])
    assert 0.93 <= hits / 1000 <= 0.97
    # a z-interval (no t correction) would cover far less often with 3 seeds
    z_half = 1.96 * draws.std(axis=1, ddof=1) / math.sqrt(3)
    assert np.mean(np.abs(draws.mean(axis=1) - 0.5) <= z_half) < 0.85


def test_paired_difference_is_narrower_than_unpaired_for_correlated_scores():
    rng = np.random.default_rng(0)
    base = rng.random(500) < 0.5
    flip = rng.random(500) < 0.05
    a = base.astype(float)
    b = np.where(flip, 1 - a, a)
    paired = S.difference(a, b)
    unpaired = S.difference(a, b, paired=False)
    assert paired.mean == pytest.approx(unpaired.mean)
    assert paired.half_width < unpaired.half_width / 2


def test_unpaired_seed_difference_uses_welch():
    a, b = [0.50, 0.52, 0.54], [0.40, 0.41, 0.42, 0.43]
    est = S.difference(a, b, paired=False, over="seeds")
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 4
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 3)
    assert est.mean == pytest.approx(np.mean(a) - np.mean(b))
    assert est.half_width == pytest.approx(S.t_quantile(0.975, df) * math.sqrt(va + vb), rel=1e-6)


def test_clear_difference_has_a_winner():
    rng = np.random.default_rng(1)
    a = rng.random(2000) < 0.40
    b = rng.random(2000) < 0.30
    v = S.verdict("prefix", a, "zero-shot", b)
    assert v.winner == "prefix" and not v.smoke
    assert v.diff.low > 0
    assert v.text == f"prefix ahead of zero-shot by {v.diff.mean * 100:.1f} ± {v.diff.half_width * 100:.1f} points"
    flipped = S.verdict("zero-shot", b, "prefix", a)
    assert flipped.winner == "prefix"
    assert flipped.text.startswith("prefix ahead of zero-shot by ")


def test_null_difference_says_no_difference():
    rng = np.random.default_rng(2)
    a = rng.random(300) < 0.5
    b = a.copy()
    b[:6] = ~b[:6]  # a handful of flips, both directions
    v = S.verdict("lora", a, "adapter", b)
    assert v.winner is None
    assert v.diff.low <= 0 <= v.diff.high
    assert v.text.startswith("no difference at this resolution (lora − adapter = ")
    assert v.text.endswith(" points)")


def test_seed_verdict_and_units():
    v = S.verdict("FT", [0.61, 0.63, 0.62], "PT", [0.55, 0.56, 0.54], over="seeds", unit="CIDEr points")
    assert v.winner == "FT" and v.diff.kind == "seeds"
    assert v.text == "FT ahead of PT by 7.0 ± 2.5 CIDEr points"


def test_ci_profile_marks_a_smoke_test():
    v = S.verdict("A", [1, 1, 1, 0], "B", [0, 0, 0, 1], profile="ci")
    assert v.smoke
    assert v.text.startswith("smoke test (ci profile, not a finding): ")
    assert S.verdict("A", [1, 1, 1, 0], "B", [0, 0, 0, 1], profile="gpu").smoke is False


def test_no_negative_zero_in_text():
    v = S.verdict("A", [0.5, 0.5, 0.5], "B", [0.5, 0.5, 0.5], over="seeds")
    assert v.text == "no difference at this resolution (A − B = 0.0 ± 0.0 points)"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: S.estimate([]), "at least 2"),
        (lambda: S.estimate([0.5]), "at least 2"),
        (lambda: S.estimate([0.1, float("nan")]), "non-finite"),
        (lambda: S.estimate([0.1, 0.2], over="runs"), "over must be one of"),
        (lambda: S.estimate([[0.1, 0.2]]), "one-dimensional"),
        (lambda: S.estimate(["a", "b"]), "sequence of numbers"),
        (lambda: S.estimate([0.1, 0.2], confidence=1.0), "confidence"),
        (lambda: S.estimate([0.1, 0.2], n_resamples=10), "n_resamples"),
        (lambda: S.difference([0.1, 0.2, 0.3], [0.1, 0.2]), "same length"),
        (lambda: S.difference([0.1, 0.2], [0.1, float("inf")], paired=False), "non-finite"),
        (lambda: S.verdict("A", [0.1, 0.2], "A", [0.1, 0.2]), "must differ"),
        (lambda: S.verdict("", [0.1, 0.2], "B", [0.1, 0.2]), "name_a"),
        (lambda: S.verdict("A", [], "B", []), "at least 2"),
    ],
)
def test_bad_input_raises_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
