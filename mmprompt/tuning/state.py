"""Bookkeeping shared by every tuning method: one method per model, freezing, and exact undo.

A method records an undo step for every change it makes to the model (requires_grad flags, BatchNorm
modes, hooks, inserted modules, attention implementation); :func:`remove_current` runs them in reverse
order so the model is restored exactly.
"""

from __future__ import annotations

import logging
import types
from dataclasses import dataclass, field
from typing import Any, Callable

import torch.nn as nn
from torch.nn.modules.batchnorm import _NormBase

from mmprompt.core.checks import check_int, check_number

logger = logging.getLogger(__name__)

_STATE_ATTR = "_mmprompt_method"


@dataclass
class MethodState:
    """What one applied method changed, and how to undo it."""

    name: str
    config: Any
    handle: Any = None
    undo: list[Callable[[], None]] = field(default_factory=list)


def current_method(model: nn.Module) -> MethodState | None:
    """The method applied to ``model``, if any."""
    return model.__dict__.get(_STATE_ATTR)


def ensure_free(model: nn.Module, name: str) -> None:
    """Raise if ``model`` already has a method applied (one method per model)."""
    existing = current_method(model)
    if existing is not None:
        raise ValueError(
            f"model already has method {existing.name!r} applied; call remove_method(model) before applying {name!r}"
        )


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the backbone's position tables hold (``max_position_embeddings`` of its config or
    its language model's config), or None when the model does not say."""
    config = getattr(model, "config", None)
    for cfg in (config, getattr(config, "text_config", None)):
        value = getattr(cfg, "max_position_embeddings", None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_prompt_length(model: nn.Module, length: int) -> None:
    """Refuse a prompt longer than the backbone's sequences (before any table is allocated)."""
    limit = max_positions(model)
    if limit is not None and length > limit:
        raise ValueError(f"length={length!r}: longer than the {limit} positions this backbone holds "
                         f"(max_position_embeddings); allowed 1..{limit}")


def begin(model: nn.Module, name: str, config: Any) -> MethodState:
    """Start applying a method; refuses a second method on the same model."""
    ensure_free(model, name)
    state = MethodState(name, config)
    object.__setattr__(model, _STATE_ATTR, state)
    return state


def remove_current(model: nn.Module, expected: str | None = None) -> MethodState:
    """Undo the applied method (optionally checking its name); returns its state."""
    state = current_method(model)
    if state is None:
        raise ValueError("model has no mmprompt tuning method applied; nothing to remove")
    if expected is not None and state.name != expected:
        raise ValueError(f"model has method {state.name!r} applied, not {expected!r}")
    for step in reversed(state.undo):
        step()
    state.undo.clear()
    object.__delattr__(model, _STATE_ATTR)
    logger.info("removed %s from %s", state.name, type(model).__name__)
    return state


def freeze_all_but(model: nn.Module, state: MethodState, keep: Callable[[str, nn.Parameter], bool]) -> None:
    """Set ``requires_grad`` to ``keep(name, param)`` for every parameter; the undo restores each flag."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    for name, param in model.named_parameters():
        param.requires_grad_(bool(keep(name, param)))

    def restore() -> None:
        for param, flag in saved:
            param.requires_grad_(flag)

    state.undo.append(restore)


def _frozen_train(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def freeze_batchnorm(model: nn.Module, state: MethodState) -> int:
    """Keep every BatchNorm-like module (running statistics) in eval mode, even under ``model.train()``.

    Each module's ``train`` is shadowed by an instance method that always selects eval mode, so the
    running mean/var never update, whoever calls ``train()``. The undo removes the shadow and restores
    the mode the module had. Returns the number of modules frozen.
    """
    modules = [m for m in model.modules() if isinstance(m, _NormBase) and m.track_running_stats]
    saved = [(m, m.training) for m in modules]
    for module in modules:
        object.__setattr__(module, "train", types.MethodType(_frozen_train, module))
        module.training = False

    def restore() -> None:
        for module, mode in saved:
            module.__dict__.pop("train", None)
            module.training = mode

    state.undo.append(restore)
    return len(modules)


def add_submodule(model: nn.Module, state: MethodState, name: str, module: nn.Module) -> None:
    """Register ``module`` as a child of ``model`` (so ``model.parameters()`` and ``.to()`` include it)."""
    if hasattr(model, name):
        raise ValueError(f"model already has an attribute {name!r}")
    model.add_module(name, module)
    module.train(model.training)
    state.undo.append(lambda: delattr(model, name))


def add_hook(state: MethodState, handle: Any) -> None:
    """Record a torch hook handle for removal."""
    state.undo.append(handle.remove)


def input_embeddings(model: nn.Module) -> nn.Embedding:
    """The token embedding of a backbone (``get_input_embeddings()`` or the first ``*embed_tokens``)."""
    getter = getattr(model, "get_input_embeddings", None)
    if callable(getter):
        try:
            emb = getter()
        except (NotImplementedError, AttributeError):
            emb = None
        if isinstance(emb, nn.Embedding):
            return emb
    for name, module in model.named_modules():
        if name.endswith("embed_tokens") and isinstance(module, nn.Embedding):
            return module
    raise ValueError(f"cannot find the token embedding of {type(model).__name__}")


class MethodHandle:
    """What ``apply_method`` returns for methods without a module of their own."""

    def __init__(self, model: nn.Module, name: str, modules: dict[str, nn.Module] | None = None) -> None:
        self.model, self.name = model, name
        self.modules = modules or {}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def remove(self) -> None:
        remove_current(self.model, self.name)

    def __repr__(self) -> str:
        return f"MethodHandle({self.name!r}, {type(self.model).__name__}, {len(self.modules)} inserted modules)"


#: How prompt parameters start: N(0, init_std) or from the backbone's token embeddings.
PROMPT_INITS: tuple[str, ...] = ("normal", "vocab")


@dataclass(kw_only=True)
class PromptInit:
    """How the parameters of a prompt (prefix or shallow) start; shared by their configs.

    init: "normal" = N(0, init_std); "vocab" = from the backbone's token embeddings of ``init_token_ids``
    (one id per prompt position; default: drawn uniformly with ``seed``, skipping padding).
    seed: seeds the initialisation (independent of the global RNG).
    """

    init: str = "normal"
    init_std: float = 0.02
    init_token_ids: tuple[int, ...] | None = None
    seed: int = 0

    def _check_init(self, length: int) -> None:
        if self.init not in PROMPT_INITS:
            raise ValueError(f"init={self.init!r}: allowed {PROMPT_INITS}")
        if check_number("init_std", self.init_std) <= 0:
            raise ValueError(f"init_std={self.init_std!r}: allowed a finite number > 0")
        if self.init_token_ids is not None:
            ids = tuple(self.init_token_ids)
            if len(ids) != length or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
                raise ValueError(f"init_token_ids: expected {length} token ids >= 0, got {self.init_token_ids!r}")
            self.init_token_ids = ids
        check_int("seed", self.seed)
