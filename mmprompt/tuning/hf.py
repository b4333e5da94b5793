"""Prefix injection for transformers' BART-family attention (BART, mBART, Florence-2's language model).

transformers' ``BartAttention.forward`` projects q/k/v, reads/writes its cache, then calls the
attention function registered under ``config._attn_implementation``. This module registers two such
functions, ``mmprompt_prefix_sdpa`` and ``mmprompt_prefix_eager``: each calls
:func:`mmprompt.core.injection.extend_with_prefix` on the module (a no-op for modules without a
provider) and delegates to the implementation the model was using. Prefixes are applied by pointing
the configs of the targeted attention modules at these names (:func:`enable`) and undone by restoring
the original names (:func:`disable`). No modeling code is copied and no cache plumbing is touched:

* the cache stores the real keys only (the call happens after ``cache.update``);
* beam search / any batch: the provider returns [1, H, P, hd] and ``extend_with_prefix`` expands it;
* masks as passed in 5.x: ``None`` (sdpa without padding), a 4-D bool mask (sdpa with padding) or a
  4-D additive float mask (eager) — each is widened by P open columns. A causal module with ``None``
  and more than one query (sdpa's ``is_causal`` fast path, whose top-left alignment and key cropping
  would be wrong once prefix columns exist) gets an explicit bottom-right-aligned causal mask first.

With ``output_attentions`` (eager) the returned weights include the P prefix columns first.

Supported base implementations: ``sdpa`` and ``eager`` (flash/flex kernels take no explicit mask with
extra columns; :func:`enable` refuses them with a clear message).
"""

from __future__ import annotations

import logging
import sys
from typing import Callable, Iterable

import torch
import torch.nn as nn
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from mmprompt.core.injection import extend_with_prefix

logger = logging.getLogger(__name__)

SUPPORTED_BASES: tuple[str, ...] = ("sdpa", "eager")
PREFIX_IMPLEMENTATIONS: dict[str, str] = {base: f"mmprompt_prefix_{base}" for base in SUPPORTED_BASES}
_BASE_OF = {name: base for base, name in PREFIX_IMPLEMENTATIONS.items()}


def _plain_eager(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention, used only when the module's modeling file has no `eager_attention_forward`."""
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = nn.functional.softmax(weights, dim=-1)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def _eager_for(module: nn.Module) -> Callable:
    """The eager function of the module's own modeling file (what the model itself would call)."""
    return getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", _plain_eager)


def _causal_mask(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Additive [1, 1, Tq, Tk] causal mask aligned bottom-right (queries are the last Tq positions)."""
    q_len, k_len = query.shape[2], key.shape[2]
    rows = torch.arange(q_len, device=query.device)[:, None] + (k_len - q_len)
    allowed = torch.arange(k_len, device=query.device)[None, :] <= rows
    mask = torch.zeros(q_len, k_len, dtype=query.dtype, device=query.device)
    return mask.masked_fill(~allowed, torch.finfo(query.dtype).min)[None, None]


def _make_attention(base: str) -> Callable:
    def attention(module, query, key, value, attention_mask, **kwargs):
        if (
            attention_mask is None
            and query.shape[2] > 1
            and getattr(module, "is_causal", False)
            and kwargs.get("is_causal", True) is not False
        ):
            attention_mask = _causal_mask(query, key)
        key, value, attention_mask = extend_with_prefix(module, key, value, attention_mask)
        delegate = ALL_ATTENTION_FUNCTIONS["sdpa"] if base == "sdpa" else _eager_for(module)
        return delegate(module, query, key, value, attention_mask, **kwargs)

    attention.__name__ = f"mmprompt_prefix_{base}_attention"
    return attention


def _register() -> None:
    for base, name in PREFIX_IMPLEMENTATIONS.items():
        AttentionInterface.register(name, _make_attention(base))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])


_register()


def enable(modules: Iterable[nn.Module]) -> list[tuple[object, str | None]]:
    """Point the configs of the given transformers attention modules at the prefix implementations.

    Returns the (config, original implementation) pairs that :func:`disable` restores. Raises
    ``ValueError`` (before changing anything) if a module has no config or uses an unsupported backend.
    """
    configs: dict[int, object] = {}
    for module in modules:
        config = getattr(module, "config", None)
        if config is None or not hasattr(config, "_attn_implementation"):
            raise ValueError(f"{type(module).__name__} has no `config._attn_implementation`; cannot inject prefixes")
        current = config._attn_implementation
        if current in _BASE_OF:
            raise ValueError("prefix attention is already enabled on this model; remove the current method first")
        if (current or "eager") not in SUPPORTED_BASES:
            raise ValueError(
                f"attention implementation {current!r} cannot take prefixes; allowed: {list(SUPPORTED_BASES)} "
                f"(call model.set_attn_implementation('sdpa') first)"
            )
        configs[id(config)] = config
    restore = []
    for config in configs.values():
        original = config._attn_implementation
        restore.append((config, original))
        config._attn_implementation_internal = PREFIX_IMPLEMENTATIONS[original or "eager"]
    logger.debug("prefix attention enabled on %d config(s)", len(restore))
    return restore


def check_enabled(restore: list[tuple[object, str | None]]) -> None:
    """Raise if someone switched an enabled config to another implementation (prefixes would be skipped)."""
    for config, original in restore:
        current = config._attn_implementation
        if current not in _BASE_OF:
            raise ValueError(
                f"the attention implementation was changed to {current!r} while prefixes are applied, so they "
                f"would be ignored; remove the method, change the implementation, then apply it again"
            )


def disable(restore: list[tuple[object, str | None]]) -> None:
    """Undo :func:`enable`."""
    for config, original in restore:
        config._attn_implementation_internal = original
