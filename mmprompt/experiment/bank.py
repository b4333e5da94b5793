"""Multi-task prefix tuning in one loop: one frozen backbone, one prompt per task, mixed batches.

>>> result = train_bank(load_model("ofa-nano"), profile="ci")
>>> result.scores            # each task scored with its own prompt routed
>>> result.bank.names        # the prompts, ready to save or to serve a mixed batch

The four tasks' training sets are concatenated and shuffled together; every batch mixes tasks, each row is
routed to its task's prompt (:mod:`mmprompt.tuning.bank`), and the one optimizer step updates only the
prompts whose rows were in the batch, each from its own rows' loss. The budget is the profile's: ``steps``
× the number of tasks steps of ``batch_size`` examples, i.e. as many examples per task as one single-task
run of the profile.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset

from mmprompt.core.checks import check_int
from mmprompt.data import collate_mixed
from mmprompt.data.tasks import TASKS
from mmprompt.eval.distributed import shared_tempdir
from mmprompt.experiment.profiles import SPLITS
from mmprompt.experiment.tune import _train_config, evaluate_splits, resolve_settings, split_dataset
from mmprompt.training import train
from mmprompt.training.losses import Seq2SeqLoss
from mmprompt.tuning import PrefixConfig
from mmprompt.tuning.bank import PromptBank, apply_bank

logger = logging.getLogger(__name__)


@dataclass
class BankResult:
    """What :func:`train_bank` did: the model with its bank, validation scores with and without prompts."""

    model: torch.nn.Module
    bank: PromptBank
    scores: dict[str, float]
    zero_shot: dict[str, float]
    trainable: dict[str, int]
    steps: int
    train_time_s: float
    history: list[dict[str, Any]] = field(default_factory=list)
    predictions: dict[str, list[dict]] = field(default_factory=dict)


def _check_tasks(tasks: Any) -> tuple[str, ...]:
    if isinstance(tasks, str) or not tasks or any(t not in TASKS for t in tasks) or len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks={tasks!r}: a non-empty list of distinct tasks from {TASKS}")
    return tuple(tasks)


class RoutedLoss:
    """``loss_fn(model, batch)`` of a mixed batch: each row routed to its task's prompt."""

    def __init__(self, bank: PromptBank, pad_id: int, label_smoothing: float) -> None:
        self.bank, self.loss = bank, Seq2SeqLoss(pad_id, label_smoothing)

    def __call__(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        with self.bank.route(batch["tasks"]):
            return self.loss(model, batch)


def train_bank(backbone, tasks: tuple[str, ...] | list[str] = TASKS, *, profile: str = "ci", length: int | None = None,
               seed: int = 0, steps: int | None = None, lr: float | None = None,
               data_dir: str | os.PathLike | None = None, zero_shot: bool = True,
               progress: bool = True) -> BankResult:
    """Train one prompt per task on a copy of ``backbone.model`` in one loop of mixed batches (see the module
    docstring) and score each task's validation split with its prompt (and, with ``zero_shot``, without)."""
    tasks = _check_tasks(tasks)
    config = PrefixConfig(length=length, seed=seed) if length is not None else "prefix"
    first = resolve_settings(backbone, tasks[0], config, profile=profile, data_dir=data_dir, seed=seed, steps=steps,
                             lr=lr, test_splits=False, progress=progress)  # checks every option first
    prof, data = first.profile, first.data
    torch.manual_seed(seed)
    model = copy.deepcopy(backbone.model)
    bank = apply_bank(model)
    for i, task in enumerate(tasks):
        bank.add(task, dataclasses.replace(first.config, seed=seed + i))
    train_ds = ConcatDataset([split_dataset(backbone, t, data, "train", prof, expand_refs=t == "caption")
                              for t in tasks])
    total_steps = (prof.steps or 100) * len(tasks)
    pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    loss_fn = RoutedLoss(bank, 1 if pad is None else int(pad), prof.label_smoothing)
    start = time.time()
    with shared_tempdir(prefix="mmprompt-bank-") as scratch:
        cfg = _train_config(first, Path(scratch), "loss")
        cfg = dataclasses.replace(cfg, max_steps=total_steps, epochs=None, eval_every=None, restore_best=False,
                                  log_every=max(1, total_steps // 20))
        result = train(model, train_ds, cfg, loss_fn=loss_fn, collate_fn=collate_mixed)
    train_time = time.time() - start
    model.eval()
    scores, zero, predictions = {}, {}, {}
    for task in tasks:
        val = (SPLITS[task][0],)
        with bank.route(task):
            scored = evaluate_splits(backbone, model, task, data, prof, val)[val[0]]
        scores[task], predictions[task] = scored.score, scored.predictions
        if zero_shot:  # no route: the plain backbone
            zero[task] = evaluate_splits(backbone, model, task, data, prof, val)[val[0]].score
    trainable = {t: sum(p.numel() for p in bank.prompt(t).parameters()) for t in tasks}
    logger.info("prompt bank %s: %d steps in %.1f s; scores %s", list(tasks), result.steps, train_time, scores)
    return BankResult(model, bank, scores, zero, trainable, result.steps, round(train_time, 2), result.history,
                      predictions)


def validation_datasets(backbone, tasks: tuple[str, ...] | list[str] = TASKS, *, profile: str = "ci",
                        data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Each task's validation ``TaskDataset`` at the profile's settings (what :func:`train_bank` scores)."""
    tasks = _check_tasks(tasks)
    first = resolve_settings(backbone, tasks[0], "zero-shot", profile=profile, data_dir=data_dir, test_splits=False)
    return {t: split_dataset(backbone, t, first.data, SPLITS[t][0], first.profile) for t in tasks}


def mixed_samples(datasets: dict[str, Any], per_task: int = 2) -> list[dict]:
    """The first ``per_task`` items of every dataset, the tasks alternating (item k of each task in turn)."""
    check_int("per_task", per_task, 1)
    short = {t: len(ds) for t, ds in datasets.items() if len(ds) < per_task}
    if short:
        raise ValueError(f"per_task={per_task}: datasets {short} have fewer examples")
    return [ds[k] for k in range(per_task) for ds in datasets.values()]
