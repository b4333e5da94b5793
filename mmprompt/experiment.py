"""The experiment layer the notebooks call: tune a backbone on a task with a method, score it.

>>> from mmprompt import load_model, tune
>>> backbone = load_model("ofa-nano")
>>> result = tune(backbone, "refcoco", "prefix", profile="ci")
>>> result.score, result.trainable

``tune`` never changes ``backbone.model``: it works on a copy, applies the method, trains it with the one
training loop (best validation checkpoint restored), and scores the validation and test splits.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmprompt.data import ensure_synthetic, split_path
from mmprompt.evaluation import MAIN_METRIC, EvalResult
from mmprompt.profiles import SPLITS, TASKS, Profile, get_profile
from mmprompt.train import TrainConfig, train
from mmprompt.tuning import (
    AdapterConfig,
    BitFitConfig,
    FinetuneConfig,
    LoRAConfig,
    PrefixConfig,
    ShallowPromptConfig,
    apply_method,
    count_parameters,
)

logger = logging.getLogger(__name__)

#: Method names accepted by :func:`tune` and their config classes (None: no training).
METHODS: dict[str, type | None] = {
    "zero-shot": None,
    "prefix": PrefixConfig,
    "shallow": ShallowPromptConfig,
    "finetune": FinetuneConfig,
    "bitfit": BitFitConfig,
    "adapter": AdapterConfig,
    "lora": LoRAConfig,
}
_FAMILY = {cls: name for name, cls in METHODS.items() if cls is not None}


@dataclass
class TuneResult:
    """What one tuning run did and scored. ``metrics`` maps split → metric → value."""

    task: str
    method: str
    config: dict[str, Any]
    metrics: dict[str, dict[str, Any]]
    trainable: int
    total: int
    train_time_s: float
    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    model: torch.nn.Module | None = None

    @property
    def metric(self) -> str:
        return MAIN_METRIC[self.task]

    @property
    def score(self) -> float:
        """The task's headline metric on its validation split."""
        return float(self.metrics[SPLITS[self.task][0]][self.metric])

    def row(self) -> dict[str, Any]:
        """A flat record for tables: task, method, trainable share, time and every split's main metric."""
        out = {"task": self.task, "method": self.method, "trainable": self.trainable,
               "trainable_%": 100.0 * self.trainable / max(self.total, 1), "train_time_s": self.train_time_s}
        out.update({f"{split}_{self.metric}": m[self.metric] for split, m in self.metrics.items()})
        return out


def resolve_method(method: str | object) -> tuple[str, object | None]:
    """(name, config) from a method name (default config) or a method config object."""
    if isinstance(method, str):
        if method not in METHODS:
            raise ValueError(f"method={method!r}: allowed {sorted(METHODS)} or a method config object")
        cls = METHODS[method]
        return method, (cls() if cls is not None else None)
    name = _FAMILY.get(type(method))
    if name is None:
        raise ValueError(f"method={method!r}: not a method config; allowed {[c.__name__ for c in _FAMILY]}")
    return name, method


def resolve_data(profile: Profile, data_dir: str | os.PathLike | None) -> Path:
    """The data directory: ``data_dir`` when given, else the profile's synthetic splits (generated once)."""
    if data_dir is not None:
        path = Path(data_dir)
        if not path.is_dir():
            raise FileNotFoundError(f"data_dir={str(path)!r}: no such directory")
        return path
    if profile.data_profile is None:
        raise ValueError(f"profile={profile.name!r} needs data_dir (real data in OFA's TSV layout)")
    return ensure_synthetic(profile.data_profile)


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task={task!r}: allowed {TASKS}")


