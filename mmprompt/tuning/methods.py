"""One entry point for every tuning method: ``apply_method(model, config)`` / ``remove_method(model)``.

The config's type picks the method. Every method freezes what it does not train (BatchNorm running
statistics included, except plain finetuning), so a training loop only needs the parameters with
``requires_grad``; every method is undone exactly by :func:`remove_method`.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from mmprompt.tuning import state as st
from mmprompt.tuning.adapter import AdapterConfig
from mmprompt.tuning.baselines import BitFitConfig, FinetuneConfig
from mmprompt.tuning.lora import LoRAConfig
from mmprompt.tuning.prefix import PrefixConfig
from mmprompt.tuning.registry import method_spec
from mmprompt.tuning.shallow import ShallowPromptConfig

MethodConfig = PrefixConfig | ShallowPromptConfig | FinetuneConfig | BitFitConfig | AdapterConfig | LoRAConfig


def apply_method(model: nn.Module, config: MethodConfig) -> Any:
    """Apply the method described by ``config``; returns its handle (every handle has ``remove()``).

    Prefix → :class:`~mmprompt.tuning.prefix.PrefixModule`; shallow prompt →
    :class:`~mmprompt.tuning.shallow.ShallowPrompt`; the others → :class:`~mmprompt.tuning.state.MethodHandle`.
    """
    spec = method_spec(config)
    if spec.apply is None:
        raise ValueError("zero-shot trains nothing: there is no method to apply")
    return spec.apply(model, config)


def remove_method(model: nn.Module) -> Any:
    """Undo whatever method is applied; returns its config."""
    return st.remove_current(model).config


def method_name(model: nn.Module) -> str | None:
    """The name of the applied method ("prefix", "adapter", ...) or None."""
    state = st.current_method(model)
    return state.name if state else None
