"""Which parameters train, what a checkpoint stores of the model, and loading it back."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

from .checkpoint import read_checkpoint

__all__ = ["ParamsLike", "StateDictFn", "LoadStateDictFn", "apply_buffers", "apply_weights",
           "load_weights", "named_trainable", "persistent_buffers", "weights_to_save"]

#: What ``train(params=...)`` accepts: a module (its ``requires_grad`` parameters), parameters,
#: or optimizer parameter groups (dicts with a ``"params"`` list and per-group options).
ParamsLike = Union[nn.Module, Iterable[torch.Tensor], Iterable[dict[str, Any]]]
StateDictFn = Callable[[nn.Module], Mapping[str, torch.Tensor]]
LoadStateDictFn = Callable[[nn.Module, Mapping[str, torch.Tensor]], Any]


def named_trainable(model: nn.Module, params: ParamsLike | None = None,
                    ) -> tuple[list[tuple[str, nn.Parameter]], list[dict[str, Any]] | None]:
    """Trainable ``(name, parameter)`` pairs and, if ``params`` were groups, the groups.

    Names are the parameter's name inside ``model`` when it lives there, else its name inside
    the ``params`` module, else ``params.<i>``. Shared parameters appear once.
    """
    in_model = {id(p): n for n, p in model.named_parameters()}
    groups: list[dict[str, Any]] | None = None
    if params is None:
        found = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    elif isinstance(params, nn.Module):
        found = [(in_model.get(id(p), n), p) for n, p in params.named_parameters()
                 if p.requires_grad]
    else:
        items = list(params)
        if items and all(isinstance(g, dict) for g in items):
            groups = [dict(g, params=list(g["params"])) for g in items]
            items = [p for g in groups for p in g["params"]]
        found = []
        for i, p in enumerate(items):
            if not isinstance(p, torch.Tensor):
                raise ValueError(f"params[{i}] is a {type(p).__name__}; allowed: a module, "
                                 "tensors, or parameter-group dicts")
            if not p.requires_grad:
                raise ValueError(f"params[{i}] (shape {tuple(p.shape)}) has requires_grad=False; "
                                 "pass only trainable parameters")
            found.append((in_model.get(id(p), f"params.{i}"), p))
    named: list[tuple[str, nn.Parameter]] = []
    seen: set[int] = set()
    for name, p in found:
        if id(p) in seen:
            continue
        if not p.is_floating_point():
            raise ValueError(f"trainable parameter {name!r} has dtype {p.dtype}; allowed: float")
        seen.add(id(p))
        named.append((name, p))
    if not named:
        raise ValueError("params/model has no parameter with requires_grad=True; the tuning "
                         "method must leave something trainable")
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        raise ValueError(f"trainable parameter names collide: {sorted(names)}")
    return named, groups


def persistent_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's buffers that belong to its state dict (e.g. BatchNorm running stats)."""
    keys = set(model.state_dict(keep_vars=True))
    return {n: b for n, b in model.named_buffers() if n in keys}


def weights_to_save(model: nn.Module, named: list[tuple[str, nn.Parameter]], *, full: bool,
                    state_dict_fn: StateDictFn | None) -> dict[str, torch.Tensor]:
    """Tensors for ``weights.safetensors``: the hook's dict, the full state, or trainables."""
    if state_dict_fn is not None:
        return dict(state_dict_fn(model))
    if full:
        out = dict(model.state_dict())
        out.update({n: p for n, p in named if n not in out})
        return out
    return {n: p for n, p in named}


@torch.no_grad()
def apply_buffers(model: nn.Module, buffers: Mapping[str, torch.Tensor]) -> None:
    """Copy saved buffers into the model (names must exist)."""
    own = dict(model.named_buffers())
    unknown = sorted(set(buffers) - set(own))
    if unknown:
        raise ValueError(f"checkpoint buffers {unknown[:5]} do not exist in the model")
    for name, value in buffers.items():
        own[name].copy_(value)


@torch.no_grad()
def apply_weights(model: nn.Module, named: list[tuple[str, nn.Parameter]],
                  weights: Mapping[str, torch.Tensor], *, full: bool,
                  load_state_dict_fn: LoadStateDictFn | None) -> None:
    """Inverse of :func:`weights_to_save`."""
    if load_state_dict_fn is not None:
        load_state_dict_fn(model, weights)
        return
    if full:
        keys = set(model.state_dict())
        model.load_state_dict({k: v for k, v in weights.items() if k in keys}, strict=True)
        extra = {k: v for k, v in weights.items() if k not in keys}
    else:
        extra = dict(weights)
    own = dict(named)
    if full:
        own = {n: p for n, p in own.items() if n not in keys}
    missing, unknown = sorted(set(own) - set(extra)), sorted(set(extra) - set(own))
    if missing or unknown:
        raise ValueError(f"checkpoint does not match the trainable parameters: missing "
                         f"{missing[:5]}, unexpected {unknown[:5]}")
    for name, p in own.items():
        if tuple(extra[name].shape) != tuple(p.shape):
            raise ValueError(f"checkpoint tensor {name!r} has shape {tuple(extra[name].shape)}; "
                             f"the parameter has {tuple(p.shape)}")
        p.copy_(extra[name])


def load_weights(model: nn.Module, checkpoint_dir: str | Path, *, params: ParamsLike | None = None,
                 load_state_dict_fn: LoadStateDictFn | None = None, use_ema: bool = False) -> dict:
    """Load a ``best/`` or ``last/`` directory written by ``train`` into ``model``.

    ``params`` and ``load_state_dict_fn`` must match those given to ``train``. ``best/`` already
    holds the evaluated (EMA, when used) weights; ``use_ema=True`` loads ``last/``'s EMA copy.
    Returns the checkpoint's ``meta.json`` dictionary.
    """
    ckpt = read_checkpoint(checkpoint_dir, with_state=False)
    named, _ = named_trainable(model, params)
    apply_weights(model, named, ckpt.weights, full=bool(ckpt.meta.get("save_full")),
                  load_state_dict_fn=load_state_dict_fn)
    apply_buffers(model, ckpt.buffers)
    if use_ema:
        if ckpt.ema is None:
            raise ValueError(f"use_ema=True but {checkpoint_dir} has no EMA weights")
        apply_weights(model, named, ckpt.ema, full=False, load_state_dict_fn=None)
    return ckpt.meta
