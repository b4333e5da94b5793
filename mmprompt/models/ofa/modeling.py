"""OFA encoder, decoder and model, state-dict compatible with OFA-Sys' HF-format checkpoints.

Sequence layout: image patches (ResNet → ``image_proj`` → type embedding 1 → ``patch_layernorm_embedding``)
come before the text tokens (token embedding → type embedding 0 → ``layernorm_embedding``). Positions
are not added to the embeddings; instead every attention gets an absolute-position bias computed once
per forward from layer-normed position embeddings (``pos_ln`` for text, ``image_pos_ln`` for image
patches), plus a per-layer relative bias (log-bucketed for text–text, 2-D for image–image; text–image
pairs get none). The decoder's self-attention uses the text relative bias and its own position
projections; cross-attention uses only an absolute bias between decoder positions and the encoder's
layer-normed position embeddings.

Not implemented (not needed for text generation): image-code generation (``code_masks``), a second
image, patch sampling and LayerDrop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from .config import OFAConfig
from .layers import OFADecoderLayer, OFAEncoderLayer
from .position import (
    absolute_position_bias,
    image_bucket_positions,
    image_position_ids,
    num_image_buckets,
    num_token_buckets,
    patch_grid_size,
    split_heads_key,
    token_bucket_positions,
)
from .resnet import ResNet, linear_rates

logger = logging.getLogger(__name__)

ENCODER_INPUT_NAMES = ("input_ids", "patch_images", "patch_masks", "attention_mask", "inputs_embeds")


# ---------------------------------------------------------------------------------------------- outputs
@dataclass
class OFAEncoderOutput:
    """What the decoder needs from the encoder.

    ``last_hidden_state`` [B, Ts, d]; ``padding_mask`` Bool [B, Ts] (True = padding);
    ``position_embedding`` [1 or B, Ts, d]: layer-normed position embeddings (cross-attention's abs bias).
    """

    last_hidden_state: torch.Tensor
    padding_mask: torch.Tensor
    position_embedding: torch.Tensor

    def index_select(self, index: torch.Tensor) -> "OFAEncoderOutput":
        pos = self.position_embedding
        return OFAEncoderOutput(
            self.last_hidden_state.index_select(0, index),
            self.padding_mask.index_select(0, index),
            pos if pos.shape[0] == 1 else pos.index_select(0, index),
        )


@dataclass
class OFACache:
    """Incremental decoding state: per layer (self k, self v, cross k, cross v), each [B, H, T, head_dim];
    the decoder padding mask of the cached positions; the projected encoder positions of cross-attention."""

    layers: tuple[tuple[torch.Tensor, ...], ...]
    padding_mask: torch.Tensor
    cross_pos_key: torch.Tensor

    @property
    def length(self) -> int:
        return self.padding_mask.shape[1]

    def index_select(self, index: torch.Tensor) -> "OFACache":
        key = self.cross_pos_key
        return OFACache(
            tuple(tuple(t.index_select(0, index) for t in layer) for layer in self.layers),
            self.padding_mask.index_select(0, index),
            key if key.shape[0] == 1 else key.index_select(0, index),
        )


@dataclass
class OFAOutput:
    logits: torch.Tensor
    encoder_outputs: OFAEncoderOutput
    past_key_values: OFACache | None = None


# ---------------------------------------------------------------------------------------------- helpers
def _blocked(bias: torch.Tensor, blocked: torch.Tensor | None) -> torch.Tensor:
    """Write ``finfo.min`` where ``blocked`` (broadcastable bool) is True; never sums two minima."""
    if blocked is None:
        return bias
    return torch.where(blocked, torch.finfo(bias.dtype).min, bias)


def _rel_table(tables: list[nn.Embedding], zero_row: bool) -> torch.Tensor:
    weights = [t.weight for t in tables]
    if zero_row:
        weights.append(weights[0].new_zeros(1, weights[0].shape[1]))
    return torch.cat(weights, dim=0)


def _gather_bias(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``[1, H, Tq, Tk]`` bias: row ``idx[q, k]`` of ``table`` [N, H]. Gathering columns of the
    transposed table gives the head-major layout directly and a cheap (index_add) backward."""
    return table.t().index_select(1, idx.reshape(-1)).view(1, table.shape[1], *idx.shape)


def _check_ids(name: str, ids: torch.Tensor, vocab_size: int) -> None:
    if ids.dim() != 2 or ids.dtype not in (torch.long, torch.int, torch.int32):
        raise ValueError(f"{name} must be an integer tensor [B, T]; got {tuple(ids.shape)} {ids.dtype}")
    if ids.numel():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"{name} holds token id {hi if hi >= vocab_size else lo}; allowed: 0..{vocab_size - 1} "
                             f"(vocab_size={vocab_size})")


