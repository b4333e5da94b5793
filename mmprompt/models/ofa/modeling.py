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
from pathlib import Path
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


class _PositionTables(nn.Module):
    """Position embeddings, their LNs and the per-layer relative-bias tables shared by encoder and decoder."""

    def _init_positions(self, config: OFAConfig, num_layers: int, heads: int) -> None:
        d = config.d_model
        self.num_heads = heads
        self.pos_scaling = float(d / heads * config.attn_scale_factor) ** -0.5
        self.embed_positions = nn.Embedding(config.max_position_embeddings + 2, d)
        self.embed_image_positions = nn.Embedding(config.image_bucket_size**2 + 1, d)
        self.pos_ln = nn.LayerNorm(d)
        self.image_pos_ln = nn.LayerNorm(d)
        self.token_rel_pos_table_list = nn.ModuleList(
            nn.Embedding(num_token_buckets(config.token_bucket_size), heads) for _ in range(num_layers))
        self.image_rel_pos_table_list = nn.ModuleList(
            nn.Embedding(num_image_buckets(config.image_bucket_size), heads) for _ in range(num_layers))
        # Recomputed from the published formulas (not persistent: cheap to rebuild, large to store).
        self.register_buffer("token_rp_bucket", token_bucket_positions(
            config.token_bucket_size, config.max_position_embeddings), persistent=False)
        self.register_buffer("image_rp_bucket", image_bucket_positions(config.image_bucket_size), persistent=False)

    def text_positions(self, start: int, end: int, device: torch.device) -> torch.Tensor:
        """Layer-normed text position embeddings ``[1, end − start, d]``."""
        return self.pos_ln(self.embed_positions(torch.arange(start, end, device=device))).unsqueeze(0)


# ---------------------------------------------------------------------------------------------- encoder
class OFAEncoder(_PositionTables):
    def __init__(self, config: OFAConfig, embed_tokens: nn.Embedding) -> None:
        super().__init__()
        d = config.d_model
        self.config = config
        self.embed_tokens = embed_tokens
        self.embed_scale = d**0.5 if config.scale_embedding else 1.0
        self.dropout = nn.Dropout(config.dropout)
        self.type_embedding = nn.Embedding(2, d) if config.add_type_embedding else None
        self.embed_images = ResNet(config.resnet_layers, config.resnet_width, config.resnet_drop_path_rate)
        self.image_proj = nn.Linear(config.resnet_out_channels, d)
        self.patch_layernorm_embedding = nn.LayerNorm(d) if config.patch_layernorm_embedding else None
        self.layernorm_embedding = nn.LayerNorm(d) if config.layernorm_embedding else None
        self._init_positions(config, config.encoder_layers, config.encoder_attention_heads)
        self.pos_q_linear = nn.Linear(d, d)
        self.pos_k_linear = nn.Linear(d, d)
        rates = linear_rates(config.encoder_drop_path_rate, config.encoder_layers)
        self.layers = nn.ModuleList(OFAEncoderLayer(config, r) for r in rates)
        self.layer_norm = nn.LayerNorm(d) if config.encoder_normalize_before else None

    # -- input checks ------------------------------------------------------------------------------
    def _validate(self, input_ids, patch_images, patch_masks, attention_mask, inputs_embeds) -> tuple[int, int]:
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
        if patch_images is not None:
            if patch_images.dim() != 4 or patch_images.shape[0] != bsz or patch_images.shape[1] != 3:
                raise ValueError(f"patch_images must be [B={bsz}, 3, S, S]; got {tuple(patch_images.shape)}")
            grid = max(patch_grid_size(patch_images.shape[2]), patch_grid_size(patch_images.shape[3]))
            if grid > cfg.image_bucket_size:
                raise ValueError(
                    f"patch_images of {patch_images.shape[2]}×{patch_images.shape[3]} pixels give a {grid}-patch grid "
                    f"side, but image_bucket_size={cfg.image_bucket_size} allows at most {cfg.max_image_size} pixels "
                    "per side")
            if patch_masks is not None and patch_masks.numel() != bsz:
                raise ValueError(f"patch_masks must be Bool[B={bsz}]; got {tuple(patch_masks.shape)}")
        return bsz, t_txt

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

    # -- position biases ---------------------------------------------------------------------------
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

    def _layer_rel_bias(self, layer: int, idx: torch.Tensor) -> torch.Tensor:
        table = _rel_table([self.token_rel_pos_table_list[layer], self.image_rel_pos_table_list[layer]], True)
        return _gather_bias(table, idx)

    # -- forward -----------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        patch_images: torch.Tensor | None = None,
        patch_masks: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> OFAEncoderOutput:
        bsz, t_txt = self._validate(input_ids, patch_images, patch_masks, attention_mask, inputs_embeds)
        device = self.embed_positions.weight.device
        raw_pos = self.embed_positions(torch.arange(t_txt, device=device)).unsqueeze(0)
        x = self.embed_text(input_ids, inputs_embeds, raw_pos)
        if attention_mask is not None:
            pad = ~attention_mask.to(torch.bool)
        elif input_ids is not None:
            pad = input_ids.eq(self.config.pad_token_id)
        else:
            pad = torch.zeros(bsz, t_txt, dtype=torch.bool, device=x.device)
        pos = self.pos_ln(raw_pos)
        image_ids = None
        if patch_images is not None:
            image_x, image_ids = self.embed_image(patch_images)
            image_pad = torch.zeros(bsz, image_ids.numel(), dtype=torch.bool, device=x.device)
            if patch_masks is not None:  # samples without an image: mask their patches (as OFA's fairseq code)
                image_pad = image_pad | ~patch_masks.reshape(bsz, 1).to(torch.bool)
            x = torch.cat([image_x, x], dim=1)
            pad = torch.cat([image_pad, pad], dim=1)
            pos = torch.cat([self.image_pos_ln(self.embed_image_positions(image_ids)).unsqueeze(0), pos], dim=1)
        has_pad = bool(pad.any())
        if has_pad:
            x = x * (~pad).unsqueeze(-1).to(x.dtype)
        abs_bias = absolute_position_bias(pos, pos, self.pos_q_linear, self.pos_k_linear, self.num_heads,
                                          self.pos_scaling)
        idx = self._bucket_index(image_ids, t_txt)
        blocked = pad[:, None, None, :] if has_pad else None
        for i, layer in enumerate(self.layers):
            bias = _blocked((abs_bias + self._layer_rel_bias(i, idx)).to(x.dtype), blocked)
            x = layer(x, bias)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return OFAEncoderOutput(x, pad, pos)


