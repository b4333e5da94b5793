"""Intervals for scores and differences, and the one verdict wording of the workbook.

Two kinds of 95 % interval (``confidence`` can change the level):

* ``over="examples"``: a percentile bootstrap over per-example scores (one run, the uncertainty of a
  finite evaluation set), ``n_resamples`` resamples drawn with a fixed ``seed`` so the same numbers
  always give the same interval.
* ``over="seeds"``: a Student-t interval over one score per training seed (the uncertainty of the run
  itself); unpaired differences use Welch's t.

Every interval is **symmetric**: ``low = mean - half_width`` and ``high = mean + half_width``. A bootstrap
percentile interval is widened to the symmetric interval that covers it, so the printed
``mean ± half_width``, ``low``/``high`` and a verdict always say the same thing.

Units: an :class:`Estimate` keeps the unit of its inputs. Scores in this project are fractions
(accuracies in [0, 1], CIDEr-D raw, see :mod:`mmprompt.eval.metrics`), and ``str(estimate)`` prints them
as the paper's tables do, in **points** (x 100, one decimal): an accuracy of 0.282 ± 0.019 prints
``28.2 ± 1.9``. :meth:`Estimate.format` prints any other scale.

A :func:`verdict` compares two systems by the interval of their difference: "A ahead of B by x ± y
points", "B ahead of A by …", or "no difference at this resolution (A − B = x ± y points)"; at the
``ci`` profile the text starts with "smoke test (ci profile, not a finding): ".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Over = Literal["examples", "seeds"]
OVER: tuple[str, ...] = ("examples", "seeds")
SMOKE_PREFIX = "smoke test (ci profile, not a finding): "
SMOKE_PROFILES: tuple[str, ...] = ("ci",)
DEFAULT_RESAMPLES = 4000
DEFAULT_SEED = 0
POINTS = 100.0  # fractions -> points, as the paper's tables print them


@dataclass(frozen=True)
class Estimate:
    """A mean with its symmetric interval ``[low, high]`` from ``n`` values (``kind``: examples or seeds)."""

    mean: float
    low: float
    high: float
    n: int
    kind: str
    confidence: float = 0.95

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0

    def excludes_zero(self) -> bool:
        """True when the interval lies entirely above or entirely below 0."""
        return self.low > 0.0 or self.high < 0.0

    def format(self, scale: float = POINTS, digits: int = 1) -> str:
        """``mean ± half_width`` after multiplying by ``scale`` (default: points, x 100)."""
        return f"{_number(self.mean * scale, digits)} ± {_number(self.half_width * scale, digits)}"

    def __str__(self) -> str:
        return self.format()

    def as_dict(self) -> dict[str, float | int | str]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n,
                "kind": self.kind, "confidence": self.confidence}


@dataclass(frozen=True)
class Verdict:
    """The outcome of comparing A with B: its ``text``, the ``winner`` (None: no difference at this
    resolution), the interval of A − B, and whether it is a ``smoke`` test (ci profile)."""

    text: str
    winner: str | None
    diff: Estimate
    smoke: bool

    def __str__(self) -> str:
        return self.text


# ------------------------------------------------------------------------------------ validation


def _values(values: Sequence[float] | np.ndarray, name: str, minimum: int = 2) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor, without importing torch
        values = values.detach().cpu().numpy()
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a sequence of numbers; got {values!r:.80}") from err
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one score per example or seed); got shape {arr.shape}")
    if len(arr) < minimum:
        raise ValueError(f"{name} needs at least {minimum} values for an interval; got {len(arr)}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if len(bad):
        raise ValueError(f"{name} contains non-finite values (NaN or inf) at positions {bad[:5].tolist()}")
    return arr


def _check_over(over: str) -> None:
    if over not in OVER:
        raise ValueError(f"over must be one of {OVER}; got {over!r}")


def _check_confidence(confidence: float) -> None:
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence must be in [0.5, 1); got {confidence}")


def _check_resamples(n_resamples: int) -> None:
    if not isinstance(n_resamples, int) or n_resamples < 100:
        raise ValueError(f"n_resamples must be an integer >= 100; got {n_resamples!r}")


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """``seeds`` (training seeds of repeated runs) as a list of distinct integers >= 0, else ValueError."""
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or not seeds:
        raise ValueError(f"seeds={seeds!r}: must be a non-empty list of distinct integers >= 0, e.g. [0, 1, 2]")
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0]
    if bad:
        raise ValueError(f"seeds={list(seeds)!r}: {bad} are not integers >= 0")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={list(seeds)!r}: seeds must be distinct")
    return [int(s) for s in seeds]


# ------------------------------------------------------------------------------- Student t


def _t_pdf(x: np.ndarray, df: float) -> np.ndarray:
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return np.exp(log_c - (df + 1) / 2 * np.log1p(x * x / df))


def _t_cdf(t: float, df: float) -> float:
    """P(T <= t) for t >= 0 by Simpson's rule on the density (accurate to ~1e-10 for df >= 1)."""
    if t == 0.0:
        return 0.5
    # integrate in u = atan(x) so heavy tails (df = 1) stay on a finite, smooth interval
    upper = math.atan(t)
    u = np.linspace(0.0, upper, 4001)
    x = np.tan(u)
    f = _t_pdf(x, df) * (1.0 + x * x)
    h = upper / 4000
    integral = h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())
    return 0.5 + float(integral)


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile (0.5 < p < 1) of Student's t with ``df`` > 0 degrees of freedom."""
    if not 0.5 < p < 1.0:
        raise ValueError(f"p must be in (0.5, 1); got {p}")
    if not df > 0:
        raise ValueError(f"df must be > 0; got {df}")
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


