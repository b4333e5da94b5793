"""Prefix tuning: learned per-layer key/value prefixes for BART-family encoder-decoders (OFA-PT).

Layout (OFA's ``PromptEncoder``): per site kind a flat table ``Embedding(P, n·2·kv)`` where ``n`` is the
number of targeted layers of that site (all L layers by default, as in OFA) and ``kv`` = heads·head_dim;
targeted layer slot ``s`` owns columns ``[2s·kv, (2s+1)·kv)`` as its key and the next ``kv`` as its
value, each head-major (H × head_dim). With ``reparam=h`` the table is produced by OFA's projection
``Embedding(P, d) → Linear(d→h) → ReLU → Linear(h→n·2·kv)``; :func:`fold` turns it back into a flat table.

The :class:`PrefixModule` is registered on the model as ``model.mmprompt_prefix``: ``model.parameters()``,
``model.to()`` and ``model.train()/eval()`` include it, and the training loop simply collects the
parameters with ``requires_grad``. The whole backbone is frozen, BatchNorm running statistics included.

Each site's table is computed once per stack forward (a forward pre-hook on the encoder/decoder module,
i.e. outside any per-layer gradient-checkpoint region) and sliced per layer; it is reused across
forwards (e.g. generation steps) only when no gradient is recorded, no dropout is active and no prompt
parameter changed in place.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmprompt.core.checks import check_int, check_number
from mmprompt.tuning import state as st
from mmprompt.core.injection import attach, detach
from mmprompt.tuning.sites import SITE_KINDS, STACKS, AttentionSite, BackboneSites, discover_sites, stack_of

logger = logging.getLogger(__name__)

MODULE_NAME = "mmprompt_prefix"
DEFAULT_SITES: tuple[str, ...] = ("encoder_self", "decoder_self")
DEPTH_FROM: tuple[str, ...] = ("bottom", "top")


def _check_layer_list(name: str, layers: Any) -> tuple[int, ...]:
    if not isinstance(layers, (list, tuple)) or not layers:
        raise ValueError(f"{name}={layers!r}: expected a non-empty list of layer indices")
    if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in layers):
        raise ValueError(f"{name}={layers!r}: layer indices must be integers >= 0")
    if len(set(layers)) != len(layers):
        raise ValueError(f"{name}={layers!r}: layer indices must be unique")
    return tuple(sorted(layers))


@dataclass
class PrefixConfig(st.PromptInit):
    """Prefix-tuning settings, validated at construction.

    length: prompt length P (>= 1). The paper recommends 64.
    sites: subset of ("encoder_self", "decoder_self", "decoder_cross"); default the paper's two.
    depth, depth_from: how many layers of each stack get prefixes — None = every layer (the paper); an int
        k = k layers counted from ``depth_from`` ("bottom" = layers 0..k-1, "top" = the last k).
    layers: instead of ``depth``, the explicit layer indices per stack, e.g. ``{"encoder": [0, 1],
        "decoder": [5]}``. Both are checked against the real stack depths when applied.
    reparam: train the prefixes through OFA's MLP reparameterisation (folded away after training) instead
        of a flat table (OFA's default). reparam_hidden: the MLP's hidden size; None = OFA's 2·d_model.
    dropout: dropout on the prefix table while training. Default 0.2 = OFA's hard-coded value (one mask
        per forward pass, shared by the batch).
    init (from :class:`~mmprompt.tuning.state.PromptInit`): "normal" = N(0, init_std) for every prompt
        parameter (OFA's BERT init). "vocab" = P token ids (``init_token_ids``, else drawn with ``seed``) are
        embedded with the backbone's token embedding, layer-normalised without affine, and passed through
        each targeted layer's own ``k_proj``/``v_proj``, so prefixes start in-distribution. With ``reparam``
        the normalised embeddings initialise the MLP's input embedding and the MLP keeps the normal init.
    """

    method: ClassVar[str] = "prefix"  # the name in the method registry

    length: int = 64
    sites: tuple[str, ...] = DEFAULT_SITES
    depth: int | None = None
    depth_from: str = "bottom"
    layers: dict[str, tuple[int, ...]] | None = None
    reparam: bool = False
    reparam_hidden: int | None = None
    dropout: float = 0.2

    def __post_init__(self) -> None:
        check_int("length", self.length, 1)
        sites = (self.sites,) if isinstance(self.sites, str) else tuple(self.sites)
        bad = [s for s in sites if s not in SITE_KINDS]
        if bad or not sites or len(set(sites)) != len(sites):
            raise ValueError(f"sites={self.sites!r}: must be a non-empty set of distinct values from {SITE_KINDS}")
        self.sites = tuple(s for s in SITE_KINDS if s in sites)
        self._check_depth()
        if not isinstance(self.reparam, bool):
            raise ValueError(f"reparam={self.reparam!r}: must be True or False (the hidden size is reparam_hidden)")
        if self.reparam_hidden is not None:
            check_int("reparam_hidden", self.reparam_hidden, 1)
            if not self.reparam:
                raise ValueError(f"reparam_hidden={self.reparam_hidden!r} needs reparam=True")
        if not 0.0 <= check_number("dropout", self.dropout) < 1.0:
            raise ValueError(f"dropout={self.dropout!r}: allowed a number in [0, 1)")
        self._check_init(self.length)

    def _check_depth(self) -> None:
        if self.depth_from not in DEPTH_FROM:
            raise ValueError(f"depth_from={self.depth_from!r}: allowed {DEPTH_FROM}")
        if self.depth is not None and (isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 1):
            raise ValueError(f"depth={self.depth!r}: must be None (every layer) or an integer >= 1; "
                             "for explicit layer lists use layers={'encoder': [...], 'decoder': [...]}")
        if self.layers is None:
            return
        if self.depth is not None:
            raise ValueError(f"depth={self.depth!r} and layers={self.layers!r}: give one of them")
        if not isinstance(self.layers, dict) or not self.layers or any(k not in STACKS for k in self.layers):
            raise ValueError(f"layers={self.layers!r}: a dict from stacks {STACKS} to lists of layer indices")
        self.layers = {k: _check_layer_list(f"layers[{k!r}]", v) for k, v in self.layers.items()}

    def hidden_size(self, d_model: int) -> int | None:
        """The reparameterisation MLP's hidden size on a backbone of width ``d_model`` (None: flat table)."""
        if not self.reparam:
            return None
        return self.reparam_hidden if self.reparam_hidden is not None else 2 * d_model

    def layers_for(self, stack: str, n_layers: int) -> list[int]:
        """The layer indices of a stack with ``n_layers`` layers that receive prefixes."""
        if self.layers is not None:
            chosen = self.layers.get(stack)
            if chosen is None:
                raise ValueError(f"layers={self.layers!r} has no entry for the {stack} stack, which the sites "
                                 f"{self.sites} use")
            if max(chosen) >= n_layers:
                raise ValueError(f"layers for the {stack} stack list layer {max(chosen)}, but it has {n_layers} "
                                 f"layers (0..{n_layers - 1})")
            return list(chosen)
        if self.depth is None:
            return list(range(n_layers))
        if self.depth > n_layers:
            raise ValueError(f"depth={self.depth} exceeds the {stack} stack's {n_layers} layers; allowed 1..{n_layers}")
        return list(range(self.depth)) if self.depth_from == "bottom" else list(range(n_layers - self.depth, n_layers))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["sites"] = list(self.sites)
        if self.layers is not None:
            data["layers"] = {k: list(v) for k, v in self.layers.items()}
        if self.init_token_ids is not None:
            data["init_token_ids"] = list(self.init_token_ids)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PrefixConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown PrefixConfig fields {unknown}; allowed {sorted(known)}")
        return cls(**data)


class PromptTable(nn.Module):
    """One site's flat prompt table ``Embedding(P, width)`` (OFA's default)."""

    def __init__(self, length: int, width: int) -> None:
        super().__init__()
        self.length, self.width = length, width
        self.embedding = nn.Embedding(length, width)

    def forward(self) -> torch.Tensor:
        """The [P, width] table."""
        return self.embedding.weight


class MLPPromptTable(nn.Module):
    """One site's table through OFA's reparameterisation: ``Embedding(P, d_model)`` → Linear → ReLU →
    Linear(width). :func:`fold` replaces it by the :class:`PromptTable` it produces."""

    def __init__(self, length: int, width: int, d_model: int, hidden: int) -> None:
        super().__init__()
        self.length, self.width = length, width
        self.embedding = nn.Embedding(length, d_model)
        self.trans = nn.Sequential(nn.Linear(d_model, hidden), nn.ReLU(), nn.Linear(hidden, width))

    def forward(self) -> torch.Tensor:
        """The [P, width] table."""
        return self.trans(self.embedding.weight)


def _table(length: int, width: int, d_model: int, hidden: int | None) -> nn.Module:
    return PromptTable(length, width) if hidden is None else MLPPromptTable(length, width, d_model, hidden)


@dataclass(frozen=True)
class SitePlan:
    """Which layers of one site kind receive prefixes, and their shape."""

    kind: str
    layers: tuple[int, ...]
    heads: int
    head_dim: int
    d_model: int
    sites: tuple[AttentionSite, ...] = field(compare=False, repr=False)

    @property
    def width(self) -> int:
        return len(self.layers) * 2 * self.heads * self.head_dim


class _LayerPrefix:
    """Provider attached to one attention module: returns its slot of the site's table."""

    def __init__(self, bank: "PrefixModule", kind: str, slot: int, name: str) -> None:
        self.bank, self.kind, self.slot, self.name = bank, kind, slot, name
        self.calls = 0  # reset before each stack forward; checked after it

    def __call__(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        table = self.bank.kv_table(self.kind)  # [n, 2, H, P, hd]
        return table[self.slot, 0].unsqueeze(0), table[self.slot, 1].unsqueeze(0)


class PrefixModule(nn.Module):
    """Holds only the prompt parameters (one :class:`PromptTable` or :class:`MLPPromptTable` per site kind)."""

    def __init__(self, config: PrefixConfig, plans: dict[str, SitePlan]) -> None:
        super().__init__()
        self.config = config
        self.plans = plans
        self.encoders = nn.ModuleDict()
        for kind, plan in plans.items():
            hidden = config.hidden_size(plan.d_model)
            self.encoders[kind] = _table(config.length, plan.width, plan.d_model, hidden)
        self.dropout = nn.Dropout(config.dropout)
        self._cache: dict[str, tuple[tuple, torch.Tensor]] = {}
        object.__setattr__(self, "_model_ref", None)  # plain attribute: not a submodule

    # --- computing the tables -------------------------------------------------------------------
    def _key(self, kind: str) -> tuple:
        params = tuple((p._version, p.data_ptr(), p.dtype) for p in self.encoders[kind].parameters())
        return params, self.training, torch.is_grad_enabled()

    def compute_table(self, kind: str) -> torch.Tensor:
        """Fresh [n_layers, 2, H, P, head_dim] key/value table of one site (dropout applied in training)."""
        plan = self.plans[kind]
        flat = self.dropout(self.encoders[kind]())  # [P, n·2·kv]
        table = flat.view(self.config.length, len(plan.layers), 2, plan.heads, plan.head_dim)
        return table.permute(1, 2, 3, 0, 4)

    def refresh(self, kinds: tuple[str, ...]) -> None:
        """Called before a stack's forward: recompute tables that may be stale."""
        for kind in kinds:
            key = self._key(kind)
            cached = self._cache.get(kind)
            fresh_needed = torch.is_grad_enabled() or (self.training and self.config.dropout > 0)
            if fresh_needed or cached is None or cached[0] != key:
                self._cache[kind] = (key, self.compute_table(kind))

    def kv_table(self, kind: str) -> torch.Tensor:
        """The current table of a site (computed lazily when an attention module is called directly)."""
        cached = self._cache.get(kind)
        if cached is None or cached[0] != self._key(kind):
            self.refresh((kind,))
            cached = self._cache[kind]
        return cached[1]

    def clear_cache(self) -> None:
        self._cache.clear()

    def train(self, mode: bool = True) -> "PrefixModule":
        self.clear_cache()
        return super().train(mode)

    # --- export helpers -------------------------------------------------------------------------
    @torch.no_grad()
    def tables(self) -> dict[str, torch.Tensor]:
        """Per-site flat [P, n·2·kv] tables without dropout (what :func:`fold` stores)."""
        return {kind: enc().detach().clone() for kind, enc in self.encoders.items()}

    def layers(self) -> dict[str, list[int]]:
        return {kind: list(plan.layers) for kind, plan in self.plans.items()}

    def remove(self) -> None:
        """Remove the prefixes from the model this module is applied to."""
        if self._model_ref is None:
            raise ValueError("this PrefixModule is not applied to a model")
        remove_prefix(self._model_ref)


def plan_sites(backbone: BackboneSites, config: PrefixConfig) -> dict[str, SitePlan]:
    """Resolve the config against the discovered sites (validates depth against real stack depths)."""
    plans = {}
    for kind in config.sites:
        sites = backbone.of_kind(kind)
        if not sites:
            raise ValueError(f"sites includes {kind!r}, but the model has no such attention modules")
        stack = backbone.stacks[stack_of(kind)]
        wanted = config.layers_for(stack.name, stack.layers)
        chosen = tuple(s for s in sites if s.layer in wanted)
        shapes = {(s.heads, s.head_dim, s.d_model) for s in chosen}
        if len(shapes) != 1:
            raise ValueError(f"{kind} layers differ in (heads, head_dim, d_model): {sorted(shapes)}")
        heads, head_dim, d_model = shapes.pop()
        plans[kind] = SitePlan(kind, tuple(s.layer for s in chosen), heads, head_dim, d_model, chosen)
    return plans


def _vocab_states(model: nn.Module, config: PrefixConfig, d_model: int, gen: torch.Generator) -> torch.Tensor:
    """Layer-normalised token embeddings [P, d] for the "vocab" init."""
    emb = st.input_embeddings(model)
    if emb.embedding_dim != d_model:
        raise ValueError(f"init='vocab' needs token embeddings of width {d_model}, got {emb.embedding_dim}")
    if config.init_token_ids is not None:
        ids = torch.tensor(config.init_token_ids)
        if int(ids.max()) >= emb.num_embeddings:
            raise ValueError(f"init_token_ids contains {int(ids.max())}, beyond the vocabulary of {emb.num_embeddings}")
    else:
        candidates = torch.arange(emb.num_embeddings)
        if emb.padding_idx is not None:
            candidates = candidates[candidates != emb.padding_idx]
        if config.length <= len(candidates):
            ids = candidates[torch.randperm(len(candidates), generator=gen)[: config.length]]
        else:
            ids = candidates[torch.randint(len(candidates), (config.length,), generator=gen)]
    with torch.no_grad():
        states = emb(ids.to(emb.weight.device)).float()
    return F.layer_norm(states, (d_model,))


@torch.no_grad()
def _initialise(bank: PrefixModule, model: nn.Module) -> None:
    config = bank.config
    for index, (kind, enc) in enumerate(bank.encoders.items()):
        gen = torch.Generator().manual_seed(config.seed * 1000 + index)
        for name, param in enc.named_parameters():
            if name.endswith("bias"):
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * config.init_std)
        if config.init != "vocab":
            continue
        plan = bank.plans[kind]
        states = _vocab_states(model, config, plan.d_model, gen)
        if isinstance(enc, MLPPromptTable):
            enc.embedding.weight.copy_(states)
            continue
        columns = []
        for site in plan.sites:
            s = states.to(site.module.k_proj.weight)
            columns += [site.module.k_proj(s), site.module.v_proj(s)]
        enc.embedding.weight.copy_(torch.cat(columns, dim=1))


def _uses_reentrant_checkpointing(stack: nn.Module) -> bool:
    for module in stack.modules():
        func = getattr(module, "_gradient_checkpointing_func", None)
        if getattr(module, "gradient_checkpointing", False) and func is not None:
            if getattr(func, "keywords", {}).get("use_reentrant", False):
                return True
    return False


def _enable_transformers_attention(plans: dict[str, SitePlan]) -> list:
    """Route transformers' attention modules through the prefix attention functions (:mod:`.hf`); models
    without any (OFA) never import transformers."""
    modules = [s.module for plan in plans.values() for s in plan.sites
               if type(s.module).__module__.startswith("transformers.")]
    if not modules:
        return []
    from mmprompt.tuning import hf

    return hf.enable(modules)


def _disable_transformers_attention(restore_impl: list) -> None:
    if restore_impl:
        from mmprompt.tuning import hf

        hf.disable(restore_impl)


def _stack_hook(
    bank: PrefixModule, kinds: tuple[str, ...], restore_impl: list, providers: list["_LayerPrefix"]
):
    """Forward pre-hook of a stack: refresh its sites' tables outside any checkpointed layer."""

    def hook(stack: nn.Module, _args: tuple) -> None:
        if restore_impl:
            from mmprompt.tuning import hf

            hf.check_enabled(restore_impl)
        for provider in providers:
            provider.calls = 0
        if stack.training and torch.is_grad_enabled() and _uses_reentrant_checkpointing(stack):
            raise ValueError(
                "prefix tuning needs non-reentrant gradient checkpointing (transformers' default); this model "
                "uses use_reentrant=True: enable it with mmprompt.models.florence2.enable_checkpointing(model)"
            )
        bank.refresh(kinds)

    return hook


_warned: set[str] = set()


def _check_calls_hook(providers: list[_LayerPrefix]):
    """Forward hook of a stack: warn (once per module) about targeted attention modules that never asked
    for their prefix, e.g. an attention class that does not call ``extend_with_prefix`` or LayerDrop."""

    def hook(_stack: nn.Module, _args: tuple, _output: object) -> None:
        silent = [p.name for p in providers if p.calls == 0 and p.name not in _warned]
        if silent:
            _warned.update(silent)
            logger.warning("prefix not requested by %s in this forward pass; is extend_with_prefix called?", silent)

    return hook


def new_prefix_module(model: nn.Module, config: PrefixConfig, backbone: BackboneSites | None = None) -> PrefixModule:
    """A freshly initialised :class:`PrefixModule` for ``model``'s sites (on its device and dtype), not
    attached to anything. Raises ``ValueError`` if the config does not fit the model."""
    if not isinstance(config, PrefixConfig):
        raise ValueError(f"config must be a PrefixConfig, got {type(config).__name__}")
    plans = plan_sites(backbone or discover_sites(model), config)
    bank = PrefixModule(config, plans)
    _initialise(bank, model)
    reference = plans[config.sites[0]].sites[0].module.k_proj.weight
    bank.to(device=reference.device, dtype=reference.dtype if reference.is_floating_point() else None)
    return bank


def apply_prefix(model: nn.Module, config: PrefixConfig) -> PrefixModule:
    """Add prefixes to ``model`` (frozen otherwise) and return the module holding the prompt parameters.

    The returned module is also registered as ``model.mmprompt_prefix``. Raises ``ValueError`` before
    changing anything if the config does not fit the model.
    """
    st.ensure_free(model, PrefixConfig.method)
    st.check_prompt_length(model, config.length)
    backbone = discover_sites(model)
    bank = new_prefix_module(model, config, backbone)
    plans = bank.plans

    restore_impl = _enable_transformers_attention(plans)  # validates before changing anything
    state = st.begin(model, PrefixConfig.method, config)
    state.handle = bank
    state.undo.append(lambda: _disable_transformers_attention(restore_impl))
    st.add_submodule(model, state, MODULE_NAME, bank)
    st.freeze_all_but(model, state, lambda name, _: name.startswith(MODULE_NAME + "."))
    st.freeze_batchnorm(model, state)
    providers: dict[str, list[_LayerPrefix]] = {}
    for kind, plan in plans.items():
        for slot, site in enumerate(plan.sites):
            provider = _LayerPrefix(bank, kind, slot, site.name)
            providers.setdefault(stack_of(kind), []).append(provider)
            attach(site.module, provider)
            state.undo.append(lambda m=site.module: detach(m))
    for stack in STACKS:
        kinds = tuple(k for k in plans if stack_of(k) == stack)
        if kinds:
            owner = model.get_submodule(backbone.stacks[stack].path)
            pre = _stack_hook(bank, kinds, restore_impl, providers[stack])
            st.add_hook(state, owner.register_forward_pre_hook(pre))
            st.add_hook(state, owner.register_forward_hook(_check_calls_hook(providers[stack])))
    object.__setattr__(bank, "_model_ref", model)
    state.undo.append(lambda: object.__setattr__(bank, "_model_ref", None))
    state.undo.append(bank.clear_cache)
    logger.info(
        "prefix tuning: length %d on %s (%s trainable parameters)",
        config.length, {k: list(p.layers) for k, p in plans.items()}, f"{sum(p.numel() for p in bank.parameters()):,}",
    )
    return bank


def remove_prefix(model: nn.Module) -> PrefixConfig:
    """Remove prefixes: the model is restored exactly (outputs, requires_grad, train-mode behaviour)."""
    return st.remove_current(model, PrefixConfig.method).config


def prefix_module(model: nn.Module) -> PrefixModule:
    """The :class:`PrefixModule` applied to ``model``."""
    bank = getattr(model, MODULE_NAME, None)
    if not isinstance(bank, PrefixModule):
        raise ValueError(f"{type(model).__name__} has no prefix applied (apply_prefix first)")
    return bank


@torch.no_grad()
def fold(bank: PrefixModule) -> PrefixModule:
    """Replace each reparameterisation MLP by the flat table it produces (in place; returns ``bank``).

    The folded tables are trainable parameters; ``bank.config.reparam`` becomes False.
    """
    for kind, enc in list(bank.encoders.items()):
        if not isinstance(enc, MLPPromptTable):
            continue
        table = enc().detach()
        flat = PromptTable(enc.length, enc.width)
        flat.to(device=table.device, dtype=table.dtype)
        flat.embedding.weight.copy_(table)
        bank.encoders[kind] = flat
    bank.config = dataclasses.replace(bank.config, reparam=False, reparam_hidden=None)
    bank.clear_cache()
    return bank
