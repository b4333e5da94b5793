"""Shallow prompt tuning (the contrast to prefix tuning): P soft embeddings at the encoder input only.

Two forward pre-hooks do the work, so no modeling code changes:

* on the encoder stack (the module owning ``encoder.layers``): ``input_ids`` are embedded with the
  encoder's own ``embed_tokens`` (so any embedding scale applies), the P soft embeddings are prepended
  to ``inputs_embeds``, and a 2-D ``attention_mask`` of length T is widened to P + T with ones;
* on the root model: a 2-D ``attention_mask`` that still has the un-prompted length (T, or the encoder
  output length minus P during generation's decoding steps) is widened the same way, so the decoder's
  cross-attention mask matches the prompted encoder output.

The encoder stack must accept ``input_ids`` / ``inputs_embeds`` / ``attention_mask`` keywords
(transformers' BART encoder and Florence-2's language model do). Real tokens move P positions to the
right, as in every shallow prompt-tuning implementation.
"""

from __future__ import annotations

from typing import ClassVar

import inspect
import logging
from dataclasses import dataclass
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmprompt.core.checks import check_int
from mmprompt.tuning import state as st
from mmprompt.tuning.sites import discover_sites

logger = logging.getLogger(__name__)

MODULE_NAME = "mmprompt_shallow"


@dataclass
class ShallowPromptConfig(st.PromptInit):
    """length: number of soft tokens (>= 1); the initialisation fields come from
    :class:`~mmprompt.tuning.state.PromptInit`."""

    method: ClassVar[str] = "shallow"  # the name in the method registry

    length: int = 64

    def __post_init__(self) -> None:
        check_int("length", self.length, 1)
        self._check_init(self.length)


class ShallowPrompt(nn.Module):
    """The P soft input embeddings."""

    def __init__(self, length: int, d_model: int) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.zeros(length, d_model))
        object.__setattr__(self, "_model_ref", None)  # plain attribute: not a submodule

    @property
    def length(self) -> int:
        return self.embedding.shape[0]

    def remove(self) -> None:
        if self._model_ref is None:
            raise ValueError("this ShallowPrompt is not applied to a model")
        remove_shallow_prompt(self._model_ref)


def _as_kwargs(module: nn.Module, args: tuple, kwargs: dict) -> dict:
    """Positional arguments of ``module.forward`` turned into keywords."""
    if not args:
        return dict(kwargs)
    bound = inspect.signature(module.forward).bind_partial(*args, **kwargs).arguments
    out = {}
    for name, value in bound.items():
        if inspect.signature(module.forward).parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        else:
            out[name] = value
    return out


def _widen(mask: torch.Tensor | None, length: int, n_prompt: int) -> torch.Tensor | None:
    """Prepend ``n_prompt`` open positions to a 2-D mask whose length is still ``length``."""
    if mask is None or mask.dim() != 2 or mask.shape[-1] != length:
        return mask
    return F.pad(mask, (n_prompt, 0), value=1)


def _encoder_hook(prompt: ShallowPrompt, embed: nn.Module):
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kwargs = _as_kwargs(module, args, kwargs)
        ids, embeds = kwargs.get("input_ids"), kwargs.get("inputs_embeds")
        if embeds is None:
            if ids is None:
                return (), kwargs
            embeds = embed(ids)
        batch, length = embeds.shape[:2]
        soft = prompt.embedding.to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1)
        kwargs["inputs_embeds"] = torch.cat([soft, embeds], dim=1)
        mask = kwargs.get("attention_mask")
        if mask is None and ids is not None and embed.padding_idx is not None:
            mask = ids.ne(embed.padding_idx).long()  # the ids carried the padding; the embeddings will not
        kwargs["input_ids"] = None
        if mask is not None and mask.dim() == 2 and mask.shape[-1] not in (length, length + prompt.length):
            raise ValueError(
                f"attention_mask length {mask.shape[-1]} fits neither {length} nor {length + prompt.length}"
            )
        kwargs["attention_mask"] = _widen(mask, length, prompt.length)
        return (), kwargs

    return hook


