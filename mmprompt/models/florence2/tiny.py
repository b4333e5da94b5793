"""Tiny random Florence-2 checkpoints that load offline exactly like real ones (tests, CI notebooks).

:func:`save_tiny_florence2` writes ``config.json``, ``model.safetensors``, ``generation_config.json`` (Florence-2's
defaults) and the processor: a byte-level BPE trained locally on the synthetic world's texts and the prompts,
laid out like BART's (``<s>``=0 ``<pad>``=1 ``</s>``=2 ``<unk>``=3 … ``<mask>``), followed by Florence-2's
added tokens (``<od>``…, ``<loc_0>``…``<loc_999>``, the task markup tokens) and ``<image>``; and the image
processor settings of Florence-2 (square resize, ImageNet normalisation) at a small image size.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from mmprompt.core.atomic import atomic_dir, write_json
from mmprompt.core.checks import check_int
from mmprompt.models.florence2.conventions import (
    GENERATION_DEFAULTS,
    IMAGE_TOKEN,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NUM_LOC_BINS,
    PAD_ID,
    TASK_MARKUP_TOKENS,
    VE_PREMISE_PROMPT,
    VE_PROMPT,
)

logger = logging.getLogger(__name__)
SPEC_FILE = "mmprompt_tiny_spec.json"
_PARSE_TASKS = ("ocr", "phrase_grounding", "pure_text", "description_with_bboxes", "description_with_polygons",
                "polygons", "bboxes", "description_with_bboxes_or_polygons")


@dataclass
class TinyFlorence2Spec:
    """Sizes of a tiny random Florence-2 (defaults: ~0.1 M parameters, 32 px images → 17 image tokens)."""

    d_model: int = 32
    layers: int = 2
    heads: int = 2
    ffn_dim: int = 64
    image_size: int = 32
    vision_dims: tuple[int, int] = (8, 16)
    bpe_vocab: int = 400
    max_positions: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("d_model", "layers", "heads", "ffn_dim", "max_positions"):
            value = getattr(self, name)
            check_int(f"TinyFlorence2Spec.{name}", value, 1)
        if self.d_model % self.heads:
            raise ValueError(f"TinyFlorence2Spec.d_model={self.d_model} must be divisible by heads={self.heads}")
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 16 \
                or self.image_size % 8:
            raise ValueError(f"TinyFlorence2Spec.image_size={self.image_size!r}: must be a multiple of 8, >= 16")
        check_int("TinyFlorence2Spec.bpe_vocab", self.bpe_vocab, 300)
        if len(self.vision_dims) != 2 or self.vision_dims[1] % 2:
            raise ValueError(f"TinyFlorence2Spec.vision_dims={self.vision_dims!r}: two widths, the second even")

    @property
    def image_tokens(self) -> int:
        """DaViT with strides 4 and 2: an (S/8)² grid plus one pooled token."""
        return (self.image_size // 8) ** 2 + 1


def _tokenizer_texts() -> list[str]:
    from mmprompt.data.synth import tokenizer_corpus

    texts = tokenizer_corpus(n_scenes=60)
    prompts = ["What does the image describe?", "Locate the phrases in the caption:", VE_PROMPT, VE_PREMISE_PROMPT]
    return texts + prompts * 20 + [t.strip()[:1].upper() + t.strip()[1:] for t in texts[:400]]


def build_florence2_tokenizer(texts: Sequence[str] | None = None, bpe_vocab: int = 400) -> Any:
    """A byte-level BPE with BART's special-token layout trained on ``texts`` (default: the synthetic world's
    texts and the prompts), followed by Florence-2's added tokens and ``<image>`` (its image token)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [t for t in (texts if texts is not None else _tokenizer_texts()) if t]
    if not corpus:
        raise ValueError("texts: need at least one non-empty text")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)

    def plain(token: str) -> AddedToken:
        return AddedToken(token, special=False, normalized=False)

    tok.add_special_tokens([AddedToken("<mask>", special=True, normalized=False)])
    tok.add_tokens([plain(t) for t in TASK_MARKUP_TOKENS[:4]])
    tok.add_tokens([plain(f"<loc_{i}>") for i in range(NUM_LOC_BINS)])
    tok.add_tokens([plain(t) for t in TASK_MARKUP_TOKENS[4:]])
    tok.add_special_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        mask_token="<mask>", extra_special_tokens={"image_token": IMAGE_TOKEN},
    )


