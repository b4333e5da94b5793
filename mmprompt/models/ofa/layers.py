"""OFA attention and Transformer layers (NormFormer-style pre-LN).

Every sublayer of a layer runs the same steps, written out in each ``forward``: keep the residual →
layer-norm (pre-LN) → attention or feed-forward → NormFormer's extra norm → dropout and drop-path →
add the residual → layer-norm (post-LN only). The feed-forward is fc1 → activation → activation
dropout → NormFormer's ``ffn_layer_norm`` → fc2.

Each attention call receives ONE additive float bias ``[B or 1, H, Tq, Tk]`` that already holds the
absolute-position bias, the relative bias, and padding/causal blocking (``finfo.min``, written with
``torch.where`` so it never sums to ``-inf``: a fully blocked row degrades to a uniform softmax instead
of NaN). Right before the attention product — after the incremental cache was read and written — the
module calls :func:`mmprompt.core.injection.extend_with_prefix`, so prefix columns never enter a
cache and carry no position bias.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmprompt.core.injection import extend_with_prefix

from .activations import ACT2FN
from .config import OFAConfig
from .resnet import DropPath

KV = tuple[torch.Tensor, torch.Tensor]


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

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, d] → [B, H, T, head_dim]."""
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)

    def _merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, T, head_dim] → [B, T, d]."""
        b, _, t, _ = x.shape
        return x.transpose(1, 2).reshape(b, t, self.embed_dim)

    def _keys_values(self, hidden_states: torch.Tensor, key_value_states: torch.Tensor | None,
                     past_key_value: KV | None) -> KV:
        """This call's keys and values, which are also its cache entry.

        Cross-attention projects the encoder states (or reuses them from the cache); self-attention
        projects ``hidden_states`` and appends them to the cached keys/values.
        """
        if key_value_states is not None:
            if past_key_value is not None:
                return past_key_value
            return self._split_heads(self.k_proj(key_value_states)), self._split_heads(self.v_proj(key_value_states))
        key = self._split_heads(self.k_proj(hidden_states))
        value = self._split_heads(self.v_proj(hidden_states))
        if past_key_value is not None:
            key = torch.cat([past_key_value[0], key], dim=2)
            value = torch.cat([past_key_value[1], value], dim=2)
        return key, value

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attn_bias: torch.Tensor | None) -> torch.Tensor:
        """Scaled dot-product attention with the additive bias, then the per-head scale ``c_attn``."""
        if attn_bias is not None and attn_bias.dtype != query.dtype:  # e.g. under autocast: keep "blocked" finite
            attn_bias = attn_bias.clamp(min=torch.finfo(query.dtype).min).to(query.dtype)
        dropout_p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_bias, dropout_p=dropout_p,
                                             scale=self.scaling)
        return out * self.c_attn.view(1, -1, 1, 1).to(out.dtype)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attn_bias: torch.Tensor | None = None,
        key_value_states: torch.Tensor | None = None,
        past_key_value: KV | None = None,
    ) -> tuple[torch.Tensor, KV]:
        """Attend from ``hidden_states`` [B, Tq, d]; returns (output [B, Tq, d], this call's (key, value) cache).

        Self-attention: ``past_key_value`` holds earlier keys/values, the new ones are appended.
        Cross-attention (``key_value_states`` given): ``past_key_value``, when given, holds the
        projected encoder keys/values.
        """
        query = self._split_heads(self.q_proj(hidden_states))
        key, value = self._keys_values(hidden_states, key_value_states, past_key_value)
        present = (key, value)
        key, value, attn_bias = extend_with_prefix(self, key, value, attn_bias)  # after the cache: prefixes stay out
        attn_output = self._attend(query, key, value, attn_bias)
        return self.out_proj(self._merge_heads(attn_output)), present


def _attention(config: OFAConfig, num_heads: int) -> OFAAttention:
    return OFAAttention(config.d_model, num_heads, config.attention_dropout, config.attn_scale_factor)


def _normformer_norm(config: OFAConfig, dim: int) -> nn.LayerNorm | None:
    """NormFormer's extra LayerNorm (after attention, after the FFN activation), or None without it."""
    return nn.LayerNorm(dim) if config.normformer else None


def _drop_path(rate: float) -> nn.Module:
    return DropPath(rate) if rate > 0 else nn.Identity()


class _OFALayer(nn.Module):
    """Helpers shared by the encoder and decoder layer; each subclass declares its own modules."""

    normalize_before: bool
    dropout: nn.Dropout
    drop_path: nn.Module
    fc1: nn.Linear
    fc2: nn.Linear
    activation_fn: Callable[[torch.Tensor], torch.Tensor]
    activation_dropout: nn.Dropout
    ffn_layer_norm: nn.LayerNorm | None

    def _dropout_path(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Dropout, then drop-path (stochastic depth) of a sublayer's output, before the residual add."""
        return self.drop_path(self.dropout(hidden_states))

    def _feed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """fc1 → activation → activation dropout → NormFormer's ``ffn_layer_norm`` → fc2."""
        hidden_states = self.activation_dropout(self.activation_fn(self.fc1(hidden_states)))
        if self.ffn_layer_norm is not None:
            hidden_states = self.ffn_layer_norm(hidden_states)
        return self.fc2(hidden_states)


class OFAEncoderLayer(_OFALayer):
    def __init__(self, config: OFAConfig, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        d = config.d_model
        self.self_attn = _attention(config, config.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.self_attn_mid_layer_norm = _normformer_norm(config, d)
        self.normalize_before = config.encoder_normalize_before
        self.dropout = nn.Dropout(config.dropout)
        self.activation_dropout = nn.Dropout(config.activation_dropout)
        self.activation_fn = ACT2FN[config.activation_function]
        self.fc1 = nn.Linear(d, config.encoder_ffn_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_dim, d)
        self.ffn_layer_norm = _normformer_norm(config, config.encoder_ffn_dim)
        self.final_layer_norm = nn.LayerNorm(d)
        self.drop_path = _drop_path(drop_path_rate)

    def forward(self, hidden_states: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        residual = hidden_states
        if self.normalize_before:
            hidden_states = self.self_attn_layer_norm(hidden_states)
        hidden_states, _ = self.self_attn(hidden_states, attn_bias)
        if self.self_attn_mid_layer_norm is not None:
            hidden_states = self.self_attn_mid_layer_norm(hidden_states)
        hidden_states = residual + self._dropout_path(hidden_states)
        if not self.normalize_before:
            hidden_states = self.self_attn_layer_norm(hidden_states)

        residual = hidden_states
        if self.normalize_before:
            hidden_states = self.final_layer_norm(hidden_states)
        hidden_states = residual + self._dropout_path(self._feed_forward(hidden_states))
        if not self.normalize_before:
            hidden_states = self.final_layer_norm(hidden_states)
        return hidden_states


class OFADecoderLayer(_OFALayer):
    def __init__(self, config: OFAConfig, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        d = config.d_model
        self.self_attn = _attention(config, config.decoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.self_attn_mid_layer_norm = _normformer_norm(config, d)
        self.cross_attn = _attention(config, config.decoder_attention_heads)
        self.cross_attn_layer_norm = nn.LayerNorm(d)
        self.cross_attn_mid_layer_norm = _normformer_norm(config, d)
        self.normalize_before = config.decoder_normalize_before
        self.dropout = nn.Dropout(config.dropout)
        self.activation_dropout = nn.Dropout(config.activation_dropout)
        self.activation_fn = ACT2FN[config.activation_function]
        self.fc1 = nn.Linear(d, config.decoder_ffn_dim)
        self.fc2 = nn.Linear(config.decoder_ffn_dim, d)
        self.ffn_layer_norm = _normformer_norm(config, config.decoder_ffn_dim)
        self.final_layer_norm = nn.LayerNorm(d)
        self.drop_path = _drop_path(drop_path_rate)

    def forward(
        self,
        hidden_states: torch.Tensor,
        self_attn_bias: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor,
        cross_attn_bias: torch.Tensor | None,
        past_key_value: tuple[torch.Tensor, ...] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Returns the new hidden states and this layer's cache (self k, self v, cross k, cross v)."""
        self_past = past_key_value[:2] if past_key_value is not None else None
        cross_past = past_key_value[2:] if past_key_value is not None else None

        residual = hidden_states
        if self.normalize_before:
            hidden_states = self.self_attn_layer_norm(hidden_states)
        hidden_states, self_kv = self.self_attn(hidden_states, self_attn_bias, past_key_value=self_past)
        if self.self_attn_mid_layer_norm is not None:
            hidden_states = self.self_attn_mid_layer_norm(hidden_states)
        hidden_states = residual + self._dropout_path(hidden_states)
        if not self.normalize_before:
            hidden_states = self.self_attn_layer_norm(hidden_states)

        residual = hidden_states
        if self.normalize_before:
            hidden_states = self.cross_attn_layer_norm(hidden_states)
        hidden_states, cross_kv = self.cross_attn(hidden_states, cross_attn_bias, encoder_hidden_states, cross_past)
        if self.cross_attn_mid_layer_norm is not None:
            hidden_states = self.cross_attn_mid_layer_norm(hidden_states)
        hidden_states = residual + self._dropout_path(hidden_states)
        if not self.normalize_before:
            hidden_states = self.cross_attn_layer_norm(hidden_states)

        residual = hidden_states
        if self.normalize_before:
            hidden_states = self.final_layer_norm(hidden_states)
        hidden_states = residual + self._dropout_path(self._feed_forward(hidden_states))
        if not self.normalize_before:
            hidden_states = self.final_layer_norm(hidden_states)
        return hidden_states, self_kv + cross_kv