# ------------------------------------------------------------------------------- intervals


def _symmetric(mean: float, q_low: float, q_high: float, n: int, kind: str, confidence: float) -> Estimate:
    half = max(mean - q_low, q_high - mean, 0.0)
    return Estimate(mean=mean, low=mean - half, high=mean + half, n=n, kind=kind, confidence=confidence)


def _bootstrap_means(arr: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_resamples`` resamples of ``arr`` (drawn in chunks to bound memory)."""
    n = len(arr)
    chunk = max(1, min(n_resamples, 8_000_000 // n))
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = arr[idx].mean(axis=1)
    return out


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(low), float(high)


def estimate(values: Sequence[float] | np.ndarray, *, over: Over = "examples", confidence: float = 0.95,
             n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> Estimate:
    """Mean of ``values`` with its interval: bootstrap over examples or Student t over seeds."""
    _check_over(over)
    _check_confidence(confidence)
    _check_resamples(n_resamples)
    arr = _values(values, "values")
    mean = float(arr.mean())
    if over == "seeds":
        half = t_quantile((1 + confidence) / 2, len(arr) - 1) * float(arr.std(ddof=1)) / math.sqrt(len(arr))
        return _symmetric(mean, mean - half, mean + half, len(arr), over, confidence)
    means = _bootstrap_means(arr, n_resamples, np.random.default_rng(seed))
    return _symmetric(mean, *_percentiles(means, confidence), len(arr), over, confidence)


def difference(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, paired: bool = True,
               over: Over = "examples", confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES,
               seed: int = DEFAULT_SEED) -> Estimate:
    """Interval of mean(a) − mean(b).

    ``paired``: ``a[i]`` and ``b[i]`` belong to the same example (or seed), so the interval is that of
    the per-item differences (bootstrap over examples, or t over seeds). Unpaired: independent
    bootstrap resamples of each side (examples) or Welch's t (seeds).
    """
    _check_over(over)
    _check_confidence(confidence)
    _check_resamples(n_resamples)
    xa, xb = _values(a, "a"), _values(b, "b")
    if paired:
        if len(xa) != len(xb):
            raise ValueError(f"paired=True needs a and b of the same length (one score per example or "
                             f"seed, in the same order); got {len(xa)} and {len(xb)}")
        return estimate(xa - xb, over=over, confidence=confidence, n_resamples=n_resamples, seed=seed)
    mean = float(xa.mean() - xb.mean())
    n = min(len(xa), len(xb))
    if over == "seeds":
        va, vb = xa.var(ddof=1) / len(xa), xb.var(ddof=1) / len(xb)
        se = math.sqrt(va + vb)
        if se == 0.0:
            return _symmetric(mean, mean, mean, n, over, confidence)
        df = (va + vb) ** 2 / (va**2 / (len(xa) - 1) + vb**2 / (len(xb) - 1))
        half = t_quantile((1 + confidence) / 2, df) * se
        return _symmetric(mean, mean - half, mean + half, n, over, confidence)
    rng = np.random.default_rng(seed)
    diffs = _bootstrap_means(xa, n_resamples, rng) - _bootstrap_means(xb, n_resamples, rng)
    return _symmetric(mean, *_percentiles(diffs, confidence), n, over, confidence)


# ------------------------------------------------------------------------------- verdicts


def _number(x: float, digits: int) -> str:
    text = f"{x:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0.0 else text  # no "-0.0"


def _check_name(name: str, label: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{label} must be a non-empty string; got {name!r}")


def verdict(name_a: str, a: Sequence[float] | np.ndarray, name_b: str, b: Sequence[float] | np.ndarray, *,
            profile: str = "cpu", unit: str = "points", scale: float = POINTS, digits: int = 1,
            paired: bool = True, over: Over = "examples", confidence: float = 0.95,
            n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> Verdict:
    """Compare A with B by the interval of mean(A) − mean(B); the only wording a comparison may print.

    A wins when the interval lies above 0, B when it lies below, else "no difference at this
    resolution". Numbers print as ``x * scale`` with ``digits`` decimals followed by ``unit`` (default:
    fractions printed as points). At a smoke profile (``ci``) the text says it is not a finding.
    """
    _check_name(name_a, "name_a")
    _check_name(name_b, "name_b")
    if name_a == name_b:
        raise ValueError(f"name_a and name_b must differ; both are {name_a!r}")
    if not isinstance(profile, str) or not profile:
        raise ValueError(f"profile must be a non-empty string such as 'ci', 'cpu' or 'gpu'; got {profile!r}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0; got {scale}")
    diff = difference(a, b, paired=paired, over=over, confidence=confidence, n_resamples=n_resamples, seed=seed)
    half = _number(diff.half_width * scale, digits)
    if diff.low > 0.0:
        winner: str | None = name_a
        text = f"{name_a} ahead of {name_b} by {_number(diff.mean * scale, digits)} ± {half} {unit}"
    elif diff.high < 0.0:
        winner = name_b
        text = f"{name_b} ahead of {name_a} by {_number(-diff.mean * scale, digits)} ± {half} {unit}"
    else:
        winner = None
        text = (f"no difference at this resolution ({name_a} − {name_b} = "
                f"{_number(diff.mean * scale, digits)} ± {half} {unit})")
    smoke = profile in SMOKE_PROFILES
    if smoke:
        text = SMOKE_PREFIX + text
    return Verdict(text=text, winner=winner, diff=diff, smoke=smoke)
