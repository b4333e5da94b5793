"""One tuning run per training seed, and the scores aggregated over the seeds.

>>> runs = tune_seeds(backbone, "refcoco", "prefix", seeds=[0, 1, 2], profile="cpu")
>>> runs.estimate("testA")          # mean over seeds ± 95 % Student-t interval
>>> verdict("prefix", runs.scores("testA"), "finetune", ft.scores("testA"), over="seeds")

Every run follows :func:`mmprompt.experiment.tune.tune`'s protocol (checkpoint selected on validation,
test splits scored); the seeds are the only thing that changes between runs. With one seed the interval is
the bootstrap over examples of that run (an interval over seeds needs two or more).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mmprompt.eval.stats import Estimate, check_seeds, estimate
from mmprompt.experiment.tune import TuneResult, tune


@dataclass
class SeedResults:
    """The :class:`TuneResult` of each seed (in ``seeds`` order) and their aggregate per split."""

    seeds: list[int]
    results: list[TuneResult]

    @property
    def task(self) -> str:
        return self.results[0].task

    @property
    def method(self) -> str:
        return self.results[0].method

    @property
    def metric(self) -> str:
        return self.results[0].metric

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.results[0].metrics)

    def scores(self, split: str | None = None) -> list[float]:
        """The headline metric of ``split`` (default: validation) of every seed's run."""
        split = split or self.splits[0]
        if split not in self.splits:
            raise ValueError(f"split={split!r}: allowed {self.splits}")
        return [float(r.metrics[split][self.metric]) for r in self.results]

    def estimate(self, split: str | None = None) -> Estimate:
        """Mean over seeds with its 95 % t-interval; with a single seed, that run's bootstrap over examples."""
        if len(self.results) == 1:
            return self.results[0].interval(split)
        return estimate(self.scores(split), over="seeds")

    @property
    def estimates(self) -> dict[str, Estimate]:
        """:meth:`estimate` of every scored split."""
        return {s: self.estimate(s) for s in self.splits}

    def row(self) -> dict[str, Any]:
        """A flat record for tables: task, method, seeds, and every split's mean and interval half-width."""
        first = self.results[0]
        out: dict[str, Any] = {"task": self.task, "method": self.method, "seeds": len(self.seeds),
                               "trainable": first.trainable,
                               "trainable_%": 100.0 * first.trainable / max(first.total, 1),
                               "train_time_s": sum(r.train_time_s for r in self.results) / len(self.results),
                               "steps": sum(r.steps for r in self.results) / len(self.results)}
        for split, est in self.estimates.items():
            out[f"{split}_{self.metric}"] = est.mean
            out[f"{split}_{self.metric}_±"] = est.half_width
        return out


def tune_seeds(backbone, task: str, method: str | object = "prefix", *, seeds: Sequence[int] = (0, 1, 2),
               **tune_kwargs: Any) -> SeedResults:
    """:func:`~mmprompt.experiment.tune.tune` once per seed (same arguments otherwise); the runs and their
    aggregate. ``out_dir`` (when given) gets one ``seed<k>`` subdirectory per seed."""
    seeds = check_seeds(seeds)
    if "seed" in tune_kwargs:
        raise ValueError("give seeds=[...] to tune_seeds, not seed=")
    out_dir = tune_kwargs.pop("out_dir", None)
    results = []
    for seed in seeds:
        run_dir = None if out_dir is None else f"{out_dir}/seed{seed}"
        results.append(tune(backbone, task, method, seed=seed, out_dir=run_dir, **tune_kwargs))
    return SeedResults(seeds, results)
