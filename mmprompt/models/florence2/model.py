"""Loading a native Florence-2 and generating with transformers' ``generate``; scoring and the backbone
object live in :mod:`mmprompt.experiment.florence2`."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from mmprompt.core.checks import read_json
from mmprompt.models.florence2.conventions import GENERATION_DEFAULTS, answer_text, loc_tokens_to_box
from mmprompt.models.florence2.data import model_inputs

logger = logging.getLogger(__name__)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")  # the ones prefixes can extend
NATIVE_CHECKPOINTS = "florence-community/Florence-2-base or florence-community/Florence-2-large"
_REMOTE_CODE_HINT = (
    "holds the original remote-code Florence-2 format (microsoft/Florence-2-*), which the native transformers "
    f"Florence2ForConditionalGeneration cannot load; use the converted native checkpoints ({NATIVE_CHECKPOINTS}, "
    "or their fine-tuned *-ft variants)")


def is_hub_id(text: str) -> bool:
    """Whether ``text`` looks like a hub repository id ``org/name`` (and is not a relative path)."""
    return bool(_HUB_ID.match(text)) and not text.startswith(".")


def _refuse_remote_code(source: str) -> None:
    """A clear error for the remote-code format (its config names the ``florence2_language`` sub-model)."""
    config = Path(source) / "config.json"
    if not config.is_file():
        return
    data = read_json(config, "config file")
    text_type = (data.get("text_config") or {}).get("model_type")
    if "auto_map" in data or text_type == "florence2_language":
        raise ValueError(f"model_dir={source!r} {_REMOTE_CODE_HINT}")


def _generation_defaults(model: torch.nn.Module, source: str) -> None:
    """Florence-2's decoding defaults when the checkpoint ships no ``generation_config.json``."""
    from transformers import GenerationConfig

    try:
        GenerationConfig.from_pretrained(source)
        return
    except OSError:
        pass
    logger.warning("%s has no generation_config.json: using Florence-2's decoding defaults %s", source,
                   GENERATION_DEFAULTS)
    for key, value in GENERATION_DEFAULTS.items():
        setattr(model.generation_config, key, value)


def _check_source(model_dir: str | os.PathLike) -> str:
    text = os.fspath(model_dir)
    path = Path(text).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model_dir={text!r}: no config.json (not a saved transformers model)")
        return str(path)
    if is_hub_id(text):
        return text  # a hub id: transformers downloads it where the network allows
    raise FileNotFoundError(f"model_dir={text!r}: no such directory (give a local directory or a hub id 'org/name')")


def load_florence2(
    model_dir: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    attn_implementation: str = "sdpa",
) -> tuple[torch.nn.Module, Any]:
    """Load a native Florence-2 (``Florence2ForConditionalGeneration``, eval mode) and its processor.

    ``model_dir`` is a directory written by ``save_pretrained`` (or a hub id such as
    ``florence-community/Florence-2-base`` where the network allows). The original ``microsoft/Florence-2-*``
    repositories hold remote code and are refused with a message naming the native conversions. A checkpoint
    without ``generation_config.json`` gets Florence-2's decoding defaults (beam 3, no-repeat 3, forced
    ``<s>``), with a warning.
    """
    from transformers import AutoConfig, AutoProcessor, Florence2ForConditionalGeneration

    if attn_implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation={attn_implementation!r}: allowed {ATTENTION_IMPLEMENTATIONS}")
    source = _check_source(model_dir)
    _refuse_remote_code(source)
    try:
        config = AutoConfig.from_pretrained(source)
    except ValueError as err:
        if "florence2_language" in str(err):
            raise ValueError(f"model_dir={source!r} {_REMOTE_CODE_HINT}") from None
        raise
    if config.model_type != "florence2":
        raise ValueError(f"model_dir={str(model_dir)!r} holds a {config.model_type!r} model; expected 'florence2'")
    kwargs: dict[str, Any] = {"attn_implementation": attn_implementation}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = Florence2ForConditionalGeneration.from_pretrained(source, **kwargs).to(device).eval()
    _generation_defaults(model, source)
    processor = AutoProcessor.from_pretrained(source)
    image_token = getattr(processor.tokenizer, "image_token_id", None)
    if image_token != model.config.image_token_id:
        raise ValueError(
            f"processor image token id {image_token} != model config image_token_id {model.config.image_token_id}"
        )
    vocab = model.config.text_config.vocab_size
    if image_token >= vocab:
        raise ValueError(f"image token id {image_token} lies outside the model's vocabulary of {vocab} tokens")
    if len(processor.tokenizer) > vocab:
        logger.warning("tokenizer has %d tokens, the model's vocabulary %d", len(processor.tokenizer), vocab)
    logger.info("loaded Florence-2 from %s (%s parameters)", source, f"{sum(p.numel() for p in model.parameters()):,}")
    return model, processor


def enable_checkpointing(model: torch.nn.Module, use_reentrant: bool = False) -> None:
    """Activation checkpointing of a transformers model under the installed release's method name
    (non-reentrant by default: what prefixes need)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    else:  # transformers releases before the rename
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})


# ------------------------------------------------------------------ generation


@torch.no_grad()
def generate_for_batch(model: torch.nn.Module, batch: dict, **generate_kwargs: Any) -> torch.Tensor:
    """``model.generate`` on a batch-contract batch (the model's generation config supplies the rest)."""
    inputs = {k: v for k, v in model_inputs(batch).items() if k != "decoder_input_ids"}
    return model.generate(**inputs, **generate_kwargs)


def decode_predictions(task: str, tokenizer: Any, sequences: torch.Tensor, image_size: int) -> list[Any]:
    """Generated ids → boxes (refcoco: pixels of the S × S image, None when no box was written) or text."""
    texts = tokenizer.batch_decode(sequences, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    if task == "refcoco":
        return [loc_tokens_to_box(t, image_size) for t in texts]
    if task == "caption":
        return [t.strip() for t in texts]
    return [answer_text(t) for t in texts]


