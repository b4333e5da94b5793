"""Activation functions by config name (``OFAConfig.activation_function``), in the manner of
transformers' ``ACT2FN`` but without importing transformers."""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F

ACT2FN: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "relu": F.relu,
    "gelu_new": partial(F.gelu, approximate="tanh"),
    "silu": F.silu,
    "tanh": torch.tanh,
}
