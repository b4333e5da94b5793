"""Exponential moving average of the trainable parameters (OFA uses decay 0.9999 for VQA)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

__all__ = ["EMA"]


class EMA:
    """fp32 shadow copies updated as ``ema = decay * ema + (1 - decay) * param`` per step."""

    def __init__(self, params: Sequence[torch.Tensor], decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay={decay!r} is invalid; allowed: (0, 1)")
        self.decay = decay
        self.shadow = [p.detach().float().clone() for p in params]

    @torch.no_grad()
    def update(self, params: Sequence[torch.Tensor]) -> None:
        """Move every shadow tensor towards its parameter by ``1 - decay``."""
        for s, p in zip(self.shadow, params, strict=True):
            s.mul_(self.decay).add_(p.detach().float(), alpha=1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, params: Sequence[torch.Tensor]) -> None:
        """Overwrite the parameters with the averaged values."""
        for s, p in zip(self.shadow, params, strict=True):
            p.copy_(s)

    @contextmanager
    def swapped(self, params: Sequence[torch.Tensor]) -> Iterator[None]:
        """Temporarily put the averaged values into ``params`` (restored on exit)."""
        backup = [p.detach().clone() for p in params]
        self.copy_to(params)
        try:
            yield
        finally:
            with torch.no_grad():
                for b, p in zip(backup, params, strict=True):
                    p.copy_(b)

    def load(self, tensors: Sequence[torch.Tensor]) -> None:
        """Replace the shadow values (e.g. from a checkpoint)."""
        if len(tensors) != len(self.shadow):
            raise ValueError(f"EMA state has {len(tensors)} tensors; expected {len(self.shadow)}")
        for s, t in zip(self.shadow, tensors, strict=True):
            s.copy_(t)
