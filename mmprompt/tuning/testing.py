"""Tiny, seeded backbones for tests and CI notebooks (no downloads).

``tiny_bart`` builds a random ``BartForConditionalGeneration``; ``ToyVisionBart`` puts a conv +
BatchNorm image stem in front of one, so freezing of BatchNorm statistics can be checked before the
OFA model (with its ResNet) is available.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers import BartConfig, BartForConditionalGeneration


def tiny_bart_config(
    d_model: int = 16,
    layers: int = 2,
    heads: int = 2,
    vocab: int = 48,
    attn_implementation: str = "sdpa",
    **overrides,
) -> BartConfig:
    """A small BART config without dropout (deterministic in train mode)."""
    settings = dict(
        vocab_size=vocab,
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=2 * d_model,
        decoder_ffn_dim=2 * d_model,
        max_position_embeddings=64,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=None,
        attn_implementation=attn_implementation,
    )
    settings.update(overrides)
    return BartConfig(**settings)


def tiny_bart(seed: int = 0, **config_kwargs) -> BartForConditionalGeneration:
    """A seeded random tiny BART in eval mode."""
    torch.manual_seed(seed)
    model = BartForConditionalGeneration(tiny_bart_config(**config_kwargs))
    return model.eval()


class ToyVisionBart(nn.Module):
    """Image patches (conv + BatchNorm stem) followed by text tokens, fed to a tiny BART."""

    def __init__(self, seed: int = 0, **config_kwargs) -> None:
        super().__init__()
        self.bart = tiny_bart(seed, **config_kwargs)
        d_model = self.bart.config.d_model
        self.vision_stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU())
        self.image_proj = nn.Linear(8, d_model)

    def get_input_embeddings(self) -> nn.Module:
        return self.bart.get_input_embeddings()

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, **kwargs):
        patches = self.vision_stem(pixel_values).flatten(2).transpose(1, 2)
        embeds = torch.cat([self.image_proj(patches), self.bart.get_input_embeddings()(input_ids)], dim=1)
        return self.bart(inputs_embeds=embeds, **kwargs)


def tiny_florence2(seed: int = 0, image_token_id: int = 60):
    """A seeded random tiny Florence-2 (DaViT tower + tiny BART language model), eval mode.

    A 32×32 image yields 17 image tokens: inputs need that many ``image_token_id`` placeholders.
    """
    from transformers import Florence2Config, Florence2ForConditionalGeneration

    vision = dict(
        depths=[1, 1], patch_size=[7, 3], patch_stride=[4, 2], patch_padding=[3, 1], patch_prenorm=[False, True],
        embed_dim=[8, 16], num_heads=[1, 2], num_groups=[1, 2], window_size=2, projection_dim=16,
        drop_path_rate=0.0, max_position_embeddings=8,
    )
    config = Florence2Config(
        text_config=tiny_bart_config(vocab=64).to_dict(), vision_config=vision, image_token_id=image_token_id
    )
    torch.manual_seed(seed)
    return Florence2ForConditionalGeneration(config).eval()