def _train_config(profile: Profile, name: str, lr: float | None, seed: int, out_dir: Path | None,
                  metric: str, progress: bool) -> TrainConfig:
    return TrainConfig(
        lr=lr if lr is not None else profile.lr_for(name), max_steps=profile.steps, epochs=profile.epochs,
        batch_size=profile.batch_size, eval_every=profile.eval_every, metric=metric, mode="max", seed=seed,
        out_dir=out_dir, restore_best=profile.eval_every is not None, amp=profile.amp,
        device=profile.device, progress=progress, log_every=max(1, (profile.steps or 100) // 20),
    )


def evaluate_splits(backbone, model: torch.nn.Module, task: str, data: Path, profile: Profile,
                    splits: tuple[str, ...]) -> dict[str, EvalResult]:
    """Score ``model`` on each split of ``task`` with the profile's decoding settings."""
    settings = backbone.default_eval_settings(beam_size=profile.beam_size, max_examples=profile.eval_examples,
                                              progress=False, device=profile.device)
    return {s: backbone.evaluate(backbone.make_dataset(task, split_path(data, task, s)), settings, model=model)
            for s in splits}


def tune(backbone, task: str, method: str | object = "prefix", *, profile: str = "ci",
         data_dir: str | os.PathLike | None = None, seed: int = 0, steps: int | None = None,
         lr: float | None = None, batch_size: int | None = None, eval_examples: int | None = None,
         test_splits: bool = True, out_dir: str | os.PathLike | None = None, keep_model: bool = False,
         progress: bool = True) -> TuneResult:
    """Tune a copy of ``backbone.model`` on ``task`` with ``method`` and score it.

    ``method``: a name from :data:`METHODS` or a config (e.g. ``PrefixConfig(length=16, depth=3)``).
    ``steps``/``batch_size``/``eval_examples`` override the profile; ``lr`` the profile's rate for the
    method family. With ``keep_model`` the tuned model is returned in the result.
    """
    _check_task(task)
    name, config = resolve_method(method)
    prof = get_profile(profile, steps=steps, batch_size=batch_size, eval_examples=eval_examples)
    if lr is not None and not lr > 0:
        raise ValueError(f"lr={lr!r}: must be > 0")
    data = resolve_data(prof, data_dir)
    val_split, tests = SPLITS[task]
    torch.manual_seed(seed)
    model = copy.deepcopy(backbone.model)
    if config is not None:
        apply_method(model, config)
    counts = count_parameters(model) if config is not None else {"trainable": 0, "total": _n_params(model)}
    start, history, n_steps = time.time(), [], 0
    if config is not None:
        train_ds = backbone.make_dataset(task, split_path(data, task, "train"), expand_refs=task == "caption")
        val_ds = backbone.make_dataset(task, split_path(data, task, val_split))
        settings = backbone.default_eval_settings(beam_size=prof.beam_size, max_examples=prof.eval_examples,
                                                  progress=False, device=prof.device)
        metric = MAIN_METRIC[task]

        def eval_fn(m: torch.nn.Module) -> dict[str, float]:
            return {metric: backbone.evaluate(val_ds, settings, model=m).score}

        with tempfile.TemporaryDirectory(prefix="mmprompt-tune-") as scratch:
            cfg = _train_config(prof, name, lr, seed, Path(out_dir or scratch), metric, progress)
            result = train(model, train_ds, cfg, collate_fn=train_ds.collater,
                           eval_fn=eval_fn if prof.eval_every else None)
        history, n_steps = result.history, result.steps
    train_time = time.time() - start
    model.eval()
    scored = evaluate_splits(backbone, model, task, data, prof, (val_split, *tests) if test_splits else (val_split,))
    return TuneResult(
        task=task, method=name, config=dataclasses.asdict(config) if config is not None else {},
        metrics={s: r.metrics for s, r in scored.items()}, trainable=counts["trainable"], total=counts["total"],
        train_time_s=round(train_time, 2), steps=n_steps, history=history,
        predictions=scored[val_split].predictions, model=model if keep_model else None,
    )


@torch.no_grad()
def heldout_loss(backbone, model: torch.nn.Module | None, task: str, *, profile: str = "ci",
                 data_dir: str | os.PathLike | None = None, split: str | None = None,
                 examples: int | None = None, batch_size: int = 16) -> float:
    """Mean teacher-forced token cross-entropy (no label smoothing) of ``model`` (default: the backbone's)
    on the first ``examples`` (default: the profile's ``eval_examples``) of ``split`` (default: the task's
    validation split). Deterministic: the same examples every call, so before/after comparisons are fair.
    """
    from torch.utils.data import DataLoader, Subset

    from mmprompt.training.losses import Seq2SeqLoss

    _check_task(task)
    prof = get_profile(profile)
    split = split or SPLITS[task][0]
    if examples is not None and (isinstance(examples, bool) or not isinstance(examples, int) or examples < 1):
        raise ValueError(f"examples={examples!r}: must be None or an int >= 1")
    model = backbone.model if model is None else model
    ds = backbone.make_dataset(task, split_path(resolve_data(prof, data_dir), task, split))
    n = min(len(ds), examples or prof.eval_examples or len(ds))
    pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    loss_fn = Seq2SeqLoss(pad_id=1 if pad is None else int(pad), label_smoothing=0.0)
    was_training = model.training
    model.eval()
    total = weight = 0.0
    try:
        for batch in DataLoader(Subset(ds, range(n)), batch_size=batch_size, collate_fn=ds.collater):
            batch = {k: v.to(prof.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            tokens = float(batch["target_ids"].ne(loss_fn.pad_id).sum())
            total += float(loss_fn(model, batch)) * tokens
            weight += tokens
    finally:
        model.train(was_training)
    return total / max(weight, 1.0)


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def results_table(results: list[TuneResult]):
    """A pandas DataFrame with one row per result (see :meth:`TuneResult.row`)."""
    import pandas as pd

    return pd.DataFrame([r.row() for r in results])