def build_florence2_processor(tokenizer: Any, image_size: int, image_tokens: int) -> Any:
    """Florence-2's processor around ``tokenizer`` with Florence-2's image settings at ``image_size``."""
    from transformers import Florence2Processor

    try:  # later 5.x releases split PIL and torchvision image processors
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # earlier 5.x: the PIL-based one is CLIPImageProcessor
        from transformers import CLIPImageProcessor as ImageProcessor

    square = {"height": image_size, "width": image_size}
    image_processor = ImageProcessor(
        size=square, crop_size=square, do_center_crop=False, do_resize=True, do_rescale=True, do_normalize=True,
        resample=3, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), image_seq_length=image_tokens,
    )
    post = {name: {} for name in _PARSE_TASKS}
    post["ocr"] = {"AREA_THRESHOLD": 0.0}
    return Florence2Processor(image_processor=image_processor, tokenizer=tokenizer, post_processor_config=post)


def tiny_florence2_config(spec: TinyFlorence2Spec, vocab_size: int, image_token_id: int) -> Any:
    """``Florence2Config`` of a tiny model (no dropout, sdpa attention)."""
    from transformers import BartConfig, Florence2Config

    text = BartConfig(
        vocab_size=vocab_size, d_model=spec.d_model, encoder_layers=spec.layers, decoder_layers=spec.layers,
        encoder_attention_heads=spec.heads, decoder_attention_heads=spec.heads, encoder_ffn_dim=spec.ffn_dim,
        decoder_ffn_dim=spec.ffn_dim, max_position_embeddings=spec.max_positions, dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0, pad_token_id=PAD_ID, bos_token_id=0, eos_token_id=2,
        decoder_start_token_id=2, forced_eos_token_id=2,
    )
    d0, d1 = spec.vision_dims
    vision = dict(
        depths=[1, 1], patch_size=[7, 3], patch_stride=[4, 2], patch_padding=[3, 1], patch_prenorm=[False, True],
        embed_dim=[d0, d1], num_heads=[1, 2], num_groups=[1, 2], window_size=2, projection_dim=spec.d_model,
        drop_path_rate=0.0, max_position_embeddings=max(8, spec.image_size // 8),
    )
    return Florence2Config(text_config=text.to_dict(), vision_config=vision, image_token_id=image_token_id)


def build_tiny_florence2(spec: TinyFlorence2Spec | None = None) -> tuple[torch.nn.Module, Any]:
    """A seeded random tiny Florence-2 (eval mode, sdpa, Florence-2's generation defaults) and its processor."""
    from transformers import Florence2ForConditionalGeneration, GenerationConfig

    spec = spec or TinyFlorence2Spec()
    tokenizer = build_florence2_tokenizer(bpe_vocab=spec.bpe_vocab)
    processor = build_florence2_processor(tokenizer, spec.image_size, spec.image_tokens)
    config = tiny_florence2_config(spec, len(tokenizer), tokenizer.image_token_id)
    config._attn_implementation = "sdpa"
    torch.manual_seed(spec.seed)
    model = Florence2ForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(**GENERATION_DEFAULTS)
    return model, processor


def save_tiny_florence2(out_dir: str | os.PathLike, spec: TinyFlorence2Spec | None = None) -> Path:
    """Build a tiny random Florence-2 and its processor and save both into ``out_dir`` (atomically replaced).

    The directory loads offline with :func:`~mmprompt.models.florence2.load_florence2` or ``from_pretrained``.
    The same spec (seed included) gives the same weights and tokenizer.
    """
    spec = spec or TinyFlorence2Spec()
    model, processor = build_tiny_florence2(spec)

    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        write_json(tmp / SPEC_FILE, _spec_dict(spec))
    out = Path(out_dir)
    logger.info("saved a tiny Florence-2 (%s parameters) to %s", f"{sum(p.numel() for p in model.parameters()):,}", out)
    return out


def _spec_dict(spec: TinyFlorence2Spec) -> dict[str, Any]:
    data = asdict(spec)
    data["vision_dims"] = list(spec.vision_dims)
    return data


def ensure_tiny_florence2(out_dir: str | os.PathLike, spec: TinyFlorence2Spec | None = None) -> Path:
    """``out_dir`` holding the tiny Florence-2 of ``spec``, built only when it is missing or was built from
    another spec (for notebooks' ``ci`` profile)."""
    spec = spec or TinyFlorence2Spec()
    out = Path(out_dir)
    marker = out / SPEC_FILE
    if marker.is_file() and (out / "config.json").is_file():
        if json.loads(marker.read_text()) == _spec_dict(spec):
            return out
        logger.info("%s was built from another spec: rebuilding it", out)
    return save_tiny_florence2(out, spec)
