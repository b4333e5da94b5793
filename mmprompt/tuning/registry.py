"""The method registry: the one place where tuning methods are listed.

Each method is registered once with its config class (whose ``method`` class attribute is its name), the
function that applies it, its default learning rates (``nano``: the ``ci``/``cpu`` profiles on the nano
checkpoints; ``gpu``: the paper's recipe) and whether a profile's prompt length applies to it. Every list
of method names elsewhere (``tune``'s choices, the CLI, notebook parameter rules, the profiles' learning
rates) is derived from :data:`METHODS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mmprompt.tuning.adapter import AdapterConfig, apply_adapter
from mmprompt.tuning.baselines import BitFitConfig, FinetuneConfig, apply_bitfit, apply_finetune
from mmprompt.tuning.lora import LoRAConfig, apply_lora
from mmprompt.tuning.prefix import PrefixConfig, apply_prefix
from mmprompt.tuning.shallow import ShallowPromptConfig, apply_shallow_prompt

#: The method that trains nothing: the backbone scored as it is.
ZERO_SHOT = "zero-shot"


@dataclass(frozen=True)
class MethodSpec:
    """One tuning method. ``config`` None and ``apply`` None: zero-shot."""

    config: type | None
    apply: Callable[[Any, Any], Any] | None
    lr: Mapping[str, float]  # {"nano": …, "gpu": …}
    takes_prompt_length: bool = False

    @property
    def name(self) -> str:
        return ZERO_SHOT if self.config is None else self.config.method


METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add ``spec`` to :data:`METHODS` (a name or a config class registered twice is an error)."""
    if spec.name in METHODS or any(s.config is spec.config for s in METHODS.values() if s.config is not None):
        raise ValueError(f"method {spec.name!r} is registered already")
    METHODS[spec.name] = spec
    return spec


# Learning rates: nano values were chosen on the synthetic world; gpu values are the paper's (prefix 0.03,
# finetuning 5e-5). BitFit and Adapter: OFA's train_refcoco_{bitfit,adapter}.sh sweep {0.03, 5e-5, 1e-4} and
# which value won is not published, so the largest non-prompt value, 1e-4, is used (UNCONFIRMED); LoRA (not in
# the paper) takes the same.
register_method(MethodSpec(None, None, {}))
register_method(MethodSpec(PrefixConfig, apply_prefix, {"nano": 3e-2, "gpu": 3e-2}, takes_prompt_length=True))
register_method(MethodSpec(ShallowPromptConfig, apply_shallow_prompt, {"nano": 3e-2, "gpu": 3e-2},
                           takes_prompt_length=True))
register_method(MethodSpec(FinetuneConfig, apply_finetune, {"nano": 3e-4, "gpu": 5e-5}))
register_method(MethodSpec(BitFitConfig, apply_bitfit, {"nano": 3e-3, "gpu": 1e-4}))
register_method(MethodSpec(AdapterConfig, apply_adapter, {"nano": 1e-3, "gpu": 1e-4}))
register_method(MethodSpec(LoRAConfig, apply_lora, {"nano": 1e-3, "gpu": 1e-4}))


def method_spec(method: str | object) -> MethodSpec:
    """The spec of a method name or of a method config (instance or class)."""
    if isinstance(method, str):
        if method not in METHODS:
            raise ValueError(f"method={method!r}: allowed {list(METHODS)} or a method config object")
        return METHODS[method]
    cls = method if isinstance(method, type) else type(method)
    for spec in METHODS.values():
        if spec.config is cls:
            return spec
    configs = [s.config.__name__ for s in METHODS.values() if s.config is not None]
    raise ValueError(f"method={method!r}: not a method config; allowed {configs}")


def trained_methods() -> tuple[str, ...]:
    """Every registered method that trains something (all but zero-shot)."""
    return tuple(name for name, spec in METHODS.items() if spec.config is not None)


def learning_rates(kind: str) -> dict[str, float]:
    """``{method: default lr}`` for ``kind`` ``"nano"`` or ``"gpu"``."""
    return {name: spec.lr[kind] for name, spec in METHODS.items() if spec.config is not None}
