"""Light-weight baselines without new modules: full finetuning and BitFit.

BitFit rules (``BitFitConfig.rule``):

* ``"ofa"`` (default, the paper's choice as coded in OFA's ``train.py``): a parameter trains when its
  name contains ("layer_norm" and "bias") or ("fc" and "bias"), evaluated on OFA's fairseq names. On
  HF-style OFA names that covers, per layer, the biases of ``self_attn_layer_norm``,
  ``cross_attn_layer_norm`` (fairseq ``encoder_attn_layer_norm``), ``final_layer_norm``, ``fc1`` and
  ``fc2``, plus the final ``encoder.layer_norm`` / ``decoder.layer_norm`` biases. The HF renames
  ``*_mid_layer_norm`` (fairseq ``attn_ln``/``self_attn_ln``/``cross_attn_ln``) and ``ffn_layer_norm``
  (fairseq ``ffn_layernorm``) never matched in fairseq and are excluded here too, as are attention
  projection biases and ``layernorm_embedding`` (no underscore). ofa-base: 70,656 parameters. On
  transformers' BART names the same rule picks ``self_attn_layer_norm``, ``encoder_attn_layer_norm``,
  ``final_layer_norm``, ``fc1`` and ``fc2`` biases.
* ``"literal"``: the same name test applied verbatim to this model's names (includes the HF renames).
* ``"all_biases"``: every parameter whose name ends in "bias" (Zaken et al.'s original BitFit).
"""

from __future__ import annotations

from typing import ClassVar

import logging
from dataclasses import dataclass

import torch.nn as nn

from mmprompt.tuning import state as st

logger = logging.getLogger(__name__)

BITFIT_RULES: tuple[str, ...] = ("ofa", "literal", "all_biases")
_FAIRSEQ_UNMATCHED = ("mid_layer_norm", "ffn_layer_norm")


@dataclass
class FinetuneConfig:
    """Everything trains. ``freeze_token_embeddings`` freezes the (tied) token embedding, as OFA does for
    VQA and captioning; ``freeze_batchnorm`` keeps BatchNorm statistics fixed (OFA's --freeze-resnet)."""

    method: ClassVar[str] = "finetune"  # the name in the method registry

    freeze_token_embeddings: bool = False
    freeze_batchnorm: bool = False

    def __post_init__(self) -> None:
        for name in ("freeze_token_embeddings", "freeze_batchnorm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r}: must be True or False")


@dataclass
class BitFitConfig:
    """Bias-only training; see the module docstring for what each ``rule`` covers."""

    method: ClassVar[str] = "bitfit"  # the name in the method registry

    rule: str = "ofa"

    def __post_init__(self) -> None:
        if self.rule not in BITFIT_RULES:
            raise ValueError(f"rule={self.rule!r}: allowed {BITFIT_RULES}")


def bitfit_selects(name: str, rule: str) -> bool:
    """Whether BitFit with ``rule`` trains the parameter called ``name``."""
    if rule == "all_biases":
        return name.endswith("bias")
    hit = "bias" in name and ("layer_norm" in name or "fc" in name)
    if rule == "ofa":
        hit = hit and not any(word in name for word in _FAIRSEQ_UNMATCHED)
    return hit


def apply_finetune(model: nn.Module, config: FinetuneConfig) -> st.MethodHandle:
    """Make every parameter trainable (minus the options)."""
    if not isinstance(config, FinetuneConfig):
        raise ValueError(f"config must be a FinetuneConfig, got {type(config).__name__}")
    st.ensure_free(model, FinetuneConfig.method)
    frozen = st.input_embeddings(model).weight if config.freeze_token_embeddings else None
    state = st.begin(model, FinetuneConfig.method, config)
    st.freeze_all_but(model, state, lambda _name, param: param is not frozen)
    if config.freeze_batchnorm:
        st.freeze_batchnorm(model, state)
    state.handle = st.MethodHandle(model, FinetuneConfig.method)
    return state.handle


def apply_bitfit(model: nn.Module, config: BitFitConfig) -> st.MethodHandle:
    """Train only the biases selected by ``config.rule``; BatchNorm statistics stay fixed."""
    if not isinstance(config, BitFitConfig):
        raise ValueError(f"config must be a BitFitConfig, got {type(config).__name__}")
    st.ensure_free(model, BitFitConfig.method)
    if not any(bitfit_selects(name, config.rule) for name, _ in model.named_parameters()):
        raise ValueError(f"BitFit rule {config.rule!r} selects no parameter of {type(model).__name__}")
    state = st.begin(model, BitFitConfig.method, config)
    st.freeze_all_but(model, state, lambda name, _param: bitfit_selects(name, config.rule))
    st.freeze_batchnorm(model, state)
    state.handle = st.MethodHandle(model, BitFitConfig.method)
    return state.handle
