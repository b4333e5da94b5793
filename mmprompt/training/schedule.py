"""Learning-rate schedules: linear warmup, then polynomial decay (OFA/fairseq) or constant."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR

from .config import TrainConfig

__all__ = ["build_scheduler", "lr_at", "lr_multiplier"]


def lr_multiplier(step: int, *, total_steps: int, warmup_steps: int, schedule: str = "polynomial",
                  power: float = 1.0, end_ratio: float = 0.0) -> float:
    """Factor on the peak lr for the optimizer step with 0-based index ``step``.

    Warmup: ``(step + 1) / warmup_steps`` for ``step < warmup_steps`` (the first step already
    moves, the last warmup step runs at the peak). Polynomial: ``end + (1 - end) *
    ((total - step) / (total - warmup)) ** power``, i.e. the peak at the end of warmup and
    ``end_ratio`` at ``step == total_steps``; ``power=1`` is a linear decay. Constant: 1.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule != "polynomial":
        raise ValueError(f"schedule={schedule!r} is invalid; allowed: 'polynomial' | 'constant'")
    span = max(total_steps - warmup_steps, 1)
    remaining = min(max((total_steps - step) / span, 0.0), 1.0)
    return end_ratio + (1.0 - end_ratio) * remaining**power


def lr_at(step: int, config: TrainConfig, total_steps: int) -> float:
    """Learning rate of the optimizer step with 0-based index ``step`` in a ``total_steps`` run."""
    return config.lr * lr_multiplier(
        step, total_steps=total_steps, warmup_steps=config.warmup_for(total_steps),
        schedule=config.schedule, power=config.power, end_ratio=config.end_lr / config.lr)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                    total_steps: int) -> LambdaLR:
    """A ``LambdaLR`` giving :func:`lr_at`; call ``.step()`` once after every optimizer step."""
    warmup = config.warmup_for(total_steps)
    schedule, power, end_ratio = config.schedule, config.power, config.end_lr / config.lr

    def factor(step: int) -> float:
        return lr_multiplier(step, total_steps=total_steps, warmup_steps=warmup,
                             schedule=schedule, power=power, end_ratio=end_ratio)

    return LambdaLR(optimizer, factor)
