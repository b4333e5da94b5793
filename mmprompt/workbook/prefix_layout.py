"""What prefix tuning adds to a model, computed without changing it: tables, shapes and parameter counts.

Used to explain the mechanism (notebook 01's explorer) and to check counts against their formula: a flat
prefix table holds ``P x n x 2 x H x head_dim`` numbers per attention site kind (``n`` targeted layers, a
key and a value per layer), i.e. the paper's ``P x (L_enc + L_dec) x 2 x d`` for the default sites and
depth; the MLP reparameterisation ``Embedding(P, d) -> Linear(d, h) -> ReLU -> Linear(h, width)`` trains
more parameters but folds back to the same flat table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from mmprompt.tuning.prefix import PrefixConfig, plan_sites
from mmprompt.tuning.sites import discover_sites

__all__ = ["SiteLayout", "flat_prefix_parameters", "mlp_prefix_parameters", "prefix_budget", "prefix_layout"]


@dataclass(frozen=True)
class SiteLayout:
    """The prefix table of one attention site kind."""

    site: str
    layers: tuple[int, ...]
    heads: int
    head_dim: int
    d_model: int
    length: int
    hidden: int | None  # MLP hidden size, None for a flat table

    @property
    def width(self) -> int:
        """Columns of the flat table: a key and a value of H x head_dim per targeted layer."""
        return len(self.layers) * 2 * self.heads * self.head_dim

    @property
    def table_shape(self) -> tuple[int, int]:
        return (self.length, self.width)

    @property
    def kv_shape(self) -> tuple[int, int, int, int]:
        """Shape of the key (and of the value) one layer prepends: [batch, H, P, head_dim] (batch 1, expanded)."""
        return (1, self.heads, self.length, self.head_dim)

    @property
    def flat_parameters(self) -> int:
        return flat_prefix_parameters(self.length, len(self.layers), self.heads * self.head_dim)

    @property
    def trainable_parameters(self) -> int:
        if self.hidden is None:
            return self.flat_parameters
        return mlp_prefix_parameters(self.length, self.width, self.d_model, self.hidden)

    def row(self) -> dict:
        return {"site": self.site, "layers": list(self.layers), "heads": self.heads, "head_dim": self.head_dim,
                "table": f"{self.length} x {self.width}", "per-layer key/value": "x".join(map(str, self.kv_shape)),
                "trainable": self.trainable_parameters, "after fold": self.flat_parameters}


def flat_prefix_parameters(length: int, layers: int, kv_width: int) -> int:
    """P x n x 2 x (H x head_dim): a key and a value per targeted layer."""
    return length * layers * 2 * kv_width


def mlp_prefix_parameters(length: int, width: int, d_model: int, hidden: int) -> int:
    """OFA's reparameterisation: Embedding(P, d) + Linear(d, h) + Linear(h, width), biases included."""
    return length * d_model + (d_model * hidden + hidden) + (hidden * width + width)


def prefix_layout(model: nn.Module, config: PrefixConfig) -> list[SiteLayout]:
    """The tables :func:`mmprompt.tuning.apply_prefix` would create for ``config`` on ``model`` (the model is
    not changed; a config that does not fit raises the same ``ValueError`` as applying it)."""
    if not isinstance(config, PrefixConfig):
        raise ValueError(f"config must be a PrefixConfig, got {type(config).__name__}")
    plans = plan_sites(discover_sites(model), config)
    out = []
    for kind, plan in plans.items():
        hidden = config.hidden_size(plan.d_model)
        out.append(SiteLayout(kind, tuple(plan.layers), plan.heads, plan.head_dim, plan.d_model, config.length,
                              hidden))
    return out


def prefix_budget(model: nn.Module, config: PrefixConfig) -> dict:
    """Trainable prefix parameters of ``config`` on ``model``, what remains after folding, the backbone's
    size and the trainable share of it: {"trainable", "after_fold", "backbone", "fraction_of_backbone",
    "sites": [SiteLayout.row(), ...]}."""
    layout = prefix_layout(model, config)
    backbone = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    trainable = sum(s.trainable_parameters for s in layout)
    return {"trainable": trainable, "after_fold": sum(s.flat_parameters for s in layout), "backbone": backbone,
            "fraction_of_backbone": trainable / backbone if backbone else 0.0, "sites": [s.row() for s in layout]}
