"""One frozen backbone, many prompts: a prompt bank with per-row routing at every attention site.

>>> bank = apply_bank(model)                       # the backbone is frozen
>>> bank.load({"vqa": "runs/vqa/prompt", "caption": "runs/caption/prompt"})   # fingerprint-checked
>>> with bank.route(["vqa", "caption", None]):     # one name (or None) per row of the batch
...     logits = model(**batch).logits            # row 2 is the plain backbone

Each prompt is a :class:`~mmprompt.tuning.prefix.PrefixModule` of its own (any length, sites, depth,
reparameterisation), addressed by name. While a route is set, every attention site prepends to each
row the key/value prefix of that row's prompt; prompts shorter than the longest one at that site are
padded with blocked columns, and rows whose prompt does not reach a site (no prompt, another site kind,
another depth) see that site unprefixed. With no route set, or a route of Nones, the model is the plain
backbone.

Batch expansion: decoding runs the decoder on ``N = B·m`` rows for a route of ``B`` rows (beam search
and candidate scoring repeat every sample ``m`` times consecutively, as transformers' ``generate``
does); the route is expanded the same way (``repeat_interleave``). Beam reordering stays within a
sample, so the route never needs reordering.

Training: prompts added with :meth:`PromptBank.add` (or loaded with ``trainable=True``) are trainable;
a mixed batch gives each prompt the gradient of its own rows only, so one loop trains several tasks,
each updating only its own prompt.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmprompt.core.injection import attach, detach
from mmprompt.tuning import export, state as st
from mmprompt.tuning.prefix import PrefixConfig, PrefixModule, new_prefix_module
from mmprompt.tuning.sites import STACKS, AttentionSite, BackboneSites, discover_sites

logger = logging.getLogger(__name__)

METHOD_NAME = "prompt_bank"
MODULE_NAME = "mmprompt_bank"
RouteNames = Sequence[str | None]


class _SitePrefixes:
    """The stacked prefixes of one attention site for the prompts of the current route."""

    def __init__(self, kv: torch.Tensor, columns: torch.Tensor | None, shared: bool) -> None:
        self.kv = kv  # [J + 1, 2, H, Pmax, hd]; entry J (no prompt) is zeros
        self.columns = columns  # [J + 1, Pmax] bool, True = real column; None when every row is the same
        self.shared = shared  # every row uses entry 0 with all its columns: no gather, no mask
        self.gathered: dict[int, tuple[torch.Tensor, ...]] = {}


class _RoutedPrefix:
    """Provider attached to one attention site: each row's prefix, from the bank's current route."""

    def __init__(self, bank: "PromptBank", site: AttentionSite) -> None:
        self.bank, self.site = bank, site

    def __call__(self, batch_size: int) -> tuple[torch.Tensor, ...] | None:
        prefixes = self.bank._site_prefixes.get(self.site.name)
        if prefixes is None:
            return None
        if prefixes.shared:
            return prefixes.kv[0, 0].unsqueeze(0), prefixes.kv[0, 1].unsqueeze(0)
        cached = prefixes.gathered.get(batch_size)
        if cached is not None:
            return cached
        rows = self.bank._rows_for(batch_size)
        kv = prefixes.kv.index_select(0, rows)
        columns = prefixes.columns.index_select(0, rows)
        blocked = torch.zeros(columns.shape, dtype=kv.dtype, device=kv.device)  # additive: built once per route
        out = (kv[:, 0], kv[:, 1], blocked.masked_fill(~columns, torch.finfo(kv.dtype).min))
        if not torch.is_grad_enabled():
            prefixes.gathered[batch_size] = out
        return out


class PromptBank(nn.Module):
    """Named prompts on one frozen backbone (see the module docstring). Create it with :func:`apply_bank`."""

    def __init__(self, backbone: BackboneSites, backbone_fingerprint: dict) -> None:
        super().__init__()
        self.prompts = nn.ModuleDict()
        self.backbone = backbone
        self.fingerprint = backbone_fingerprint
        self._route: list[str | None] | None = None
        self._row_index: torch.Tensor | None = None  # [B] index into the route's distinct prompts (J = none)
        self._active: list[str] = []
        self._expanded: dict[int, torch.Tensor] = {}
        self._site_prefixes: dict[str, _SitePrefixes] = {}
        self._stacked_key: dict[str, tuple] = {}
        object.__setattr__(self, "_model_ref", None)

    # --- prompts ----------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.prompts.keys())

    def __contains__(self, name: object) -> bool:
        return name in self.prompts

    def prompt(self, name: str) -> PrefixModule:
        """The :class:`PrefixModule` of one prompt."""
        self._check_names([name])
        return self.prompts[name]

    def _check_new_name(self, name: object, taken: set[str]) -> None:
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"prompt name {name!r}: must be a non-empty string without '.'")
        if name in self.prompts or name in taken:
            raise ValueError(f"prompt name {name!r} is already in the bank {self.names}; remove it first")

    def add(self, name: str, config: PrefixConfig) -> PrefixModule:
        """A fresh trainable prompt (initialised like :func:`~mmprompt.tuning.prefix.apply_prefix`)."""
        self._check_new_name(name, set())
        module = new_prefix_module(self._model(), config, self.backbone)
        self._insert(name, module, trainable=True)
        return module

    def load(self, prompts: Mapping[str, str | os.PathLike], *, trainable: bool = False) -> list[str]:
        """Load saved prompts ``{name: directory}``. Every prompt is read and checked (names, fingerprint,
        depth against the backbone, weights) before any is added: on error the bank is unchanged."""
        if not isinstance(prompts, Mapping) or not prompts:
            raise ValueError(f"prompts={prompts!r}: expected a non-empty mapping name -> prompt directory")
        checked: dict[str, PrefixModule] = {}
        for name, directory in prompts.items():
            self._check_new_name(name, set(checked))
            try:
                checked[name] = export.read_prompt(self._model(), directory, self.fingerprint)
            except (ValueError, FileNotFoundError) as err:
                raise type(err)(f"prompt {name!r}: {err}") from err
        for name, module in checked.items():
            self._insert(name, module, trainable=trainable)
        logger.info("prompt bank: loaded %s", list(checked))
        return list(checked)

    def save(self, name: str, directory: str | os.PathLike, *, fold: bool = False) -> os.PathLike:
        """Save one prompt in the format of :func:`~mmprompt.tuning.export.save_prompt`."""
        return export.write_prompt(self.prompt(name), self.fingerprint, directory, fold=fold)

    def remove_prompt(self, name: str) -> None:
        self._check_names([name])
        if self._route is not None and name in self._active:
            raise ValueError(f"prompt {name!r} is used by the current route; leave the route first")
        del self.prompts[name]

    def _insert(self, name: str, module: PrefixModule, trainable: bool) -> None:
        module.train(self.training)
        for param in module.parameters():
            param.requires_grad_(trainable)
        self.prompts[name] = module

    def _model(self) -> nn.Module:
        if self._model_ref is None:
            raise ValueError("this PromptBank is not applied to a model")
        return self._model_ref

    def storage_bytes(self, name: str | None = None) -> int:
        """Bytes of the prompt parameters (one prompt, or all of them)."""
        modules = [self.prompt(name)] if name is not None else list(self.prompts.values())
        return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())

    # --- routing ----------------------------------------------------------------------------------
    def _check_names(self, names: RouteNames) -> None:
        unknown = sorted({n for n in names if n is not None and n not in self.prompts}, key=str)
        if unknown:
            raise ValueError(f"unknown prompt name(s) {unknown}; the bank holds {self.names} (or None for none)")

    def set_route(self, names: RouteNames | str | None) -> None:
        """Route row ``i`` of the next batches to prompt ``names[i]`` (None: no prompt). A single name routes
        every row of any batch to that prompt; None clears the route (the plain backbone)."""
        if names is None:
            self._route, self._row_index, self._active = None, None, []
            self._reset_prefixes()
            return
        every = isinstance(names, str)
        if not every and (not isinstance(names, Sequence) or len(names) == 0):
            raise ValueError(f"route={names!r}: expected a prompt name, or a non-empty list with one prompt name "
                             f"(or None) per row")
        rows = [names] if every else list(names)
        self._check_names(rows)
        active = list(dict.fromkeys(n for n in rows if n is not None))
        index = [active.index(n) if n is not None else len(active) for n in rows]
        device = next(self.prompts[active[0]].parameters()).device if active else "cpu"
        self._route, self._active = (names if every else rows), active
        self._row_index = torch.tensor(index, dtype=torch.long, device=device)
        self._reset_prefixes()

    @contextlib.contextmanager
    def route(self, names: RouteNames | str | None) -> Iterator["PromptBank"]:
        """Context manager: ``with bank.route(names): model(...)`` (the previous route is restored after)."""
        previous = self._route
        self.set_route(names)
        try:
            yield self
        finally:
            self.set_route(previous)

    def _reset_prefixes(self) -> None:
        self._expanded.clear()
        self._site_prefixes.clear()
        self._stacked_key.clear()

    def _rows_for(self, batch_size: int) -> torch.Tensor:
        rows = self._expanded.get(batch_size)
        if rows is not None:
            return rows
        n = len(self._row_index)
        if batch_size % n:
            raise ValueError(f"the route has {n} rows, but an attention call got a batch of {batch_size} "
                             f"(must be a multiple: each routed row repeated consecutively)")
        rows = self._row_index.repeat_interleave(batch_size // n)
        self._expanded[batch_size] = rows
        return rows

    # --- per-stack preparation ----------------------------------------------------------------------
    def prepare(self, stack: str) -> None:
        """Before a stack's forward: stack the routed prompts' prefixes of each of its sites."""
        if not self._active:
            for site in self.backbone.sites:
                if site.stack == stack:
                    self._site_prefixes.pop(site.name, None)
            return
        modules = [self.prompts[n] for n in self._active]
        for module in modules:
            module.refresh(tuple(k for k in module.plans if k.startswith(stack)))
        tables = {(i, kind): m.kv_table(kind) for i, m in enumerate(modules) for kind in m.plans
                  if kind.startswith(stack)}
        key = tuple(tables.values())
        if not torch.is_grad_enabled() and self._same_tables(stack, key):
            return
        self._stacked_key[stack] = key
        every_row_same = len(self._active) == 1 and bool((self._row_index == 0).all())
        for site in self.backbone.sites:
            if site.stack == stack:
                self._site_prefixes[site.name] = self._stack_site(site, modules, tables, every_row_same)

    def _same_tables(self, stack: str, key: tuple) -> bool:
        old = self._stacked_key.get(stack)
        return old is not None and len(old) == len(key) and all(a is b for a, b in zip(old, key))

    def _stack_site(self, site: AttentionSite, modules: list[PrefixModule], tables: dict,
                    every_row_same: bool) -> _SitePrefixes | None:
        parts: list[torch.Tensor | None] = []
        for i, module in enumerate(modules):
            plan = module.plans.get(site.kind)
            slot = plan.layers.index(site.layer) if plan is not None and site.layer in plan.layers else None
            parts.append(None if slot is None else tables[(i, site.kind)][slot])  # [2, H, P, hd]
        present = [p for p in parts if p is not None]
        if not present:
            return None
        if every_row_same:
            return _SitePrefixes(present[0].unsqueeze(0), None, shared=True)
        longest = max(p.shape[2] for p in present)
        ref = present[0]
        zeros = ref.new_zeros(2, site.heads, longest, site.head_dim)
        kv = torch.stack([zeros if p is None else F.pad(p, (0, 0, 0, longest - p.shape[2])) for p in parts]
                         + [zeros])
        lengths = torch.tensor([0 if p is None else p.shape[2] for p in parts] + [0], device=ref.device)
        columns = torch.arange(longest, device=ref.device)[None, :] < lengths[:, None]
        return _SitePrefixes(kv, columns, shared=False)

    def train(self, mode: bool = True) -> "PromptBank":
        self._reset_prefixes()
        return super().train(mode)


def _transformers_attention(backbone: BackboneSites) -> list:
    """Route transformers' attention modules through the prefix attention functions (:mod:`.hf`); a model
    without any (OFA) never imports transformers."""
    modules = [s.module for s in backbone.sites if type(s.module).__module__.startswith("transformers.")]
    if not modules:
        return []
    from mmprompt.tuning import hf

    return hf.enable(modules)


def _undo_transformers_attention(restore_impl: list) -> None:
    if restore_impl:
        from mmprompt.tuning import hf

        hf.disable(restore_impl)


def _stack_hook(bank: PromptBank, stack: str, restore_impl: list):
    def hook(_module: nn.Module, _args: tuple) -> None:
        if restore_impl:
            from mmprompt.tuning import hf

            hf.check_enabled(restore_impl)
        bank.prepare(stack)

    return hook


def apply_bank(model: nn.Module) -> PromptBank:
    """Freeze ``model`` and attach an empty :class:`PromptBank` (registered as ``model.mmprompt_bank``)."""
    st.ensure_free(model, METHOD_NAME)
    backbone = discover_sites(model)
    bank = PromptBank(backbone, export.fingerprint(model))
    restore_impl = _transformers_attention(backbone)  # validates before changing anything
    state = st.begin(model, METHOD_NAME, None)
    state.handle = bank
    state.undo.append(lambda: _undo_transformers_attention(restore_impl))
    st.freeze_all_but(model, state, lambda name, _: False)
    st.add_submodule(model, state, MODULE_NAME, bank)
    st.freeze_batchnorm(model, state)
    for site in backbone.sites:
        attach(site.module, _RoutedPrefix(bank, site))
        state.undo.append(lambda m=site.module: detach(m))
    for stack in STACKS:
        if stack in backbone.stacks:
            owner = model.get_submodule(backbone.stacks[stack].path)
            st.add_hook(state, owner.register_forward_pre_hook(_stack_hook(bank, stack, restore_impl)))
    object.__setattr__(bank, "_model_ref", model)
    state.undo.append(lambda: object.__setattr__(bank, "_model_ref", None))
    return bank


def remove_bank(model: nn.Module) -> PromptBank:
    """Detach the bank: the model is restored exactly. Returns the bank (its prompts can be saved still)."""
    bank = bank_of(model)
    st.remove_current(model, METHOD_NAME)
    return bank


def bank_of(model: nn.Module) -> PromptBank:
    """The :class:`PromptBank` applied to ``model``."""
    bank = getattr(model, MODULE_NAME, None)
    if not isinstance(bank, PromptBank):
        raise ValueError(f"{type(model).__name__} has no prompt bank applied (apply_bank first)")
    return bank
