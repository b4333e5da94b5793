"""Temporarily switching a module between training and evaluation mode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch.nn as nn


@contextmanager
def training_mode(module: nn.Module, mode: bool) -> Iterator[nn.Module]:
    """Put ``module`` in training (``True``) or evaluation (``False``) mode for the block; restore its mode
    after, also when the block raises."""
    was_training = module.training
    module.train(mode)
    try:
        yield module
    finally:
        module.train(was_training)
