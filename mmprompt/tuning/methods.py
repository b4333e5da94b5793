"""One entry point for every tuning method: ``apply_method(model, config)`` / ``remove_method(model)``.

The config's type picks the method. Every method freezes what it does not train (BatchNorm running
statistics included, except plain finetuning), so a training loop only needs the parameters with
``requires_grad``; every method is undone exactly by :func:`remove_method`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

from mmprompt.tuning import state as st
from mmprompt.tuning.adapter import AdapterConfig, apply_adapter
from mmprompt.tuning.baselines import BitFitConfig, FinetuneConfig, apply_bitfit, apply_finetune
from mmprompt.tuning.lora import LoRAConfig, apply_lora
from mmprompt.tuning.prefix import PrefixConfig, apply_prefix
from mmprompt.tuning.shallow import ShallowPromptConfig, apply_shallow_prompt

MethodConfig = PrefixConfig | ShallowPromptConfig | FinetuneConfig | BitFitConfig | AdapterConfig | LoRAConfig

_APPLY: dict[type, Callable[[nn.Module, Any], Any]] = {
    PrefixConfig: apply_prefix,
    ShallowPromptConfig: apply_shallow_prompt,
    FinetuneConfig: apply_finetune,
    BitFitConfig: apply_bitfit,
    AdapterConfig: apply_adapter,
    LoRAConfig: apply_lora,
}


def apply_method(model: nn.Module, config: MethodConfig) -> Any:
    """Apply the method described by ``config``; returns its handle (every handle has ``remove()``).

    Prefix → :class:`~mmprompt.tuning.prefix.PrefixModule`; shallow prompt →
    :class:`~mmprompt.tuning.shallow.ShallowPrompt`; the others → :class:`~mmprompt.tuning.state.MethodHandle`.
    """
    apply = _APPLY.get(type(config))
    if apply is None:
        allowed = ", ".join(t.__name__ for t in _APPLY)
        raise ValueError(f"config of type {type(config).__name__} names no tuning method; allowed: {allowed}")
    return apply(model, config)


def remove_method(model: nn.Module) -> Any:
    """Undo whatever method is applied; returns its config."""
    return st.remove_current(model).config


def method_name(model: nn.Module) -> str | None:
    """The name of the applied method ("prefix", "adapter", ...) or None."""
    state = st.current_method(model)
    return state.name if state else None
