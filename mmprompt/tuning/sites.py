"""Find the attention sites of a BART-family encoder-decoder by module name.

A *site kind* is one of ``encoder_self``, ``decoder_self`` and ``decoder_cross``. Any module that owns
``q_proj``/``k_proj``/``v_proj``/``out_proj`` and whose dotted name ends in
``(encoder|decoder).layers.N.(self_attn|cross_attn|encoder_attn)`` is a site; the same rule fits OFA
(``cross_attn``), transformers' BART (``encoder_attn``) and Florence-2's language model
(``model.language_model.encoder...``). Modules below a vision tower (a path component containing
``vision``, ``visual`` or ``image``) are skipped, so a CLIP-style image encoder with the same layout is
never mistaken for the text encoder.

Sizes (layers, heads, head_dim, d_model) are read from the modules themselves, never from a config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch.nn as nn

SITE_KINDS: tuple[str, ...] = ("encoder_self", "decoder_self", "decoder_cross")
STACKS: tuple[str, ...] = ("encoder", "decoder")
_SITE_RE = re.compile(r"^(?:(.*)\.)?(encoder|decoder)\.layers\.(\d+)\.(self_attn|cross_attn|encoder_attn)$")
_VISION_WORDS = ("vision", "visual", "image")
_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")


def stack_of(kind: str) -> str:
    """The stack ("encoder" or "decoder") a site kind lives in."""
    return kind.split("_", 1)[0]


@dataclass(frozen=True)
class AttentionSite:
    """One attention module that can receive a prefix."""

    name: str  # dotted module path inside the root model
    kind: str  # encoder_self | decoder_self | decoder_cross
    layer: int
    heads: int
    head_dim: int
    d_model: int  # width of the query input (q_proj.in_features)
    module: nn.Module = field(compare=False, repr=False)

    @property
    def stack(self) -> str:
        return stack_of(self.kind)

    @property
    def kv_dim(self) -> int:
        """heads × head_dim: the width of one key (or value) prefix vector."""
        return self.heads * self.head_dim

    @property
    def layer_path(self) -> str:
        """Dotted path of the layer that owns this attention module."""
        return self.name.rsplit(".", 1)[0]


@dataclass(frozen=True)
class StackInfo:
    """Sizes of one stack (encoder or decoder) read from its self-attention modules."""

    name: str  # "encoder" | "decoder"
    path: str  # dotted path of the module owning `.layers` (e.g. "model.encoder")
    layers: int
    heads: int
    head_dim: int
    d_model: int

    def as_dict(self) -> dict[str, int]:
        return {"layers": self.layers, "heads": self.heads, "head_dim": self.head_dim, "d_model": self.d_model}


@dataclass(frozen=True)
class BackboneSites:
    """All attention sites of a model, grouped per kind, plus per-stack sizes."""

    sites: tuple[AttentionSite, ...]
    stacks: dict[str, StackInfo]

    def of_kind(self, kind: str) -> list[AttentionSite]:
        """Sites of one kind sorted by layer index."""
        return sorted((s for s in self.sites if s.kind == kind), key=lambda s: s.layer)

    def layer_paths(self, stack: str) -> list[str]:
        """Dotted paths of the layers of a stack, bottom to top."""
        kind = f"{stack}_self"
        return [s.layer_path for s in self.of_kind(kind)]


def _heads_and_head_dim(name: str, module: nn.Module) -> tuple[int, int]:
    k_out = module.k_proj.out_features
    heads = getattr(module, "num_heads", None) or getattr(module, "num_attention_heads", None)
    head_dim = getattr(module, "head_dim", None)
    if heads is None and head_dim is None:
        raise ValueError(
            f"attention module {name!r} exposes neither `num_heads` nor `head_dim`; cannot size its prefixes"
        )
    if heads is None:
        heads = k_out // head_dim
    if head_dim is None:
        head_dim = k_out // heads
    if heads * head_dim != k_out:
        raise ValueError(
            f"attention module {name!r}: num_heads {heads} × head_dim {head_dim} != k_proj.out_features {k_out}"
        )
    return int(heads), int(head_dim)


def _is_vision(prefix: str | None) -> bool:
    if not prefix:
        return False
    return any(word in part.lower() for part in prefix.split(".") for word in _VISION_WORDS)


def discover_sites(model: nn.Module) -> BackboneSites:
    """Find every prefixable attention module of ``model`` (see module docstring for the rule)."""
    sites: list[AttentionSite] = []
    stack_paths: dict[str, set[str]] = {s: set() for s in STACKS}
    for name, module in model.named_modules():
        match = _SITE_RE.match(name)
        if match is None or not all(isinstance(getattr(module, p, None), nn.Linear) for p in _PROJECTIONS):
            continue
        owner, stack, layer, attn = match.groups()
        if _is_vision(owner):
            continue
        kind = f"{stack}_self" if attn == "self_attn" else f"{stack}_cross"
        if kind not in SITE_KINDS:  # an encoder with cross-attention is not a BART-family layout
            raise ValueError(f"unexpected attention site {name!r}: cross-attention inside an encoder stack")
        heads, head_dim = _heads_and_head_dim(name, module)
        sites.append(AttentionSite(name, kind, int(layer), heads, head_dim, module.q_proj.in_features, module))
        stack_paths[stack].add(f"{owner}.{stack}" if owner else stack)
    for stack, paths in stack_paths.items():
        if len(paths) > 1:
            raise ValueError(f"found several {stack} stacks {sorted(paths)}; cannot tell which one to tune")
    if not sites:
        raise ValueError(
            f"no BART-family attention modules (q_proj/k_proj/v_proj/out_proj under "
            f"'encoder|decoder.layers.N.self_attn|cross_attn|encoder_attn') found in {type(model).__name__}"
        )
    stacks = {stack: _stack_info(stack, next(iter(paths)), sites) for stack, paths in stack_paths.items() if paths}
    return BackboneSites(tuple(sites), stacks)


def _stack_info(stack: str, path: str, sites: list[AttentionSite]) -> StackInfo:
    own = sorted((s for s in sites if s.kind == f"{stack}_self"), key=lambda s: s.layer)
    if not own:
        raise ValueError(f"the {stack} stack at {path!r} has no self-attention modules")
    indices = [s.layer for s in own]
    if indices != list(range(len(own))):
        raise ValueError(f"{stack} self-attention layers are not numbered 0..{len(own) - 1}: {indices}")
    shapes = {(s.heads, s.head_dim, s.d_model) for s in own}
    if len(shapes) != 1:
        raise ValueError(f"{stack} layers differ in (heads, head_dim, d_model): {sorted(shapes)}")
    heads, head_dim, d_model = shapes.pop()
    return StackInfo(stack, path, len(own), heads, head_dim, d_model)