def _relative_bias_tables(num_buckets: int, num_heads: int, num_layers: int) -> nn.ModuleList:
    """One ``[num_buckets, num_heads]`` relative-position bias table per layer."""
    return nn.ModuleList(nn.Embedding(num_buckets, num_heads) for _ in range(num_layers))


def _position_scaling(config: OFAConfig, num_heads: int) -> float:
    """Scaling of the absolute-position bias, as the attention's: ``(head_dim·attn_scale_factor)^-0.5``."""
    return float(config.d_model / num_heads * config.attn_scale_factor) ** -0.5


@dataclass
class _SelfAttentionBias:
    """Self-attention bias of one forward, shared by the layers but for each layer's relative table:
    absolute-position bias ``[1, H, Tq, Tk]``, bucket of every (query, key) pair ``[Tq, Tk]``, and the
    blocked (causal / padding) pairs, bool broadcastable to ``[B, H, Tq, Tk]`` or None."""

    position_bias: torch.Tensor
    bucket_index: torch.Tensor
    blocked: torch.Tensor | None

    def for_layer(self, rel_table: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Absolute + relative bias (rows of ``rel_table`` [N, H]) in ``dtype``, ``finfo.min`` where blocked."""
        bias = self.position_bias + _gather_bias(rel_table, self.bucket_index)
        return _blocked(bias.to(dtype), self.blocked)


# ---------------------------------------------------------------------------------------------- encoder
class OFAEncoder(nn.Module):
    def __init__(self, config: OFAConfig, embed_tokens: nn.Embedding) -> None:
        super().__init__()
        d, heads, num_layers = config.d_model, config.encoder_attention_heads, config.encoder_layers
        self.config = config
        self.embed_tokens = embed_tokens
        self.embed_scale = d**0.5 if config.scale_embedding else 1.0
        self.dropout = nn.Dropout(config.dropout)
        self.type_embedding = nn.Embedding(2, d) if config.add_type_embedding else None
        self.embed_images = ResNet(config.resnet_layers, config.resnet_width, config.resnet_drop_path_rate)
        self.image_proj = nn.Linear(config.resnet_out_channels, d)
        self.patch_layernorm_embedding = nn.LayerNorm(d) if config.patch_layernorm_embedding else None
        self.layernorm_embedding = nn.LayerNorm(d) if config.layernorm_embedding else None
        self.num_heads = heads
        self.pos_scaling = _position_scaling(config, heads)
        self.embed_positions = nn.Embedding(config.max_position_embeddings + 2, d)
        self.embed_image_positions = nn.Embedding(config.image_bucket_size**2 + 1, d)
        self.pos_ln = nn.LayerNorm(d)
        self.image_pos_ln = nn.LayerNorm(d)
        self.token_rel_pos_table_list = _relative_bias_tables(num_token_buckets(config.token_bucket_size), heads,
                                                              num_layers)
        self.image_rel_pos_table_list = _relative_bias_tables(num_image_buckets(config.image_bucket_size), heads,
                                                              num_layers)
        # Recomputed from the published formulas (not persistent: cheap to rebuild, large to store).
        self.register_buffer("token_rp_bucket", token_bucket_positions(
            config.token_bucket_size, config.max_position_embeddings), persistent=False)
        self.register_buffer("image_rp_bucket", image_bucket_positions(config.image_bucket_size), persistent=False)
        self.pos_q_linear = nn.Linear(d, d)
        self.pos_k_linear = nn.Linear(d, d)
        rates = linear_rates(config.encoder_drop_path_rate, num_layers)
        self.layers = nn.ModuleList(OFAEncoderLayer(config, r) for r in rates)
        self.layer_norm = nn.LayerNorm(d) if config.encoder_normalize_before else None

    # -- input checks ------------------------------------------------------------------------------
    def _validate(self, input_ids, patch_images, patch_masks, attention_mask, inputs_embeds) -> tuple[int, int]:
        bsz, t_txt = self._validate_text(input_ids, attention_mask, inputs_embeds)
        if patch_images is not None:
            self._validate_images(patch_images, patch_masks, bsz)
        return bsz, t_txt

    def _validate_text(self, input_ids, attention_mask, inputs_embeds) -> tuple[int, int]:
        cfg = self.config
        if inputs_embeds is not None:
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != cfg.d_model:
                raise ValueError(f"inputs_embeds must be [B, T, {cfg.d_model}]; got {tuple(inputs_embeds.shape)}")
            bsz, t_txt = inputs_embeds.shape[:2]
            if attention_mask is None and input_ids is not None and tuple(input_ids.shape) != (bsz, t_txt):
                raise ValueError(f"inputs_embeds {tuple(inputs_embeds.shape)} and input_ids {tuple(input_ids.shape)} "
                                 "differ in length: pass attention_mask (1 = keep) for the embeddings")
        elif input_ids is not None:
            _check_ids("input_ids", input_ids, cfg.vocab_size)
            bsz, t_txt = input_ids.shape
        else:
            raise ValueError("the encoder needs input_ids or inputs_embeds (both are None)")
        if t_txt > cfg.max_position_embeddings:
            raise ValueError(f"text length {t_txt} exceeds max_position_embeddings={cfg.max_position_embeddings}")
        if attention_mask is not None and tuple(attention_mask.shape) != (bsz, t_txt):
            raise ValueError(f"attention_mask must be [B, T] = {(bsz, t_txt)}; got {tuple(attention_mask.shape)}")
        return bsz, t_txt

    def _validate_images(self, patch_images: torch.Tensor, patch_masks: torch.Tensor | None, bsz: int) -> None:
        if patch_images.dim() != 4 or patch_images.shape[0] != bsz or patch_images.shape[1] != 3:
            raise ValueError(f"patch_images must be [B={bsz}, 3, S, S]; got {tuple(patch_images.shape)}")
        grid = max(patch_grid_size(patch_images.shape[2]), patch_grid_size(patch_images.shape[3]))
        if grid > self.config.image_bucket_size:
            raise ValueError(
                f"patch_images of {patch_images.shape[2]}×{patch_images.shape[3]} pixels give a {grid}-patch grid "
                f"side, but image_bucket_size={self.config.image_bucket_size} allows at most "
                f"{self.config.max_image_size} pixels per side")
        if patch_masks is not None and patch_masks.numel() != bsz:
            raise ValueError(f"patch_masks must be Bool[B={bsz}]; got {tuple(patch_masks.shape)}")

    # -- embeddings --------------------------------------------------------------------------------
    def _type(self, x: torch.Tensor, kind: int) -> torch.Tensor:
        if self.type_embedding is None:
            return x
        return x + self.type_embedding.weight[kind].to(x.dtype)

    def embed_text(self, input_ids, inputs_embeds, pos: torch.Tensor) -> torch.Tensor:
        tokens = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        x = self.embed_scale * tokens
        if self.config.entangle_position_embedding:
            x = x + pos
        x = self._type(x, 0)
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        return self.dropout(x)

    def embed_image(self, patch_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image patch embeddings [B, N, d] and their position ids [N] (row-major grid)."""
        feats = self.embed_images(patch_images)
        h, w = feats.shape[-2:]
        ids = image_position_ids(h, w, self.config.image_bucket_size, feats.device)
        x = self.embed_scale * self.image_proj(feats.flatten(2).transpose(1, 2))
        if self.config.entangle_position_embedding:
            x = x + self.embed_image_positions(ids)
        x = self._type(x, 1)
        if self.patch_layernorm_embedding is not None:
            x = self.patch_layernorm_embedding(x)
        return self.dropout(x), ids

    # -- padding and position biases ---------------------------------------------------------------
    def _text_padding_mask(self, input_ids, attention_mask, bsz: int, t_txt: int, device) -> torch.Tensor:
        """Bool [B, T] (True = padding): from ``attention_mask``, else from the pad id, else none."""
        if attention_mask is not None:
            return ~attention_mask.to(torch.bool)
        if input_ids is not None:
            return input_ids.eq(self.config.pad_token_id)
        return torch.zeros(bsz, t_txt, dtype=torch.bool, device=device)

    @staticmethod
    def _image_padding_mask(patch_masks: torch.Tensor | None, bsz: int, n_patches: int, device) -> torch.Tensor:
        """Bool [B, N]: all patches of a sample without an image (``patch_masks`` False) are padding, as in
        OFA's fairseq code."""
        pad = torch.zeros(bsz, n_patches, dtype=torch.bool, device=device)
        if patch_masks is not None:
            pad = pad | ~patch_masks.reshape(bsz, 1).to(torch.bool)
        return pad

    def _bucket_index(self, image_ids: torch.Tensor | None, t_txt: int) -> torch.Tensor:
        """Index into [token table; image table; zero row] for every (query, key) pair, [T, T]."""
        n_tok = num_token_buckets(self.config.token_bucket_size)
        n_img = 0 if image_ids is None else image_ids.numel()
        zero = n_tok + num_image_buckets(self.config.image_bucket_size)
        total = n_img + t_txt
        idx = torch.full((total, total), zero, dtype=torch.long, device=self.token_rp_bucket.device)
        idx[n_img:, n_img:] = self.token_rp_bucket[:t_txt, :t_txt]
        if n_img:
            idx[:n_img, :n_img] = self.image_rp_bucket[image_ids][:, image_ids] + n_tok
        return idx

    def _rel_table(self, layer: int) -> torch.Tensor:
        """Layer ``layer``'s [token table; image table; zero row] (text–image pairs use the zero row)."""
        return _rel_table([self.token_rel_pos_table_list[layer], self.image_rel_pos_table_list[layer]], True)

    # -- forward -----------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        patch_images: torch.Tensor | None = None,
        patch_masks: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> OFAEncoderOutput:
        """Encode image patches (when given) followed by the text; see the module docstring for the layout."""
        bsz, t_txt = self._validate(input_ids, patch_images, patch_masks, attention_mask, inputs_embeds)
        raw_positions = self.embed_positions(torch.arange(t_txt, device=self.embed_positions.weight.device))
        raw_positions = raw_positions.unsqueeze(0)
        hidden_states = self.embed_text(input_ids, inputs_embeds, raw_positions)
        padding_mask = self._text_padding_mask(input_ids, attention_mask, bsz, t_txt, hidden_states.device)
        positions = self.pos_ln(raw_positions)
        image_ids = None
        if patch_images is not None:
            image_states, image_ids = self.embed_image(patch_images)
            image_padding = self._image_padding_mask(patch_masks, bsz, image_ids.numel(), hidden_states.device)
            image_positions = self.image_pos_ln(self.embed_image_positions(image_ids)).unsqueeze(0)
            hidden_states = torch.cat([image_states, hidden_states], dim=1)
            padding_mask = torch.cat([image_padding, padding_mask], dim=1)
            positions = torch.cat([image_positions, positions], dim=1)
        blocked = None
        if bool(padding_mask.any()):
            hidden_states = hidden_states * (~padding_mask).unsqueeze(-1).to(hidden_states.dtype)
            blocked = padding_mask[:, None, None, :]
        bias = _SelfAttentionBias(self._position_bias(positions), self._bucket_index(image_ids, t_txt), blocked)
        hidden_states = self._run_layers(hidden_states, bias)
        return OFAEncoderOutput(hidden_states, padding_mask, positions)

    def _position_bias(self, positions: torch.Tensor) -> torch.Tensor:
        return absolute_position_bias(positions, positions, self.pos_q_linear, self.pos_k_linear, self.num_heads,
                                      self.pos_scaling)

    def _run_layers(self, hidden_states: torch.Tensor, bias: _SelfAttentionBias) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            hidden_states = layer(hidden_states, bias.for_layer(self._rel_table(i), hidden_states.dtype))
        if self.layer_norm is not None:
            hidden_states = self.layer_norm(hidden_states)
        return hidden_states


# ---------------------------------------------------------------------------------------------- decoder
class OFADecoder(nn.Module):
    def __init__(self, config: OFAConfig, embed_tokens: nn.Embedding) -> None:
        super().__init__()
        d, heads, num_layers = config.d_model, config.decoder_attention_heads, config.decoder_layers
        self.config = config
        self.embed_tokens = embed_tokens
        self.embed_scale = d**0.5 if config.scale_embedding else 1.0
        self.dropout = nn.Dropout(config.dropout)
        self.layernorm_embedding = nn.LayerNorm(d) if config.layernorm_embedding else None
        self.code_layernorm_embedding = nn.LayerNorm(d) if config.code_layernorm_embedding else None
        self.num_heads = heads
        self.pos_scaling = _position_scaling(config, heads)
        self.embed_positions = nn.Embedding(config.max_position_embeddings + 2, d)
        # Image positions are used by OFA's image-code generation only; kept for checkpoint compatibility.
        self.embed_image_positions = nn.Embedding(config.image_bucket_size**2 + 1, d)
        self.pos_ln = nn.LayerNorm(d)
        self.image_pos_ln = nn.LayerNorm(d)
        self.token_rel_pos_table_list = _relative_bias_tables(num_token_buckets(config.token_bucket_size), heads,
                                                              num_layers)
        self.image_rel_pos_table_list = _relative_bias_tables(num_image_buckets(config.image_bucket_size), heads,
                                                              num_layers)
        self.register_buffer("token_rp_bucket", token_bucket_positions(
            config.token_bucket_size, config.max_position_embeddings), persistent=False)
        self.register_buffer("image_rp_bucket", image_bucket_positions(config.image_bucket_size), persistent=False)
        self.self_pos_q_linear = nn.Linear(d, d)
        self.self_pos_k_linear = nn.Linear(d, d)
        self.cross_pos_q_linear = nn.Linear(d, d)
        self.cross_pos_k_linear = nn.Linear(d, d)
        rates = linear_rates(config.decoder_drop_path_rate, num_layers)
        self.layers = nn.ModuleList(OFADecoderLayer(config, r) for r in rates)
        self.layer_norm = nn.LayerNorm(d) if config.decoder_normalize_before else None
        self.output_projection = nn.Linear(d, config.vocab_size, bias=False)
        if config.share_decoder_input_output_embed:
            self.output_projection.weight = embed_tokens.weight

    def text_positions(self, start: int, end: int, device: torch.device) -> torch.Tensor:
        """Layer-normed text position embeddings ``[1, end − start, d]``."""
        return self.pos_ln(self.embed_positions(torch.arange(start, end, device=device))).unsqueeze(0)

    def forward(
        self,
        input_ids: torch.Tensor,
        encoder_outputs: OFAEncoderOutput,
        past: OFACache | None = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, OFACache | None]:
        """Logits [B, Tn, V] for the new tokens ``input_ids`` [B, Tn], placed after the ``past.length``
        cached positions; returns the extended cache when ``use_cache``."""
        start = self._check_inputs(input_ids, encoder_outputs, past)
        end = start + input_ids.shape[1]
        hidden_states = self._embed(input_ids, start, end)
        positions = self.text_positions(0, end, input_ids.device)  # cached and new positions [1, end, d]
        padding_mask = self._padding_mask(input_ids, past)  # [B, end]
        self_bias = self._self_attention_bias(positions, start, padding_mask)
        cross_key = past.cross_pos_key if past is not None else self._cross_position_key(encoder_outputs)
        cross_bias = self._cross_attention_bias(positions[:, start:], cross_key, encoder_outputs.padding_mask,
                                                hidden_states.dtype)
        layer_pasts = past.layers if past is not None else (None,) * len(self.layers)
        hidden_states, presents = self._run_layers(hidden_states, self_bias, encoder_outputs.last_hidden_state,
                                                   cross_bias, layer_pasts)
        logits = self.output_projection(hidden_states)
        return logits, (OFACache(presents, padding_mask, cross_key) if use_cache else None)

    # -- forward steps -----------------------------------------------------------------------------
    def _check_inputs(self, input_ids: torch.Tensor, encoder_outputs: OFAEncoderOutput,
                      past: OFACache | None) -> int:
        """Validate; return the position of the first new token (the cache length)."""
        cfg = self.config
        _check_ids("decoder_input_ids", input_ids, cfg.vocab_size)
        bsz, enc_bsz = input_ids.shape[0], encoder_outputs.last_hidden_state.shape[0]
        if enc_bsz != bsz:
            raise ValueError(f"decoder batch {bsz} != encoder batch {enc_bsz}")
        start = 0 if past is None else past.length
        if start + input_ids.shape[1] > cfg.max_position_embeddings:
            raise ValueError(f"decoder length {start + input_ids.shape[1]} exceeds "
                             f"max_position_embeddings={cfg.max_position_embeddings}")
        return start

    def _embed(self, input_ids: torch.Tensor, start: int, end: int) -> torch.Tensor:
        hidden_states = self.embed_scale * self.embed_tokens(input_ids)
        if self.config.entangle_position_embedding:
            hidden_states = hidden_states + self.embed_positions(torch.arange(start, end, device=input_ids.device))
        if self.layernorm_embedding is not None:
            hidden_states = self.layernorm_embedding(hidden_states)
        return self.dropout(hidden_states)

    def _padding_mask(self, input_ids: torch.Tensor, past: OFACache | None) -> torch.Tensor:
        """Bool [B, cached + new] (True = padding)."""
        pad = input_ids.eq(self.config.pad_token_id)
        return pad if past is None else torch.cat([past.padding_mask, pad], dim=1)

    def _self_attention_bias(self, positions: torch.Tensor, start: int,
                             padding_mask: torch.Tensor) -> _SelfAttentionBias:
        """New queries (from ``start``) against all keys: absolute + text relative bias; keys after the
        query and padding keys are blocked."""
        end = positions.shape[1]
        device = positions.device
        query_pos = torch.arange(start, end, device=device)
        blocked = (torch.arange(end, device=device)[None, :] > query_pos[:, None])[None, None]
        if bool(padding_mask.any()):
            blocked = blocked | padding_mask[:, None, None, :]
        position_bias = absolute_position_bias(positions[:, start:], positions, self.self_pos_q_linear,
                                               self.self_pos_k_linear, self.num_heads, self.pos_scaling)
        return _SelfAttentionBias(position_bias, self.token_rp_bucket[start:end, :end], blocked)

    def _cross_position_key(self, encoder_outputs: OFAEncoderOutput) -> torch.Tensor:
        """Projected encoder positions ``[1 or B, H, Ts, head_dim]``; cached across decoding steps."""
        return split_heads_key(encoder_outputs.position_embedding, self.cross_pos_k_linear, self.num_heads)

    def _cross_attention_bias(self, query_positions: torch.Tensor, cross_key: torch.Tensor,
                              encoder_padding_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Absolute-position bias only (no relative bias), encoder padding blocked."""
        t_new = query_positions.shape[1]
        query = self.cross_pos_q_linear(query_positions).view(1, t_new, self.num_heads, -1).transpose(1, 2)
        bias = torch.matmul(query * self.pos_scaling, cross_key.transpose(-1, -2))
        blocked = encoder_padding_mask[:, None, None, :] if bool(encoder_padding_mask.any()) else None
        return _blocked(bias.to(dtype), blocked)

    def _run_layers(self, hidden_states: torch.Tensor, self_bias: _SelfAttentionBias,
                    encoder_hidden_states: torch.Tensor, cross_bias: torch.Tensor,
                    layer_pasts: tuple) -> tuple[torch.Tensor, tuple[tuple[torch.Tensor, ...], ...]]:
        """All layers, then the final LayerNorm; returns the hidden states and every layer's cache."""
        presents = []
        for i, (layer, layer_past) in enumerate(zip(self.layers, layer_pasts, strict=True)):
            layer_bias = self_bias.for_layer(self.token_rel_pos_table_list[i].weight, hidden_states.dtype)
            hidden_states, present = layer(hidden_states, layer_bias, encoder_hidden_states, cross_bias, layer_past)
            presents.append(present)
        if self.layer_norm is not None:
            hidden_states = self.layer_norm(hidden_states)
        return hidden_states, tuple(presents)


# ---------------------------------------------------------------------------------------------- model
class OFAModel(nn.Module):
    """OFA encoder-decoder. Parameter names and shapes equal OFA-Sys' HF-format checkpoints."""

    encoder_input_names = ENCODER_INPUT_NAMES

    def __init__(self, config: OFAConfig, seed: int | None = None) -> None:
        super().__init__()
        self.config = config
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            shared = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_token_id)
            self.encoder = OFAEncoder(config, shared)
            self.decoder = OFADecoder(config, shared)
            self.apply(self._init_weights)
            with torch.no_grad():  # the tied output projection was re-drawn after the embedding: re-zero pad
                shared.weight[config.pad_token_id].zero_()

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()

    # -- construction helpers ----------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, seed: int | None = None, **overrides: Any) -> "OFAModel":
        """Random-weight model of a named preset (see :data:`mmprompt.models.ofa.config.PRESETS`)."""
        return cls(OFAConfig.from_preset(name, **overrides), seed=seed)


    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.embed_tokens

    # -- running -----------------------------------------------------------------------------------
    def encode(
        self,
        input_ids: torch.Tensor | None = None,
        patch_images: torch.Tensor | None = None,
        patch_masks: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> OFAEncoderOutput:
        return self.encoder(input_ids, patch_images, patch_masks, attention_mask, inputs_embeds)

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        encoder_outputs: OFAEncoderOutput,
        past: OFACache | None = None,
        use_cache: bool = True,
    ) -> tuple[torch.Tensor, OFACache | None]:
        """Logits of the NEW tokens ``decoder_input_ids`` (positions continue after ``past.length``)."""
        return self.decoder(decoder_input_ids, encoder_outputs, past, use_cache)

    @staticmethod
    def reorder_cache(past: OFACache, beam_idx: torch.Tensor) -> OFACache:
        return past.index_select(beam_idx)

    @staticmethod
    def reorder_encoder_outputs(encoder_outputs: OFAEncoderOutput, index: torch.Tensor) -> OFAEncoderOutput:
        return encoder_outputs.index_select(index)

    @staticmethod
    def expand_encoder_outputs(encoder_outputs: OFAEncoderOutput, times: int) -> OFAEncoderOutput:
        """Repeat every sample ``times`` times (sample-major), e.g. for beam search."""
        bsz = encoder_outputs.last_hidden_state.shape[0]
        index = torch.arange(bsz, device=encoder_outputs.last_hidden_state.device).repeat_interleave(times)
        return encoder_outputs.index_select(index)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        patch_images: torch.Tensor | None = None,
        patch_masks: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_outputs: OFAEncoderOutput | None = None,
        past_key_values: OFACache | None = None,
        use_cache: bool = False,
    ) -> OFAOutput:
        if decoder_input_ids is None:
            raise ValueError("decoder_input_ids is required (teacher forcing input [B, Tt])")
        if encoder_outputs is None:
            encoder_outputs = self.encode(input_ids, patch_images, patch_masks, attention_mask, inputs_embeds)
        logits, past = self.decoder(decoder_input_ids, encoder_outputs, past_key_values, use_cache)
        return OFAOutput(logits, encoder_outputs, past)


def set_drop_path_rate(model: OFAModel, rate: float) -> None:
    """Set the encoder and decoder stochastic depth to ``rate`` at the last layer (rising linearly from 0, as
    at construction; OFA's ``--encoder-drop-path-rate``/``--decoder-drop-path-rate``). Weights are untouched."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise ValueError(f"rate={rate!r}: must be a number in [0, 1)")
    from .resnet import DropPath

    for stack, field in ((model.encoder, "encoder_drop_path_rate"), (model.decoder, "decoder_drop_path_rate")):
        for layer, r in zip(stack.layers, linear_rates(float(rate), len(stack.layers))):
            layer.drop_path = DropPath(r) if r > 0 else nn.Identity()
        setattr(model.config, field, float(rate))
