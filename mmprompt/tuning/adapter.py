"""Houlsby-style bottleneck adapters after each FFN (OFA's ``Adapter_Layer``).

Per layer: ``x + up(relu(down(x)))`` with ``down = Linear(d→dim)``, ``up = Linear(dim→d)``, applied to
the output of the layer's ``fc2`` (a forward hook on ``fc2``; the adapter is registered as
``<layer>.adapter`` like OFA's state-dict key, and the backbone's own parameter names stay intact).
It therefore acts after fc2 and before the FFN residual, in every encoder and decoder layer; the one
difference from OFA is that the layer's FFN dropout comes after the adapter instead of before it.

Initialisation: BERT's N(0, 0.02) weights and zero biases (OFA). With ``zero_init_up=True`` (the
default here) the up projection starts at zero, so the adapted model starts exactly equal to the
backbone; set it False to reproduce OFA's init. Trainable parameters per layer: 2·d·dim + dim + d.
"""

from __future__ import annotations

from typing import ClassVar

import logging
from dataclasses import dataclass

import torch
import torch.nn as nn

from mmprompt.core.checks import check_int
from mmprompt.tuning import state as st
from mmprompt.tuning.sites import STACKS, discover_sites

logger = logging.getLogger(__name__)



@dataclass
class AdapterConfig:
    """dim: bottleneck size (OFA's RefCOCO script: 100; OFA's default: 200). stacks: which stacks get
    adapters (default both, as in the paper)."""

    method: ClassVar[str] = "adapter"  # the name in the method registry

    dim: int = 100
    zero_init_up: bool = True
    init_std: float = 0.02
    stacks: tuple[str, ...] = STACKS
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("dim", self.dim, 1)
        if not isinstance(self.zero_init_up, bool):
            raise ValueError(f"zero_init_up={self.zero_init_up!r}: must be True or False")
        if not isinstance(self.init_std, (int, float)) or self.init_std <= 0:
            raise ValueError(f"init_std={self.init_std!r}: must be > 0")
        stacks = (self.stacks,) if isinstance(self.stacks, str) else tuple(self.stacks)
        if not stacks or any(s not in STACKS for s in stacks) or len(set(stacks)) != len(stacks):
            raise ValueError(f"stacks={self.stacks!r}: must be a non-empty set of distinct values from {STACKS}")
        self.stacks = tuple(s for s in STACKS if s in stacks)
        check_int("seed", self.seed)


class Adapter(nn.Module):
    """Bottleneck adapter with its own residual connection."""

    def __init__(self, d_model: int, dim: int) -> None:
        super().__init__()
        self.down = nn.Linear(d_model, dim)
        self.up = nn.Linear(dim, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(torch.relu(self.down(x)))


def _init_adapter(adapter: Adapter, config: AdapterConfig, gen: torch.Generator) -> None:
    with torch.no_grad():
        for linear in (adapter.down, adapter.up):
            linear.weight.copy_(torch.randn(linear.weight.shape, generator=gen) * config.init_std)
            linear.bias.zero_()
        if config.zero_init_up:
            adapter.up.weight.zero_()


def apply_adapter(model: nn.Module, config: AdapterConfig) -> st.MethodHandle:
    """Insert an adapter after ``fc2`` in every layer of the chosen stacks; only adapters train."""
    if not isinstance(config, AdapterConfig):
        raise ValueError(f"config must be an AdapterConfig, got {type(config).__name__}")
    st.ensure_free(model, AdapterConfig.method)
    backbone = discover_sites(model)
    layers = []
    for stack in config.stacks:
        if stack not in backbone.stacks:
            raise ValueError(f"stacks includes {stack!r}, but {type(model).__name__} has no {stack} stack")
        for path in backbone.layer_paths(stack):
            layer = model.get_submodule(path)
            if not isinstance(getattr(layer, "fc2", None), nn.Linear):
                raise ValueError(f"layer {path!r} has no nn.Linear `fc2` to attach an adapter to")
            if hasattr(layer, "adapter"):
                raise ValueError(f"layer {path!r} already has an attribute `adapter`")
            layers.append((path, layer))
    gen = torch.Generator().manual_seed(config.seed)
    state = st.begin(model, AdapterConfig.method, config)
    inserted = {}
    for path, layer in layers:
        fc2 = layer.fc2
        adapter = Adapter(fc2.out_features, config.dim)
        _init_adapter(adapter, config, gen)
        adapter.to(device=fc2.weight.device, dtype=fc2.weight.dtype)
        st.add_submodule(layer, state, "adapter", adapter)
        st.add_hook(state, fc2.register_forward_hook(lambda _m, _i, out, a=adapter: a(out)))
        inserted[f"{path}.adapter"] = adapter
    st.freeze_all_but(model, state, lambda name, _: ".adapter." in f".{name}")
    st.freeze_batchnorm(model, state)
    state.handle = st.MethodHandle(model, AdapterConfig.method, inserted)
    logger.info("adapters (dim %d) in %d layers", config.dim, len(inserted))
    return state.handle


def adapter_parameter_count(d_model: int, dim: int, n_layers: int) -> int:
    """Closed form: n_layers · (2·d·dim + dim + d)."""
    return n_layers * (2 * d_model * dim + dim + d_model)