# ---------------------------------------------------------------------------------------------- decoder
class OFADecoder(_PositionTables):
    def __init__(self, config: OFAConfig, embed_tokens: nn.Embedding) -> None:
        super().__init__()
        d = config.d_model
        self.config = config
        self.embed_tokens = embed_tokens
        self.embed_scale = d**0.5 if config.scale_embedding else 1.0
        self.dropout = nn.Dropout(config.dropout)
        self.layernorm_embedding = nn.LayerNorm(d) if config.layernorm_embedding else None
        self.code_layernorm_embedding = nn.LayerNorm(d) if config.code_layernorm_embedding else None
        self._init_positions(config, config.decoder_layers, config.decoder_attention_heads)
        self.self_pos_q_linear = nn.Linear(d, d)
        self.self_pos_k_linear = nn.Linear(d, d)
        self.cross_pos_q_linear = nn.Linear(d, d)
        self.cross_pos_k_linear = nn.Linear(d, d)
        rates = linear_rates(config.decoder_drop_path_rate, config.decoder_layers)
        self.layers = nn.ModuleList(OFADecoderLayer(config, r) for r in rates)
        self.layer_norm = nn.LayerNorm(d) if config.decoder_normalize_before else None
        self.output_projection = nn.Linear(d, config.vocab_size, bias=False)
        if config.share_decoder_input_output_embed:
            self.output_projection.weight = embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        encoder_outputs: OFAEncoderOutput,
        past: OFACache | None = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, OFACache | None]:
        """Logits [B, Tn, V] for the new tokens ``input_ids`` [B, Tn], placed after the ``past.length``
        cached positions; returns the extended cache when ``use_cache``."""
        cfg = self.config
        _check_ids("decoder_input_ids", input_ids, cfg.vocab_size)
        enc = encoder_outputs
        bsz, t_new = input_ids.shape
        if enc.last_hidden_state.shape[0] != bsz:
            raise ValueError(f"decoder batch {bsz} != encoder batch {enc.last_hidden_state.shape[0]}")
        start = 0 if past is None else past.length
        total = start + t_new
        if total > cfg.max_position_embeddings:
            raise ValueError(f"decoder length {total} exceeds max_position_embeddings={cfg.max_position_embeddings}")
        device = input_ids.device

        x = self.embed_scale * self.embed_tokens(input_ids)
        pos_all = self.text_positions(0, total, device)  # [1, total, d]
        pos_new = pos_all[:, start:]
        if cfg.entangle_position_embedding:
            x = x + self.embed_positions(torch.arange(start, total, device=device))
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        x = self.dropout(x)

        # self-attention: abs + rel bias, causal and padding blocking
        pad = input_ids.eq(cfg.pad_token_id)
        pad_all = pad if past is None else torch.cat([past.padding_mask, pad], dim=1)
        q_pos = torch.arange(start, total, device=device)
        blocked = (torch.arange(total, device=device)[None, :] > q_pos[:, None])[None, None]
        if bool(pad_all.any()):
            blocked = blocked | pad_all[:, None, None, :]
        self_abs = absolute_position_bias(pos_new, pos_all, self.self_pos_q_linear, self.self_pos_k_linear,
                                          self.num_heads, self.pos_scaling)
        idx = self.token_rp_bucket[start:total, :total]

        # cross-attention: abs bias only, encoder padding blocked
        cross_key = past.cross_pos_key if past is not None else split_heads_key(
            enc.position_embedding, self.cross_pos_k_linear, self.num_heads)
        cross_q = self.cross_pos_q_linear(pos_new).view(1, t_new, self.num_heads, -1).transpose(1, 2)
        cross_bias = torch.matmul(cross_q * self.pos_scaling, cross_key.transpose(-1, -2))
        enc_pad = enc.padding_mask
        cross_bias = _blocked(cross_bias.to(x.dtype), enc_pad[:, None, None, :] if bool(enc_pad.any()) else None)

        presents = []
        for i, layer in enumerate(self.layers):
            rel = _gather_bias(self.token_rel_pos_table_list[i].weight, idx)
            self_bias = _blocked((self_abs + rel).to(x.dtype), blocked)
            layer_past = past.layers[i] if past is not None else None
            x, present = layer(x, self_bias, enc.last_hidden_state, cross_bias, layer_past)
            presents.append(present)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        logits = self.output_projection(x)
        cache = OFACache(tuple(presents), pad_all, cross_key) if use_cache else None
        return logits, cache


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
