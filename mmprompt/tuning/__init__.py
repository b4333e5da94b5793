"""Tuning methods for BART-family encoder-decoders: prefix tuning (the paper) and its baselines.

Public names are loaded lazily, so importing the package stays light; ``mmprompt.tuning.hf``, which
registers the prefix attention functions with transformers, is imported only when a prefix is applied to a
transformers model (an OFA model never imports transformers).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "mmprompt.tuning.adapter": ("AdapterConfig", "apply_adapter"),
    "mmprompt.tuning.bank": ("PromptBank", "apply_bank", "bank_of", "remove_bank"),
    "mmprompt.tuning.baselines": ("BitFitConfig", "FinetuneConfig", "apply_bitfit", "apply_finetune"),
    "mmprompt.tuning.export": ("fingerprint", "load_prompt", "save_prompt"),
    "mmprompt.tuning.lora": ("LoRAConfig", "apply_lora"),
    "mmprompt.tuning.methods": ("apply_method", "method_name", "remove_method"),
    "mmprompt.tuning.params": ("count_parameters", "format_parameter_table"),
    "mmprompt.tuning.prefix": (
        "PrefixConfig", "PrefixModule", "apply_prefix", "fold", "prefix_module", "remove_prefix",
    ),
    "mmprompt.tuning.shallow": ("ShallowPromptConfig", "apply_shallow_prompt", "remove_shallow_prompt"),
    "mmprompt.tuning.sites": ("SITE_KINDS", "discover_sites"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'mmprompt.tuning' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
