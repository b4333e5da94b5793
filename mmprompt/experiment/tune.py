"""The experiment layer the notebooks call: tune a backbone on a task with a method, score it.

>>> from mmprompt import load_model, tune
>>> backbone = load_model("ofa-nano")
>>> result = tune(backbone, "refcoco", "prefix", profile="ci")
>>> result.score, result.trainable

``tune`` never changes ``backbone.model``: it works on a copy, applies the method, trains it with the one
training loop (best validation checkpoint restored), and scores the validation and test splits.

With ``profile="gpu"`` the recipe depends on the task, the method and the model size
(:func:`mmprompt.experiment.profiles.resolve_profile`): the paper's learning rates, batch sizes (gradient accumulation
up to the effective batch), epochs, label smoothing, warmup, EMA, image resolution, beam size and prompt
length, bf16 autocast, TF32 and DataLoader workers; ``recipe`` overrides any of it. Under ``torchrun`` the
training is data-parallel and every evaluation is sharded across the ranks
(:mod:`mmprompt.eval.distributed`): all ranks return the same result, and only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmprompt.core import env
from mmprompt.core.checks import check_apart, check_int, check_number
from mmprompt.core.modes import training_mode
from mmprompt.data import ensure_synthetic
from mmprompt.data.ofa_files import check_run_files, scored_splits, split_file, write_vqa_submission
from mmprompt.eval.distributed import evaluate_sharded, shared_tempdir
from mmprompt.eval.evaluation import MAIN_METRIC, EvalResult
from mmprompt.eval.stats import Estimate, estimate
from mmprompt.data.tasks import TASKS
from mmprompt.experiment.backbones import Backbone
from mmprompt.experiment.profiles import SPLITS, Profile, budget_overrides, get_profile, named_recipe, \
    resolve_profile
from mmprompt.training import TrainConfig, train
from mmprompt.training.checkpoint import find_checkpoint
from mmprompt.training.distributed import init_distributed, is_main_process
from mmprompt.tuning import FinetuneConfig, apply_method, count_parameters
from mmprompt.tuning.registry import method_spec

logger = logging.getLogger(__name__)

@dataclass
class TuneResult:
    """What one tuning run did and scored. ``metrics`` maps split → metric → value; ``per_example`` maps
    split → the headline metric of every scored example (the data of the intervals, :meth:`interval`);
    ``budget`` states the training budget and how much of it ran (see :func:`resolve_settings`' ``budget``).

    The evaluation protocol: the checkpoint is selected on the validation split (the first of
    ``metrics``; :attr:`score`), the test splits are the reported numbers (:attr:`test_splits`)."""

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
    per_example: dict[str, list[float]] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    model: torch.nn.Module | None = None
    _intervals: dict[str, Estimate] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def metric(self) -> str:
        return MAIN_METRIC[self.task]

    @property
    def score(self) -> float:
        """The task's headline metric on its validation split (what checkpoints are selected on)."""
        return float(self.metrics[SPLITS[self.task][0]][self.metric])

    @property
    def test_splits(self) -> tuple[str, ...]:
        """The scored test splits: the numbers to report."""
        return tuple(s for s in self.metrics if s in SPLITS[self.task][1])

    def interval(self, split: str | None = None) -> Estimate:
        """The headline metric of ``split`` (default: the validation split) with its 95 % bootstrap interval
        over examples (:func:`mmprompt.eval.stats.estimate`)."""
        split = split or SPLITS[self.task][0]
        if split not in self.per_example:
            raise ValueError(f"split={split!r}: no per-example scores; scored splits: {sorted(self.per_example)}")
        if split not in self._intervals:
            self._intervals[split] = estimate(self.per_example[split], over="examples")
        return self._intervals[split]

    def row(self) -> dict[str, Any]:
        """A flat record for tables: task, method, trainable share, time, steps, and every split's main metric
        with the half-width of its 95 % interval (``<split>_<metric>_±``, None below 2 scored examples)."""
        out = {"task": self.task, "method": self.method, "trainable": self.trainable,
               "trainable_%": 100.0 * self.trainable / max(self.total, 1), "train_time_s": self.train_time_s,
               "steps": self.steps}
        for split, m in self.metrics.items():
            out[f"{split}_{self.metric}"] = m[self.metric]
            scored = len(self.per_example.get(split, ())) >= 2
            out[f"{split}_{self.metric}_±"] = self.interval(split).half_width if scored else None
        return out


def resolve_method(method: str | object) -> tuple[str, object | None]:
    """(name, config) from a registered method name (its default config) or a method config object."""
    spec = method_spec(method)
    if not isinstance(method, str):
        return spec.name, method
    return spec.name, (spec.config() if spec.config is not None else None)


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


def _train_config(s: TuneSettings, out_dir: Path, metric: str) -> TrainConfig:
    profile, world_size = s.profile, s.world_size
    return TrainConfig(
        lr=s.lr, max_steps=profile.steps, epochs=profile.epochs,
        batch_size=profile.batch_size, grad_accum=profile.grad_accum(world_size), eval_every=profile.eval_every,
        metric=metric, mode="max", seed=s.seed, out_dir=out_dir, resume=s.resume, save_every=profile.save_every,
        restore_best=profile.eval_every is not None, early_stopping_patience=profile.patience,
        amp=profile.amp, device=profile.device, progress=s.progress, progress_label=s.progress_label or "train",
        log_every=max(1, (profile.steps or 100) // 20),
        label_smoothing=profile.label_smoothing, warmup_ratio=profile.warmup_ratio,
        drop_worst_ratio=profile.drop_worst_ratio, drop_worst_after=profile.drop_worst_after,
        warmup_steps=profile.warmup_steps, ema_decay=profile.ema_decay, num_workers=profile.num_workers,
        # OFA's image-code embeddings (and a backbone's other unused parts) get no gradient: DDP must know
        find_unused_parameters=world_size > 1,
    )


def split_dataset(backbone: Backbone, task: str, data: Path, split: str, profile: Profile, **kwargs: Any):
    """The backbone's dataset over one split of ``task``, read as the profile says (resolution, conventions);
    ``kwargs`` add to or override those options."""
    options = {**backbone.profile_options(task, split, data, profile), **kwargs}
    return backbone.make_dataset(task, split_file(data, task, split), **options)


def _amp(profile: Profile) -> torch.dtype | None:
    """The autocast dtype of evaluation: the profile's AMP on CUDA, none elsewhere."""
    if not (str(profile.device).startswith("cuda") and torch.cuda.is_available()):
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(profile.amp)


@contextlib.contextmanager
def _tf32(enabled: bool):
    """Allow TF32 matmuls and convolutions on CUDA while the block runs (the flags are restored after)."""
    if not (enabled and torch.cuda.is_available()):
        yield
        return
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _named_config(name: str, config: object, profile: Profile) -> object:
    """A method given by name takes the profile's prompt length / finetuning embedding freeze."""
    if method_spec(name).takes_prompt_length:
        return dataclasses.replace(config, length=profile.prompt_length)
    if name == FinetuneConfig.method:
        return dataclasses.replace(config, freeze_token_embeddings=profile.freeze_token_embeddings)
    return config


def _eval_settings(backbone, profile: Profile):
    extra = {"batch_size": profile.eval_batch_size} if profile.eval_batch_size is not None else {}
    if profile.convention == "ofa":
        extra["full_caption_metrics"] = True  # OFA's coco_eval.py: PTB tokenisation (Java), METEOR, SPICE
    return backbone.default_eval_settings(beam_size=profile.beam_size, max_examples=profile.eval_examples,
                                          progress=False, device=profile.device, **extra)


def evaluate_splits(backbone, model: torch.nn.Module, task: str, data: Path, profile: Profile,
                    splits: tuple[str, ...]) -> dict[str, EvalResult]:
    """Score ``model`` on each split of ``task`` with the profile's decoding settings (sharded across the
    ranks under data parallelism)."""
    settings = _eval_settings(backbone, profile)
    return {s: evaluate_sharded(backbone, model, split_dataset(backbone, task, data, s, profile), settings,
                                amp=_amp(profile))
            for s in splits}


def _submit_predicted_only(task: str, data: Path, profile: Profile, scored: dict[str, EvalResult],
                           out_dir: Path | None) -> None:
    """OFA's VQA test split has dummy answers: write its predictions as the challenge's submission JSON
    (in ``out_dir``, else the working directory) and report no accuracy for it."""
    if profile.convention != "ofa" or task != "vqa" or "test" not in scored:
        return
    result = scored["test"]
    path = Path(out_dir or ".") / "vqa_test_submission.json"
    if is_main_process():
        write_vqa_submission(result.predictions, path)
    logger.info("vqa test: %d predictions written to %s (OFA's test answers are dummies: not scored)",
                len(result.predictions), path)
    result.metrics = {MAIN_METRIC[task]: None, "n": len(result.predictions),
                      "submission": str(path)}
    result.per_example = []


@dataclass(frozen=True)
class TuneSettings:
    """One tuning run, resolved and validated once by :func:`resolve_settings` before any work starts."""

    task: str
    method: str
    config: Any  # the method config; None for zero-shot
    profile: Profile  # with the recipe and keyword overrides applied
    data: Path
    val_split: str
    test_splits: tuple[str, ...]  # the scored test splits (empty: validation only)
    seed: int
    lr: float | None  # None for zero-shot
    out_dir: Path | None
    keep_model: bool
    progress: bool
    world_size: int
    budget: str  # "fixed" or "converge" (profiles.BUDGETS)
    resume: bool = False  # continue the run in out_dir from its last/ checkpoint
    progress_label: str = ""  # the training bar's label

    @property
    def trains(self) -> bool:
        return self.config is not None


def resolve_settings(backbone: Backbone, task: str, method: str | object = "prefix", *, profile: str = "ci",
                     data_dir: str | os.PathLike | None = None, seed: int = 0, steps: int | None = None,
                     lr: float | None = None, batch_size: int | None = None, eval_examples: int | None = None,
                     test_splits: bool = True, out_dir: str | os.PathLike | None = None, keep_model: bool = False,
                     progress: bool | str = True, recipe: dict[str, Any] | str | None = None,
                     budget: str = "fixed", resume: bool = False) -> TuneSettings:
    """Check every option of :func:`tune` and resolve the profile, method config, data and splits.

    ``method``: a name from the method registry (:data:`mmprompt.tuning.registry.METHODS`; a prompt method
    given by name takes the profile's prompt length) or a config (e.g. ``PrefixConfig(length=16, depth=3)``).
    ``steps``/``batch_size`` (per process)/``eval_examples`` override the profile; ``lr`` the profile's rate
    for the method; ``recipe`` any other :class:`~mmprompt.experiment.profiles.Profile` field (e.g.
    ``{"epochs": 50, "effective_batch_size": 256, "image_size": 384, "ema_decay": None}``; None sets None) or
    the name of one of :data:`mmprompt.experiment.profiles.RECIPES` (e.g. ``"ofa-refcoco-prefix-script"``).
    With ``keep_model`` the tuned model is returned in the result. ``progress``: show the training bar; a
    non-empty string shows it under that label (default label: ``"<method> on <task>"``).

    ``budget``: ``"fixed"`` trains the profile's steps/epochs; ``"converge"`` trains up to the profile's
    convergence cap and stops early when the validation metric has not improved for ``patience``
    evaluations (:data:`mmprompt.experiment.profiles.CONVERGE`; ``steps``/``recipe`` still override it).
    Either way the best validation checkpoint is restored when the profile validates during training, the
    validation and test splits are scored, and ``result.budget`` states the budget and the steps it took.

    ``out_dir`` keeps the training loop's checkpoints (``last/`` every ``save_every`` steps or at each
    evaluation) and ``metrics.jsonl``. A directory that already holds a run is never replaced: pass
    ``resume=True`` to continue it from ``last/`` (same seed and threads: the same weights and metrics as an
    uninterrupted run), or choose another ``out_dir``. ``out_dir`` may not be, contain or lie inside the
    backbone's model directory.
    """
    _check_task(task)
    _check_out_dir(out_dir, backbone, resume)
    name, config = resolve_method(method)
    if isinstance(recipe, str):
        recipe = named_recipe(recipe)
    if recipe is not None and not isinstance(recipe, dict):
        raise ValueError(f"recipe={recipe!r}: must be None, a recipe name or a dict of profile fields")
    given = {k: v for k, v in dict(steps=steps, batch_size=batch_size, eval_examples=eval_examples).items()
             if v is not None}
    both = sorted(set(given) & set(recipe or {}))
    if both:
        raise ValueError(f"{both} given both as keyword and in recipe={recipe!r}; give each once")
    overrides = {**budget_overrides(profile, budget), **given, **(recipe or {})}
    prof = resolve_profile(profile, task, name, backbone.ofa_size, **overrides)
    if isinstance(method, str) and config is not None:
        config = _named_config(name, config, prof)
    if not isinstance(progress, bool) and not (isinstance(progress, str) and progress.strip()):
        raise ValueError(f"progress={progress!r}: must be True, False or a non-empty label")
    if lr is not None and not check_number("lr", lr) > 0:
        raise ValueError(f"lr={lr!r}: allowed a number > 0")
    data = resolve_data(prof, data_dir)
    val_split, tests = scored_splits(data, task)
    tests = tuple(tests) if test_splits else ()
    check_run_files(data, task, (*(("train",) if config is not None else ()), val_split, *tests))
    world = init_distributed(str(prof.device).startswith("cuda") and torch.cuda.is_available()).world_size
    lr = lr if lr is not None or config is None else prof.lr_for(name)
    if out_dir is None and config is not None and os.environ.get(env.TUNING_WORK_DIR):
        out_dir = Path(os.environ[env.TUNING_WORK_DIR]) / _run_key(task, name, config, prof, data, seed, lr)
        resume = find_checkpoint(out_dir, "last") is not None
        if resume:
            logger.info("continuing the tuning run kept in %s by an earlier attempt of this notebook run", out_dir)
    return TuneSettings(task=task, method=name, config=config, profile=prof, data=data, val_split=val_split,
                        test_splits=tests, seed=seed, lr=lr, out_dir=Path(out_dir) if out_dir is not None else None,
                        keep_model=keep_model, progress=bool(progress), world_size=world, budget=budget, resume=resume,
                        progress_label=progress if isinstance(progress, str) else f"{name} on {task}")


def _run_key(task: str, method: str, config: Any, profile: Profile, data: Path, seed: int, lr: float | None) -> str:
    """A directory name that only the same settings map to."""
    settings = {"task": task, "method": method, "config": dataclasses.asdict(config),
                "profile": dataclasses.asdict(profile), "data": str(data), "seed": seed, "lr": lr}
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{task}-{method}-{digest}"


def _check_out_dir(out_dir: str | os.PathLike | None, backbone: Backbone, resume: bool) -> None:
    """Refuse an ``out_dir`` that would overwrite the model or an earlier run (before any work)."""
    if out_dir is None:
        if resume:
            raise ValueError("resume=True needs out_dir (the directory of the run to continue)")
        return
    source = getattr(backbone, "source", None)
    if source is not None:
        check_apart("out_dir", out_dir, "the model directory", source)
    held = [n for n in ("last", "best") if find_checkpoint(out_dir, n) is not None]
    if held and not resume:
        raise ValueError(f"out_dir={str(out_dir)!r} already holds a tuning run ({', '.join(held)}/); allowed: "
                         "resume=True (--resume) to continue it, or an out_dir without a run")


def tune(backbone: Backbone, task: str, method: str | object = "prefix", **options: Any) -> TuneResult:
    """Tune a copy of ``backbone.model`` on ``task`` with ``method`` and score it.

    ``options`` are the keywords of :func:`resolve_settings` (``profile``, ``data_dir``, ``seed``, ``steps``,
    ``lr``, ``batch_size``, ``eval_examples``, ``test_splits``, ``out_dir``, ``keep_model``, ``progress``,
    ``recipe``, ``budget``, ``resume``); all of them are checked before any work starts.
    """
    settings = resolve_settings(backbone, task, method, **options)
    with _tf32(settings.profile.tf32):
        return run_tuning(backbone, settings)


def run_tuning(backbone: Backbone, s: TuneSettings) -> TuneResult:
    """Train (unless zero-shot) and score a copy of ``backbone.model`` as ``s`` says."""
    torch.manual_seed(s.seed)
    model = copy.deepcopy(backbone.model)
    _set_drop_path(model, s.profile.drop_path_rate)
    if s.trains:
        apply_method(model, s.config)
    counts = count_parameters(model) if s.trains else {"trainable": 0, "total": _n_params(model)}
    start = time.time()
    history, n_steps, spent = _train(backbone, model, s) if s.trains else ([], 0, {})
    train_time = time.time() - start
    model.to(s.profile.device)  # zero-shot: the copy is still where the backbone is; evaluation runs on the device
    model.eval()
    scored = evaluate_splits(backbone, model, s.task, s.data, s.profile, (s.val_split, *s.test_splits))
    _submit_predicted_only(s.task, s.data, s.profile, scored, s.out_dir)
    return TuneResult(
        task=s.task, method=s.method, config=dataclasses.asdict(s.config) if s.trains else {},
        metrics={split: r.metrics for split, r in scored.items()}, trainable=counts["trainable"],
        total=counts["total"], train_time_s=round(train_time, 2), steps=n_steps, history=history,
        predictions=scored[s.val_split].predictions,
        per_example={split: r.per_example for split, r in scored.items()}, budget={"budget": s.budget, **spent},
        seed=s.seed, model=model if s.keep_model else None,
    )


def _train(backbone: Backbone, model: torch.nn.Module,
           s: TuneSettings) -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
    """The training loop on the train split, validated on the validation split; (history, steps, the budget:
    its caps and what ran of it)."""
    prof = s.profile
    train_ds = split_dataset(backbone, s.task, s.data, "train", prof, expand_refs=s.task == "caption")
    val_ds = split_dataset(backbone, s.task, s.data, s.val_split, prof)
    settings = _eval_settings(backbone, prof)
    metric = MAIN_METRIC[s.task]

    def eval_fn(m: torch.nn.Module) -> dict[str, float]:
        return {metric: evaluate_sharded(backbone, m, val_ds, settings, amp=_amp(prof)).score}

    with shared_tempdir(prefix="mmprompt-tune-") as scratch:
        cfg = _train_config(s, s.out_dir or Path(scratch), metric)
        logger.info("%s / %s (%s profile): lr %g, %d x %d accumulated x %d ranks = %d examples per step "
                    "(recipe: %s), %s epochs / %s steps", s.task, s.method, prof.name, cfg.lr, cfg.batch_size,
                    cfg.grad_accum, s.world_size, cfg.batch_size * cfg.grad_accum * s.world_size,
                    prof.effective_batch_size, cfg.epochs, cfg.max_steps)
        result = train(model, train_ds, cfg, collate_fn=train_ds.collater,
                       eval_fn=eval_fn if prof.eval_every else None)
    spent = {"max_steps": cfg.max_steps, "epochs": cfg.epochs, "eval_every": cfg.eval_every,
             "patience": cfg.early_stopping_patience, "steps": result.steps, "best_step": result.best_step,
             "stop_reason": result.stop_reason,
             "examples": result.steps * cfg.batch_size * cfg.grad_accum * s.world_size}
    return result.history, result.steps, spent


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
    check_int("examples", examples, 1, optional=True)
    model = backbone.model if model is None else model
    ds = split_dataset(backbone, task, resolve_data(prof, data_dir), split, prof)
    n = min(len(ds), examples or prof.eval_examples or len(ds))
    pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    loss_fn = Seq2SeqLoss(pad_id=1 if pad is None else int(pad), label_smoothing=0.0)
    device = next(model.parameters()).device
    total = weight = 0.0
    with training_mode(model, False):
        for batch in DataLoader(Subset(ds, range(n)), batch_size=batch_size, collate_fn=ds.collater):
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            tokens = float(batch["target_ids"].ne(loss_fn.pad_id).sum())
            total += float(loss_fn(model, batch)) * tokens
            weight += tokens
    return total / max(weight, 1.0)


def _set_drop_path(model: torch.nn.Module, rate: float | None) -> None:
    """Apply the profile's drop-path rate to an OFA model (other models keep theirs, with a note)."""
    from mmprompt.models.ofa import OFAModel
    from mmprompt.models.ofa.modeling import set_drop_path_rate

    if rate is None:
        return
    if isinstance(model, OFAModel):
        set_drop_path_rate(model, rate)
    else:
        logger.info("drop_path_rate=%g ignored: %s keeps its own", rate, type(model).__name__)


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def results_table(results: list):
    """A pandas DataFrame with one row per result (:meth:`TuneResult.row`, or
    :meth:`mmprompt.experiment.seeds.SeedResults.row`: means and interval half-widths ``<split>_<metric>_±``)."""
    import pandas as pd

    return pd.DataFrame([r.row() for r in results])
