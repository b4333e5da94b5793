"""LoRA (beyond the paper): low-rank updates ``W x + (alpha/r)·B A dropout(x)`` on chosen projections.

Each targeted ``nn.Linear`` gets a child ``lora`` (so the backbone's parameter names stay intact) and a
forward hook that adds the low-rank term to its output. ``A`` starts U(−1/√in, 1/√in) (PyTorch's
Linear/Kaiming-uniform bound, as in the LoRA paper's code), ``B`` starts at zero, so the model starts
exactly equal to the backbone. Trainable parameters per adapted Linear: r·(in + out).

Targets are module names inside each layer: ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` (self-
attention, and in the decoder also cross-attention when ``cross_attention`` is True) and ``fc1``,
``fc2`` (the FFN).
"""

from __future__ import annotations

from typing import ClassVar

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from mmprompt.core.checks import check_int, check_number
from mmprompt.tuning import state as st
from mmprompt.tuning.sites import STACKS, discover_sites

logger = logging.getLogger(__name__)

ATTENTION_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")
FFN_TARGETS: tuple[str, ...] = ("fc1", "fc2")
TARGETS: tuple[str, ...] = ATTENTION_TARGETS + FFN_TARGETS


@dataclass
class LoRAConfig:
    method: ClassVar[str] = "lora"  # the name in the method registry
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    stacks: tuple[str, ...] = STACKS
    cross_attention: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("rank", self.rank, 1)
        if check_number("alpha", self.alpha) <= 0:
            raise ValueError(f"alpha={self.alpha!r}: allowed a finite number > 0")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout!r}: must be a float in [0, 1)")
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        if not targets or any(t not in TARGETS for t in targets) or len(set(targets)) != len(targets):
            raise ValueError(f"targets={self.targets!r}: must be a non-empty set of distinct values from {TARGETS}")
        self.targets = tuple(t for t in TARGETS if t in targets)
        stacks = (self.stacks,) if isinstance(self.stacks, str) else tuple(self.stacks)
        if not stacks or any(s not in STACKS for s in stacks) or len(set(stacks)) != len(stacks):
            raise ValueError(f"stacks={self.stacks!r}: must be a non-empty set of distinct values from {STACKS}")
        self.stacks = tuple(s for s in STACKS if s in stacks)
        if not isinstance(self.cross_attention, bool):
            raise ValueError(f"cross_attention={self.cross_attention!r}: must be True or False")
        check_int("seed", self.seed)

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


class LoRA(nn.Module):
    """The low-rank branch of one Linear."""

    def __init__(self, in_features: int, out_features: int, rank: int, scaling: float, dropout: float) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.zeros(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        self.scaling = scaling
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.dropout(x) @ self.A.t() @ self.B.t()) * self.scaling


def _targets(model: nn.Module, config: LoRAConfig) -> list[tuple[str, nn.Linear]]:
    backbone = discover_sites(model)
    found = []
    for site in backbone.sites:
        if site.stack not in config.stacks or (site.kind == "decoder_cross" and not config.cross_attention):
            continue
        for name in ATTENTION_TARGETS:
            if name in config.targets:
                found.append((f"{site.name}.{name}", getattr(site.module, name)))
    for stack in config.stacks:
        if stack not in backbone.stacks:
            raise ValueError(f"stacks includes {stack!r}, but {type(model).__name__} has no {stack} stack")
        for path in backbone.layer_paths(stack):
            for name in FFN_TARGETS:
                if name in config.targets:
                    linear = getattr(model.get_submodule(path), name, None)
                    if not isinstance(linear, nn.Linear):
                        raise ValueError(f"layer {path!r} has no nn.Linear {name!r}")
                    found.append((f"{path}.{name}", linear))
    for path, linear in found:
        if hasattr(linear, "lora"):
            raise ValueError(f"{path!r} already has an attribute `lora`")
    return sorted(found, key=lambda item: item[0])


def apply_lora(model: nn.Module, config: LoRAConfig) -> st.MethodHandle:
    """Add LoRA branches to the targeted projections; only they train."""
    if not isinstance(config, LoRAConfig):
        raise ValueError(f"config must be a LoRAConfig, got {type(config).__name__}")
    st.ensure_free(model, LoRAConfig.method)
    targets = _targets(model, config)
    gen = torch.Generator().manual_seed(config.seed)
    state = st.begin(model, LoRAConfig.method, config)
    inserted = {}
    for path, linear in targets:
        lora = LoRA(linear.in_features, linear.out_features, config.rank, config.scaling, config.dropout)
        with torch.no_grad():
            bound = 1.0 / math.sqrt(linear.in_features)
            lora.A.copy_(torch.rand(lora.A.shape, generator=gen) * 2 * bound - bound)
        lora.to(device=linear.weight.device, dtype=linear.weight.dtype)
        st.add_submodule(linear, state, "lora", lora)
        st.add_hook(state, linear.register_forward_hook(lambda _m, inp, out, b=lora: out + b(inp[0])))
        inserted[f"{path}.lora"] = lora
    st.freeze_all_but(model, state, lambda name, _: ".lora." in name)
    st.freeze_batchnorm(model, state)
    state.handle = st.MethodHandle(model, LoRAConfig.method, inserted)
    logger.info("LoRA rank %d on %d projections", config.rank, len(inserted))
    return state.handle


def lora_parameter_count(shapes: list[tuple[int, int]], rank: int) -> int:
    """Closed form: Σ r·(in + out) over the adapted (in, out) Linear shapes."""
    return sum(rank * (i + o) for i, o in shapes)
