"""OFA attention and Transformer layers (NormFormer-style pre-LN).

Each attention call receives ONE additive float bias ``[B or 1, H, Tq, Tk]`` that already holds the
absolute-position bias, the relative bias, and padding/causal blocking (``finfo.min``, written with
``torch.where`` so it never sums to ``-inf``: a fully blocked row degrades to a uniform softmax instead
of NaN). Right before the attention product — after the incremental cache was read and written — the
module calls :func:`mmprompt.core.injection.extend_with_prefix`, so prefix columns never enter a
cache and carry no position bias.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmprompt.core.injection import extend_with_prefix

from .config import OFAConfig
from .resnet import DropPath

KV = tuple[torch.Tensor, torch.Tensor]


def activation(name: str):
    if name == "gelu":
        return F.gelu
    if name == "gelu_new":
        return lambda x: F.gelu(x, approximate="tanh")
    return {"relu": F.relu, "silu": F.silu, "tanh": torch.tanh}[name]


class OFAAttention(nn.Module):
    """Multi-head attention with OFA's scaling ``(head_dim·attn_scale_factor)^-0.5`` and per-head ``c_attn``."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, attn_scale_factor: float = 2.0) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = float(self.head_dim * attn_scale_factor) ** -0.5
        self.dropout = dropout
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.c_attn = nn.Parameter(torch.ones(num_heads))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        hidden: torch.Tensor,
        bias: torch.Tensor | None = None,
        key_value_states: torch.Tensor | None = None,
        past: KV | None = None,
    ) -> tuple[torch.Tensor, KV]:
        """Attend from ``hidden`` [B, Tq, d]; returns (output [B, Tq, d], this call's (key, value) cache).

        Self-attention: ``past`` holds earlier keys/values, the new ones are appended. Cross-attention
        (``key_value_states`` given): ``past``, when given, holds the projected encoder keys/values.
        """
        bsz, tq, _ = hidden.shape
        q = self._heads(self.q_proj(hidden))
        if key_value_states is not None:  # cross-attention
            if past is not None:
                k, v = past
            else:
                k, v = self._heads(self.k_proj(key_value_states)), self._heads(self.v_proj(key_value_states))
        else:
            k, v = self._heads(self.k_proj(hidden)), self._heads(self.v_proj(hidden))
            if past is not None:
                k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        present = (k, v)
        k, v, bias = extend_with_prefix(self, k, v, bias)
        if bias is not None and bias.dtype != q.dtype:  # e.g. under autocast: keep "blocked" finite
            bias = bias.clamp(min=torch.finfo(q.dtype).min).to(q.dtype)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0, scale=self.scaling
        )
        out = out * self.c_attn.view(1, -1, 1, 1).to(out.dtype)
        out = out.transpose(1, 2).reshape(bsz, tq, self.embed_dim)
        return self.out_proj(out), present


class _Block(nn.Module):
    """Shared pieces: residual with drop-path, FFN with NormFormer's LN after the activation."""

    def _init_ffn(self, config: OFAConfig, ffn_dim: int, normalize_before: bool, drop_path_rate: float) -> None:
        d = config.d_model
        self.normalize_before = normalize_before
        self.dropout = nn.Dropout(config.dropout)
        self.activation_dropout = nn.Dropout(config.activation_dropout)
        self.act = activation(config.activation_function)
        self.fc1 = nn.Linear(d, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, d)
        self.ffn_layer_norm = nn.LayerNorm(ffn_dim) if config.normformer else None
        self.final_layer_norm = nn.LayerNorm(d)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def _sublayer(self, x: torch.Tensor, ln: nn.LayerNorm, mid_ln: nn.LayerNorm | None, fn) -> tuple[torch.Tensor, KV]:
        h = ln(x) if self.normalize_before else x
        h, present = fn(h)
        if mid_ln is not None:
            h = mid_ln(h)
        x = x + self.drop_path(self.dropout(h))
        return (x if self.normalize_before else ln(x)), present

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        h = self.final_layer_norm(x) if self.normalize_before else x
        h = self.activation_dropout(self.act(self.fc1(h)))
        if self.ffn_layer_norm is not None:
            h = self.ffn_layer_norm(h)
        x = x + self.drop_path(self.dropout(self.fc2(h)))
        return x if self.normalize_before else self.final_layer_norm(x)


class OFAEncoderLayer(_Block):
    def __init__(self, config: OFAConfig, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        d = config.d_model
        self.self_attn = OFAAttention(d, config.encoder_attention_heads, config.attention_dropout,
                                      config.attn_scale_factor)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.self_attn_mid_layer_norm = nn.LayerNorm(d) if config.normformer else None
        self._init_ffn(config, config.encoder_ffn_dim, config.encoder_normalize_before, drop_path_rate)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x, _ = self._sublayer(x, self.self_attn_layer_norm, self.self_attn_mid_layer_norm,
                              lambda h: self.self_attn(h, bias))
        return self._ffn(x)


class OFADecoderLayer(_Block):
    def __init__(self, config: OFAConfig, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        d, heads = config.d_model, config.decoder_attention_heads
        self.self_attn = OFAAttention(d, heads, config.attention_dropout, config.attn_scale_factor)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.self_attn_mid_layer_norm = nn.LayerNorm(d) if config.normformer else None
        self.cross_attn = OFAAttention(d, heads, config.attention_dropout, config.attn_scale_factor)
        self.cross_attn_layer_norm = nn.LayerNorm(d)
        self.cross_attn_mid_layer_norm = nn.LayerNorm(d) if config.normformer else None
        self._init_ffn(config, config.decoder_ffn_dim, config.decoder_normalize_before, drop_path_rate)

    def forward(
        self,
        x: torch.Tensor,
        self_bias: torch.Tensor | None,
        encoder_hidden: torch.Tensor,
        cross_bias: torch.Tensor | None,
        past: tuple[torch.Tensor, ...] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Returns the new hidden states and this layer's cache (self k, self v, cross k, cross v)."""
        self_past = past[:2] if past is not None else None
        cross_past = past[2:] if past is not None else None
        x, self_kv = self._sublayer(x, self.self_attn_layer_norm, self.self_attn_mid_layer_norm,
                                    lambda h: self.self_attn(h, self_bias, past=self_past))
        x, cross_kv = self._sublayer(x, self.cross_attn_layer_norm, self.cross_attn_mid_layer_norm,
                                     lambda h: self.cross_attn(h, cross_bias, encoder_hidden, cross_past))
        return self._ffn(x), self_kv + cross_kv