def _encoder_length(kwargs: dict, n_prompt: int) -> int | None:
    outputs = kwargs.get("encoder_outputs")
    if outputs is not None:
        hidden = outputs[0] if isinstance(outputs, (tuple, list)) else outputs.last_hidden_state
        return hidden.shape[1] - n_prompt
    for name in ("input_ids", "inputs_embeds"):
        if kwargs.get(name) is not None:
            return kwargs[name].shape[1]
    return None


def _root_hook(prompt: ShallowPrompt):
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kwargs = _as_kwargs(module, args, kwargs)
        length = _encoder_length(kwargs, prompt.length)
        if length is not None:
            kwargs["attention_mask"] = _widen(kwargs.get("attention_mask"), length, prompt.length)
        return (), kwargs

    return hook


def _token_ids(config: ShallowPromptConfig, emb: nn.Embedding, gen: torch.Generator) -> torch.Tensor:
    if config.init_token_ids is not None:
        ids = torch.tensor(config.init_token_ids)
        if int(ids.max()) >= emb.num_embeddings:
            raise ValueError(f"init_token_ids contains {int(ids.max())}, beyond the vocabulary of {emb.num_embeddings}")
        return ids
    candidates = torch.arange(emb.num_embeddings)
    if emb.padding_idx is not None:
        candidates = candidates[candidates != emb.padding_idx]
    if config.length <= len(candidates):
        return candidates[torch.randperm(len(candidates), generator=gen)[: config.length]]
    return candidates[torch.randint(len(candidates), (config.length,), generator=gen)]


def apply_shallow_prompt(model: nn.Module, config: ShallowPromptConfig) -> ShallowPrompt:
    """Prepend P trainable soft tokens to the encoder input; everything else is frozen."""
    if not isinstance(config, ShallowPromptConfig):
        raise ValueError(f"config must be a ShallowPromptConfig, got {type(config).__name__}")
    st.ensure_free(model, ShallowPromptConfig.method)
    st.check_prompt_length(model, config.length)
    backbone = discover_sites(model)
    if "encoder" not in backbone.stacks:
        raise ValueError(f"{type(model).__name__} has no encoder stack for a shallow prompt")
    encoder = model.get_submodule(backbone.stacks["encoder"].path)
    embed = getattr(encoder, "embed_tokens", None)
    embed = embed if isinstance(embed, nn.Module) else st.input_embeddings(model)
    d_model = backbone.stacks["encoder"].d_model
    prompt = ShallowPrompt(config.length, d_model)
    gen = torch.Generator().manual_seed(config.seed)
    with torch.no_grad():
        if config.init == "vocab":
            ids = _token_ids(config, st.input_embeddings(model), gen)
            weight = embed.weight if hasattr(embed, "weight") else None
            device = weight.device if weight is not None else None
            prompt.embedding.copy_(embed(ids.to(device)).float())
        else:
            prompt.embedding.copy_(torch.randn(config.length, d_model, generator=gen) * config.init_std)
    reference = backbone.sites[0].module.q_proj.weight
    prompt.to(device=reference.device, dtype=reference.dtype)

    state = st.begin(model, ShallowPromptConfig.method, config)
    state.handle = prompt
    st.add_submodule(model, state, MODULE_NAME, prompt)
    st.freeze_all_but(model, state, lambda name, _: name.startswith(MODULE_NAME + "."))
    st.freeze_batchnorm(model, state)
    st.add_hook(state, encoder.register_forward_pre_hook(_encoder_hook(prompt, embed), with_kwargs=True))
    st.add_hook(state, model.register_forward_pre_hook(_root_hook(prompt), with_kwargs=True))
    object.__setattr__(prompt, "_model_ref", model)
    state.undo.append(lambda: object.__setattr__(prompt, "_model_ref", None))
    logger.info("shallow prompt: %d soft tokens of width %d", config.length, d_model)
    return prompt


def remove_shallow_prompt(model: nn.Module) -> ShallowPromptConfig:
    """Remove the shallow prompt and restore the model exactly."""
    return st.remove_current(model, ShallowPromptConfig.method).config
