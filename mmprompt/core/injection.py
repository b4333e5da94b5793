"""The one injection point shared by every backbone.

An attention module that supports prefixes calls :func:`extend_with_prefix` right before the
attention product, *after* its key/value projections and after its incremental cache was read and
written. When a prefix provider is attached to the module, P key/value columns are prepended and the
attention mask is widened so that every query sees every prefix column with zero bias (no position
bias, never masked). Prefixes therefore never enter a cache, are re-prepended at every decoding step,
and follow any batch size (beam search expands the batch; the prefix is expanded to match).

Per-row prefixes (a prompt bank serving a mixed batch): a provider may return ``[N, heads, P, head_dim]``
prefixes with a third item, an ``[N, P]`` column mask, boolean (True = a real prefix column of that row) or
additive float (0 = real, a large negative number = padding):
rows with shorter prompts, or none, get their padding columns blocked. A provider may also return None
(no prefix for this call).

OFA's attention (``mmprompt.models.ofa``) calls this directly; transformers' BART-family attention
reaches it through a registered attention function (``mmprompt.tuning.hf``).
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
import torch.nn.functional as F

#: The attribute of an attention module that holds its prefix provider (the model-level prompt module is
#: ``model.mmprompt_prefix``, :data:`mmprompt.tuning.prefix.MODULE_NAME`).
PREFIX_ATTR = "mmprompt_prefix_provider"


class PrefixProvider(Protocol):
    """Returns (key, value) prefixes shaped [B or 1, heads, P, head_dim] for a batch of size B, optionally
    with a boolean [B, P] column mask (True = attend), or None for no prefix."""

    def __call__(self, batch_size: int) -> tuple[torch.Tensor, ...] | None: ...


def attach(module: torch.nn.Module, provider: PrefixProvider | Callable) -> None:
    """Attach a prefix provider to an attention module (replacing any previous one)."""
    # object.__setattr__ keeps the provider out of the module's children and state dict.
    object.__setattr__(module, PREFIX_ATTR, provider)


def detach(module: torch.nn.Module) -> None:
    """Remove the prefix provider from an attention module, if any."""
    if PREFIX_ATTR in module.__dict__:
        object.__delattr__(module, PREFIX_ATTR)


def provider_of(module: torch.nn.Module) -> PrefixProvider | None:
    return module.__dict__.get(PREFIX_ATTR)


def extend_with_prefix(
    module: torch.nn.Module,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Prepend the module's prefix key/value columns, if it has a provider.

    ``key``/``value``: [B, heads, Tk, head_dim]. ``attn_mask``: None, an additive float mask
    (0 = attend, -inf/min = blocked) or a boolean mask (True = attend) whose last dim is Tk and
    whose leading dims broadcast against [B, heads, Tq]. The returned mask has Tk + P columns, the
    first P of them open with zero bias (or, with a per-row column mask, blocked where it is False).
    """
    provider = provider_of(module)
    if provider is None:
        return key, value, attn_mask
    batch = key.shape[0]
    given = provider(batch)
    if given is None:
        return key, value, attn_mask
    pk, pv = given[0], given[1]
    columns = given[2] if len(given) > 2 else None
    pk = pk.to(dtype=key.dtype).expand(batch, -1, -1, -1)
    pv = pv.to(dtype=value.dtype).expand(batch, -1, -1, -1)
    if pk.shape[1] != key.shape[1] or pk.shape[-1] != key.shape[-1]:
        raise ValueError(
            f"prefix shaped {tuple(pk.shape)} does not fit attention keys shaped {tuple(key.shape)} "
            f"(heads and head_dim must match)"
        )
    key = torch.cat([pk, key], dim=2)
    value = torch.cat([pv, value], dim=2)
    if columns is not None:
        return key, value, _row_mask(attn_mask, columns, key)
    if attn_mask is not None:
        n_prefix = pk.shape[2]
        fill = True if attn_mask.dtype == torch.bool else 0.0
        attn_mask = F.pad(attn_mask, (n_prefix, 0), value=fill)
    return key, value, attn_mask


def _row_mask(attn_mask: torch.Tensor | None, columns: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """``attn_mask`` widened by per-row prefix columns → [N, ..., P + Tk]. ``columns`` is [N, P]: boolean
    (True = attend) or additive float (0 = attend, a large negative number = blocked)."""
    batch, n_prefix = columns.shape
    if attn_mask is None:
        attn_mask = torch.zeros(1, 1, 1, key.shape[2] - n_prefix, dtype=key.dtype, device=key.device)
    while attn_mask.dim() < 4:
        attn_mask = attn_mask.unsqueeze(0)
    if attn_mask.dtype == torch.bool:
        prefix = columns if columns.dtype == torch.bool else columns.eq(0)
    elif columns.dtype == torch.bool:
        prefix = torch.zeros(columns.shape, dtype=attn_mask.dtype, device=columns.device)
        prefix = prefix.masked_fill(~columns, torch.finfo(attn_mask.dtype).min)
    else:
        prefix = columns.to(attn_mask.dtype)
    if attn_mask.shape[0] != batch:
        attn_mask = attn_mask.expand(batch, *attn_mask.shape[1:])
    out = F.pad(attn_mask, (n_prefix, 0))
    out[..., :n_prefix] = prefix[:, None, None, :]
    return out
