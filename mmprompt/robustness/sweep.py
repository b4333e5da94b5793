"""Task metrics of tuned models under FGSM (the paper's Section 4.3 / Figure 3 study).

:func:`evaluate_under_attack` decodes a task's validation examples exactly like
:func:`mmprompt.eval.evaluation.evaluate`, except that every batch's encoder inputs are first perturbed by an
attack (:class:`mmprompt.robustness.attack.FGSM`) computed on that batch; :func:`robustness_sweep` runs
:func:`mmprompt.robustness.attack.epsilon_sweep` over several tuned models, giving rows for
:func:`mmprompt.robustness.attack.plot_sweep` / :func:`~mmprompt.robustness.attack.sweep_table`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from mmprompt.core.modes import training_mode
from mmprompt.eval import metrics as task_metrics
from mmprompt.eval.evaluation import MAIN_METRIC, PREDICTORS
from mmprompt.experiment.tune import resolve_data, split_dataset
from mmprompt.data.tasks import TASKS
from mmprompt.experiment.profiles import SPLITS, get_profile
from mmprompt.robustness.attack import attacked, epsilon_sweep
from mmprompt.training.losses import Seq2SeqLoss

__all__ = ["evaluate_under_attack", "robustness_sweep"]

logger = logging.getLogger(__name__)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def evaluate_under_attack(backbone, model: torch.nn.Module, task: str, attack: Callable | None = None, *,
                          profile: str = "ci", data_dir: str | os.PathLike | None = None,
                          split: str | None = None, examples: int | None = None) -> dict[str, float]:
    """Metrics of ``model`` on ``split`` (default: the task's validation split; the first ``examples``,
    default the profile's ``eval_examples``) with ``attack`` applied per batch (None: clean inputs): the
    task's metrics (``n`` left out) plus ``loss``, the teacher-forced token cross-entropy (no label
    smoothing) of the gold targets on the same (attacked) inputs.

    OFA backbones only: the attack hooks the OFA encoder's image projection and token embeddings.
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r}: allowed {TASKS}")
    prof = get_profile(profile)
    split = split or SPLITS[task][0]
    dataset = split_dataset(backbone, task, resolve_data(prof, data_dir), split, prof)
    settings = backbone.default_eval_settings(beam_size=prof.beam_size, progress=False,
                                              device=next(model.parameters()).device)
    n = min(len(dataset), examples or prof.eval_examples or len(dataset))
    loader = DataLoader(Subset(dataset, range(n)), batch_size=settings.batch_size, collate_fn=dataset.collater)
    device = next(model.parameters()).device  # where the (tuned) model is
    loss_fn = Seq2SeqLoss(pad_id=1, label_smoothing=0.0)
    preds: list[Any] = []
    refs: list[Any] = []
    loss_sum = tokens = 0.0
    with training_mode(model, False):
        for batch in loader:
            batch = _to_device(batch, device)
            with attacked(model, batch, attack), torch.no_grad():
                preds += PREDICTORS[task](model, batch, dataset, settings)
                n_tokens = float(batch["target_ids"].ne(loss_fn.pad_id).sum())
                loss_sum += float(loss_fn(model, batch)) * n_tokens
                tokens += n_tokens
            refs += [r["box"] for r in batch["refs"]] if task == "refcoco" else list(batch["refs"])
    options: dict[str, Any] = {}
    if task == "refcoco":
        preds = [p if p is not None else [0.0, 0.0, 0.0, 0.0] for p in preds]
    if task == "caption":
        options = {"tokenizer": "python", "meteor": False, "spice": False}
    scores = task_metrics.score(task, preds, refs, **options)
    out = {k: float(v) for k, v in scores.items()
           if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and k != "n"}
    out["loss"] = loss_sum / max(tokens, 1.0)
    return out


def robustness_sweep(backbone, models: Mapping[str, torch.nn.Module], task: str, epsilons: Sequence[float],
                     spaces: Sequence[str] = ("embeds",), *, profile: str = "ci",
                     data_dir: str | os.PathLike | None = None, split: str | None = None,
                     examples: int | None = None, progress: bool = False) -> list[dict[str, Any]]:
    """FGSM ε-sweep of every model (label -> tuned model): rows ``{"method", "space", "epsilon", metric...}``
    (ε = 0 is the clean score). Everything is validated before the first evaluation."""
    if not isinstance(models, Mapping) or not models:
        raise ValueError(f"models={models!r}: expected a non-empty mapping label -> model")
    for label, model in models.items():
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"models[{label!r}] is {type(model).__name__}; expected a model "
                             "(tune(..., keep_model=True).model)")
    if task not in TASKS:
        raise ValueError(f"task={task!r}: allowed {TASKS}")
    get_profile(profile)
    rows: list[dict[str, Any]] = []
    for label, model in models.items():
        def evaluate(attack, model=model):
            return evaluate_under_attack(backbone, model, task, attack, profile=profile, data_dir=data_dir,
                                         split=split, examples=examples)

        rows += epsilon_sweep(evaluate, epsilons, spaces, method=label, progress=progress)
        logger.info("robustness %s on %s: %s", label, task,
                    [(r["space"], r["epsilon"], r.get(MAIN_METRIC[task])) for r in rows if r["method"] == label])
    return rows
