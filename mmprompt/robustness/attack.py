"""Robustness study: FGSM on the encoder's inputs (image embeddings, text embeddings or pixels).

The paper (Section 4.3) attacks every task with FGSM, one gradient step "on text and image embeddings",
and finds prompt tuning more robust than finetuning. Here one attack is computed per evaluation batch
and then applied to whatever evaluation routine runs next (beam search, all-candidate scoring, a
teacher-forced loss), which needs to know nothing about it::

    for batch in loader:
        deltas = attack_batch(model, batch, eps=0.05, space="embeds")
        with perturbed(model, deltas):
            predictions = generate(model, batch)

Attack spaces (:data:`ATTACK_SPACES`):

* ``"image_embeds"``: the output of ``encoder.image_proj`` (patch features projected to d_model, before the
  type embedding and the patch LayerNorm), [B, N, d];
* ``"text_embeds"``: the encoder's token embeddings (``embed_tokens`` output, before the embedding scale,
  type embedding and LayerNorm), [B, T, d]. ``embed_tokens`` is shared with the decoder, so its hook is
  armed by the *encoder's* pre-hook for the one call made while the encoder runs; the decoder's
  embeddings are never touched;
* ``"pixels"``: the normalised image ``patch_images`` [B, 3, H, W]; the attacked image is clamped to
  ``pixel_range`` ([-1, 1], the project's mean = std = 0.5 normalisation);
* ``"embeds"``: image and text embeddings attacked jointly (the paper's setting).

FGSM: δ = ε · r · sign(∇ L), where L is the teacher-forced loss of the batch (by default the plain
token-mean cross-entropy, no label smoothing) and ∇ its gradient with respect to the clean tensor of the
attacked space. The radius r is set by ``scale``:

* ``"rms"`` (the default for embeddings): r is the root-mean-square of the sample's clean tensor (over
  its non-padding tokens for text, all its patches for images), so ε is a fraction of the typical
  embedding magnitude and one ε means the same across model sizes and checkpoints;
* ``"absolute"`` (the default for pixels): r = 1, so ε is in the tensor's own units (for pixels, the
  [-1, 1] scale: ε = 2·k/255 moves a pixel by k grey levels);
* ``"auto"``: "rms" for embeddings, "absolute" for pixels.

The batch's loss is a token mean, so each sample's gradient is a positive multiple of the gradient of
its own loss: a sample gets the same δ whatever batch it is in (the model runs in eval mode).
The attack is on inputs only: it runs in eval mode with every parameter temporarily frozen and takes
``torch.autograd.grad`` with respect to the inputs, so no parameter, buffer or ``.grad`` changes, and
each module's training flag and each parameter's ``requires_grad`` are restored exactly afterwards.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from mmprompt.core.checks import check_metrics, check_number
from mmprompt.core.progress import progress_bar
from mmprompt.training.losses import Seq2SeqLoss

__all__ = [
    "ATTACK_SPACES",
    "SCALES",
    "SPACES",
    "Deltas",
    "FGSM",
    "attack_batch",
    "attacked",
    "epsilon_sweep",
    "plot_sweep",
    "perturbed",
    "sweep_table",
]

logger = logging.getLogger(__name__)

#: The tensors a delta can be added to.
SPACES: tuple[str, ...] = ("image_embeds", "text_embeds", "pixels")
#: What ``space`` may name: one tensor, or "embeds" = image and text embeddings jointly (the paper).
ATTACK_SPACES: tuple[str, ...] = ("embeds", *SPACES)
_JOINT = {"embeds": ("image_embeds", "text_embeds")}
#: How ε is read (see the module docstring).
SCALES: tuple[str, ...] = ("auto", "rms", "absolute")
#: Range of the project's normalised images (mean = std = 0.5).
PIXEL_RANGE: tuple[float, float] = (-1.0, 1.0)

LossFn = Callable[[nn.Module, Mapping[str, Any]], torch.Tensor]


# ---------------------------------------------------------------------------------------- validation
def _check_space(space: Any, name: str = "space") -> tuple[str, ...]:
    if not isinstance(space, str) or space not in ATTACK_SPACES:
        raise ValueError(f"{name}={space!r} is not an attack space; allowed: {ATTACK_SPACES}")
    return _JOINT.get(space, (space,))


def _check_eps(eps: Any, name: str = "eps") -> float:
    check_number(name, eps, 0)
    return float(eps)


def _check_scale(scale: Any) -> str:
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r} is invalid; allowed: {SCALES}")
    return scale


def _check_pixel_range(pixel_range: Any) -> tuple[float, float] | None:
    if pixel_range is None:
        return None
    try:
        lo, hi = (float(v) for v in pixel_range)
    except (TypeError, ValueError):
        raise ValueError(f"pixel_range={pixel_range!r} is invalid; allowed: None or (low, high)") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"pixel_range={pixel_range!r} is invalid; allowed: None or finite (low, high), low < high")
    return lo, hi


def _radius_kind(space: str, scale: str) -> str:
    if scale == "auto":
        return "absolute" if space == "pixels" else "rms"
    return scale


# ---------------------------------------------------------------------------------------- deltas
@dataclass
class Deltas:
    """Precomputed input perturbations for ONE batch (shapes are those of that batch's clean tensors).

    ``image_embeds`` [B, N, d] is added to ``encoder.image_proj``'s output; ``text_embeds`` [B, T, d] to the
    encoder's token embeddings; ``pixels`` [B, 3, H, W] to ``patch_images`` (then clamped to
    ``pixel_range`` unless it is None). ``radius`` holds each space's per-sample L∞ bound ε·r, [B].
    """

    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    pixels: torch.Tensor | None = None
    epsilon: float = 0.0
    scale: str = "auto"
    pixel_range: tuple[float, float] | None = PIXEL_RANGE
    radius: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def spaces(self) -> tuple[str, ...]:
        """The spaces this object perturbs, in :data:`SPACES` order."""
        return tuple(s for s in SPACES if getattr(self, s) is not None)

    @property
    def batch_size(self) -> int:
        tensors = [getattr(self, s) for s in self.spaces]
        return int(tensors[0].shape[0]) if tensors else 0

    def get(self, space: str) -> torch.Tensor | None:
        return getattr(self, space)

    def to(self, device: torch.device | str) -> "Deltas":
        """A copy on ``device``."""
        moved = {s: getattr(self, s).to(device) for s in self.spaces}
        return Deltas(**moved, epsilon=self.epsilon, scale=self.scale, pixel_range=self.pixel_range,
                      radius={k: v.to(device) for k, v in self.radius.items()})


# ---------------------------------------------------------------------------------------- model parts
@dataclass
class _Parts:
    encoder: nn.Module
    embed_tokens: nn.Module
    image_proj: nn.Module | None
    pad_id: int | None


def _parts(model: nn.Module) -> _Parts:
    """The encoder stack, its token embedding, its image projection and the padding id."""
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module) and callable(getattr(model, "get_encoder", None)):
        encoder = model.get_encoder()
    if not isinstance(encoder, nn.Module):
        raise ValueError(f"model of type {type(model).__name__} has no encoder module (model.encoder)")
    embed = getattr(encoder, "embed_tokens", None)
    if not isinstance(embed, nn.Module):
        raise ValueError(f"{type(encoder).__name__} has no embed_tokens module")
    proj = getattr(encoder, "image_proj", None)
    config = getattr(model, "config", None)
    pad = getattr(config, "pad_token_id", None)
    if pad is None:
        pad = getattr(embed, "padding_idx", None)
    return _Parts(encoder, embed, proj if isinstance(proj, nn.Module) else None, pad)


def _as_kwargs(module: nn.Module, args: tuple, kwargs: dict) -> dict:
    """``module.forward``'s positional arguments turned into keywords."""
    if not args:
        return dict(kwargs)
    signature = inspect.signature(module.forward)
    bound = signature.bind_partial(*args, **kwargs).arguments
    out: dict[str, Any] = {}
    for name, value in bound.items():
        if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        else:
            out[name] = value
    return out


# An "adder" gets (space, clean tensor, valid-position mask [B, L] or None) and returns the tensor to use.
Adder = Callable[[str, torch.Tensor, torch.Tensor | None], torch.Tensor]


def _install(model: nn.Module, spaces: Sequence[str], add: Adder) -> list[torch.utils.hooks.RemovableHandle]:
    """Hooks that route the encoder's inputs of ``spaces`` through ``add``; returns their handles.

    Text: the encoder's pre-hook arms a forward hook on the (shared) ``embed_tokens`` for ONE call, made
    while the encoder runs; a post-hook of the encoder (also on error) disarms it, so the decoder's
    embeddings are never touched. The encoder's arguments (``input_ids``, masks) stay as they were, so
    the model computes its padding exactly as in the clean run. When the encoder is given
    ``inputs_embeds`` instead, the delta is added to them directly. The encoder pre-hook runs before
    any other pre-hook (``prepend=True``), so a method that embeds the ids itself and prepends soft
    tokens (the shallow prompt) gets the attacked embeddings and its soft tokens are not attacked.
    """
    parts = _parts(model)
    handles = []
    if "image_embeds" in spaces:
        if parts.image_proj is None:
            raise ValueError(f"space 'image_embeds' needs encoder.image_proj; {type(parts.encoder).__name__} has none")

        def image_hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            return add("image_embeds", output, None)

        handles.append(parts.image_proj.register_forward_hook(image_hook))
    if "text_embeds" not in spaces and "pixels" not in spaces:
        return handles
    armed: dict[str, Any] = {"on": False, "valid": None}

    def encoder_pre(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        kw = _as_kwargs(module, args, kwargs)
        changed = False
        if "text_embeds" in spaces:
            valid = _valid_tokens(kw, parts.pad_id)
            if kw.get("inputs_embeds") is not None:
                kw["inputs_embeds"] = add("text_embeds", kw["inputs_embeds"], valid)
                changed = True
            elif kw.get("input_ids") is not None:
                armed.update(on=True, valid=valid)
            else:
                raise ValueError("space 'text_embeds': the encoder was called without input_ids or inputs_embeds")
        if "pixels" in spaces:
            if kw.get("patch_images") is None:
                raise ValueError("space 'pixels': the encoder was called without patch_images")
            kw["patch_images"] = add("pixels", kw["patch_images"], None)
            changed = True
        return ((), kw) if changed else None

    def embed_hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not armed["on"]:
            return None  # the decoder's (or anybody else's) use of the shared table
        armed["on"] = False
        return add("text_embeds", output, armed["valid"])

    def encoder_post(*_args: Any) -> None:
        armed.update(on=False, valid=None)

    handles.append(parts.encoder.register_forward_pre_hook(encoder_pre, with_kwargs=True, prepend=True))
    handles.append(parts.encoder.register_forward_hook(encoder_post, always_call=True))
    if "text_embeds" in spaces:
        handles.append(parts.embed_tokens.register_forward_hook(embed_hook))
    return handles


def _valid_tokens(kw: Mapping[str, Any], pad_id: int | None) -> torch.Tensor | None:
    """Bool [B, T] of real (non-padding) text positions, from the attention mask or the ids."""
    mask, ids = kw.get("attention_mask"), kw.get("input_ids")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        return mask.to(torch.bool)
    if isinstance(ids, torch.Tensor) and pad_id is not None:
        return ids.ne(pad_id)
    return None


# ---------------------------------------------------------------------------------------- perturbed
def _apply_delta(deltas: Deltas) -> Adder:
    def add(space: str, clean: torch.Tensor, _valid: torch.Tensor | None) -> torch.Tensor:
        delta = deltas.get(space)
        if tuple(delta.shape) != tuple(clean.shape):
            raise ValueError(
                f"deltas.{space} is shaped {tuple(delta.shape)} but the encoder's {space} are {tuple(clean.shape)}: "
                "deltas belong to one batch (attack_batch on the batch you evaluate, before any beam expansion)"
            )
        out = clean + delta.to(device=clean.device, dtype=clean.dtype)
        if space == "pixels" and deltas.pixel_range is not None:
            out = out.clamp(*deltas.pixel_range)
        return out

    return add


@contextlib.contextmanager
def perturbed(model: nn.Module, deltas: Deltas | None) -> Iterator[nn.Module]:
    """Within the block every encoder forward of ``model`` adds ``deltas`` to its inputs.

    Any evaluation code (``model(...)``, ``model.encode``, beam search, all-candidate scoring) then runs on
    the attacked inputs. The decoder is untouched. Deltas are shaped for the batch they were computed on:
    an encoder call with other shapes raises ``ValueError``. ``deltas=None`` (or no space) does nothing.
    Hooks are removed on exit, also when the block raises.
    """
    if deltas is not None and not isinstance(deltas, Deltas):
        raise ValueError(f"deltas must be a Deltas (from attack_batch) or None; got {type(deltas).__name__}")
    spaces = deltas.spaces if deltas is not None else ()
    handles = _install(model, spaces, _apply_delta(deltas)) if spaces else []
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()


# ---------------------------------------------------------------------------------------- attack
@contextlib.contextmanager
def _inputs_only(model: nn.Module) -> Iterator[None]:
    """Eval mode, every parameter frozen, gradients enabled; flags restored exactly on exit."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


@dataclass
class _Probe:
    clean: torch.Tensor
    zero: torch.Tensor
    valid: torch.Tensor | None


def _probe_adder(probes: dict[str, list[_Probe]], pixel_range: tuple[float, float] | None) -> Adder:
    def add(space: str, clean: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        base = clean.detach()
        if base.is_inference():
            base = base.clone()
        zero = torch.zeros_like(base, requires_grad=True)
        probes.setdefault(space, []).append(_Probe(base, zero, valid))
        out = base + zero
        if space == "pixels" and pixel_range is not None:
            out = out.clamp(*pixel_range)
        return out

    return add


def _rms(probe: _Probe) -> torch.Tensor:
    """Per-sample root-mean-square of the clean tensor over its valid positions, [B]."""
    x = probe.clean.float()
    squares = x.pow(2).flatten(2).mean(-1) if x.dim() > 2 else x.pow(2)  # [B, L]
    if probe.valid is not None and probe.valid.shape == squares.shape:
        weights = probe.valid.to(squares.dtype)
        return ((squares * weights).sum(1) / weights.sum(1).clamp(min=1)).sqrt()
    return squares.reshape(squares.shape[0], -1).mean(1).sqrt()


def _check_batch(batch: Any, spaces: Sequence[str], pixel_range: tuple[float, float] | None,
                 default_loss: bool) -> None:
    if not isinstance(batch, Mapping):
        raise ValueError(f"batch must be a mapping of model inputs; got {type(batch).__name__}")
    needs_image = [s for s in spaces if s in ("image_embeds", "pixels")]
    if needs_image and batch.get("patch_images") is None:
        raise ValueError(f"batch has no patch_images, needed by space(s) {needs_image}")
    if "text_embeds" in spaces and batch.get("input_ids") is None and batch.get("inputs_embeds") is None:
        raise ValueError("batch has neither input_ids nor inputs_embeds, needed by space 'text_embeds'")
    if default_loss:
        missing = [k for k in ("decoder_input_ids", "target_ids") if batch.get(k) is None]
        if missing:
            raise ValueError(f"batch lacks {missing}, needed by the default teacher-forced loss (or pass loss_fn)")
    if "pixels" in spaces and pixel_range is not None:
        images = batch["patch_images"]
        lo, hi = float(images.min()), float(images.max())
        tol = 1e-4 * (pixel_range[1] - pixel_range[0])
        if lo < pixel_range[0] - tol or hi > pixel_range[1] + tol:
            raise ValueError(
                f"patch_images lie in [{lo:.4g}, {hi:.4g}], outside pixel_range={pixel_range}: pass the range of "
                "your image normalisation, or pixel_range=None to skip clamping"
            )


def attack_batch(
    model: nn.Module,
    batch: Mapping[str, Any],
    eps: float,
    space: str = "embeds",
    loss_fn: LossFn | None = None,
    *,
    scale: str = "auto",
    pixel_range: tuple[float, float] | None = PIXEL_RANGE,
) -> Deltas:
    """FGSM deltas for one batch: δ = eps · r · sign(∇ loss_fn(model, batch)) in ``space``.

    ``space``: one of :data:`ATTACK_SPACES`. ``scale``: how eps is read ("auto" = RMS-relative for
    embeddings, absolute for pixels; see the module docstring). ``loss_fn(model, batch) -> loss``
    defaults to the token-mean cross-entropy without label smoothing (constraint masks honoured); a
    non-scalar loss is summed. The model's parameters, buffers, ``.grad``, training flags and
    ``requires_grad`` are left exactly as they were. The result feeds :func:`perturbed`.
    """
    spaces = _check_space(space)
    eps = _check_eps(eps)
    scale = _check_scale(scale)
    pixel_range = _check_pixel_range(pixel_range)
    _check_batch(batch, spaces, pixel_range, loss_fn is None)
    if loss_fn is None:
        pad = _parts(model).pad_id
        loss_fn = Seq2SeqLoss(pad_id=1 if pad is None else pad, label_smoothing=0.0)
    probes: dict[str, list[_Probe]] = {}
    with _inputs_only(model):
        handles = _install(model, spaces, _probe_adder(probes, pixel_range))
        try:
            loss = loss_fn(model, batch)
        finally:
            for handle in handles:
                handle.remove()
        if not isinstance(loss, torch.Tensor) or not loss.is_floating_point():
            raise ValueError(f"loss_fn must return a float tensor; got {type(loss).__name__}")
        grads = _gradients(loss.sum(), probes, spaces)
    out = Deltas(epsilon=eps, scale=scale, pixel_range=pixel_range)
    for s in spaces:
        probe = probes[s][0]
        r = _rms(probe) if _radius_kind(s, scale) == "rms" else torch.ones(probe.clean.shape[0])
        radius = eps * r.to(device=probe.clean.device, dtype=torch.float32)
        shape = (-1,) + (1,) * (probe.clean.dim() - 1)
        delta = (radius.view(shape) * grads[s].float().sign()).to(probe.clean.dtype)
        setattr(out, s, delta.detach())
        out.radius[s] = radius.detach()
    logger.debug("FGSM %s eps=%g (%s): loss %.4f", space, eps, scale, float(loss.detach().sum()))
    return out


def _gradients(loss: torch.Tensor, probes: dict[str, list[_Probe]], spaces: Sequence[str]) -> dict[str, torch.Tensor]:
    for s in spaces:
        calls = len(probes.get(s, []))
        if calls != 1:
            raise ValueError(f"loss_fn ran the encoder's {s} path {calls} times; the attack needs exactly one pass")
    zeros = [probes[s][0].zero for s in spaces]
    if not loss.requires_grad:
        return {s: torch.zeros_like(z) for s, z in zip(spaces, zeros)}
    grads = torch.autograd.grad(loss, zeros, allow_unused=True)
    return {s: torch.zeros_like(z) if g is None else g for s, z, g in zip(spaces, zeros, grads)}


# ---------------------------------------------------------------------------------------- sweeps
@dataclass(frozen=True)
class FGSM:
    """An attack setting handed to an evaluation routine: ``with attack(model, batch): ...``.

    ``attack.deltas(model, batch)`` computes the batch's :class:`Deltas`; calling the attack returns the
    :func:`perturbed` context for them.
    """

    epsilon: float
    space: str = "embeds"
    scale: str = "auto"
    loss_fn: LossFn | None = None
    pixel_range: tuple[float, float] | None = PIXEL_RANGE

    def __post_init__(self) -> None:
        _check_eps(self.epsilon, "epsilon")
        _check_space(self.space)
        _check_scale(self.scale)
        _check_pixel_range(self.pixel_range)

    def deltas(self, model: nn.Module, batch: Mapping[str, Any]) -> Deltas:
        return attack_batch(model, batch, self.epsilon, self.space, self.loss_fn, scale=self.scale,
                            pixel_range=self.pixel_range)

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> contextlib.AbstractContextManager:
        return perturbed(model, self.deltas(model, batch))


def attacked(model: nn.Module, batch: Mapping[str, Any],
             attack: Callable | None) -> contextlib.AbstractContextManager:
    """``attack(model, batch)``, or a no-op context when ``attack`` is None (the clean run)."""
    return contextlib.nullcontext(model) if attack is None else attack(model, batch)


def epsilon_sweep(
    evaluate: Callable[[Callable | None], Mapping[str, float]],
    epsilons: Sequence[float],
    spaces: Sequence[str] = ("embeds",),
    *,
    scale: str = "auto",
    loss_fn: LossFn | None = None,
    pixel_range: tuple[float, float] | None = PIXEL_RANGE,
    method: str | None = None,
    include_clean: bool = True,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate clean and attacked inputs over a grid of ε × spaces.

    ``evaluate(attack)`` is the caller's evaluation: ``attack`` is None for the clean score, else an
    :class:`FGSM` to apply per batch (``with attacked(model, batch, attack): ...``); it returns
    {metric: value}. ε = 0 is the clean score: ``evaluate(None)`` runs once and fills the ε = 0 row of
    every space (added when ``include_clean`` even if 0 is not in ``epsilons``). Returns rows
    ``{"method"?, "space", "epsilon", **metrics}``, spaces in the given order, ε ascending.
    """
    if isinstance(epsilons, (str, bytes)) or not isinstance(epsilons, Sequence) or not epsilons:
        raise ValueError(f"epsilons={epsilons!r} is invalid; allowed: a non-empty list of numbers >= 0")
    grid = sorted({_check_eps(e, "epsilons") for e in epsilons} | ({0.0} if include_clean else set()))
    if isinstance(spaces, str) or not isinstance(spaces, Sequence) or not spaces:
        raise ValueError(f"spaces={spaces!r} is invalid; allowed: a non-empty list from {ATTACK_SPACES}")
    for s in spaces:
        _check_space(s, "spaces")
    scale = _check_scale(scale)
    pixel_range = _check_pixel_range(pixel_range)
    if not callable(evaluate):
        raise ValueError(f"evaluate={evaluate!r} must be callable: evaluate(attack or None) -> dict")
    runs = [(s, e) for s in dict.fromkeys(spaces) for e in grid]
    clean: dict[str, float] | None = None
    rows = []
    for space, eps in progress_bar(runs, desc="epsilon sweep", disable=not progress):
        if eps == 0.0:
            if clean is None:
                clean = check_metrics("evaluate", evaluate(None), "the clean run")
            metrics = clean
        else:
            attack = FGSM(eps, space, scale, loss_fn, pixel_range)
            metrics = check_metrics("evaluate", evaluate(attack), f"space={space!r} epsilon={eps}")
        logger.info("robustness %s eps=%g: %s", space, eps, metrics)
        row: dict[str, Any] = {} if method is None else {"method": method}
        row.update(space=space, epsilon=eps, **metrics)
        rows.append(row)
    return rows


_KEYS = ("method", "space", "epsilon")


def sweep_table(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None = None):
    """Tidy (long) pandas table of sweep rows: one row per (method, space, epsilon, metric) with its
    ``value``, the ``clean`` value (ε = 0 of the same method and space; NaN without one) and the
    ``drop`` = clean − value. ``metrics`` picks metrics (default: every non-key field)."""
    import pandas as pd

    if not rows:
        raise ValueError("rows is empty; expected the list returned by epsilon_sweep")
    frame = pd.DataFrame([dict(r) for r in rows])
    for key in ("space", "epsilon"):
        if key not in frame:
            raise ValueError(f"rows lack the field {key!r}; expected epsilon_sweep rows")
    if "method" not in frame:
        frame["method"] = ""
    available = [c for c in frame.columns if c not in _KEYS]
    chosen = list(available if metrics is None else metrics)
    bad = [m for m in chosen if m not in available]
    if bad or not chosen:
        raise ValueError(f"metrics={metrics!r} is invalid; allowed: {available}")
    long = frame.melt(id_vars=list(_KEYS), value_vars=chosen, var_name="metric", value_name="value")
    clean = long[long["epsilon"] == 0.0].drop_duplicates(["method", "space", "metric"])
    clean = clean[["method", "space", "metric", "value"]].rename(columns={"value": "clean"})
    long = long.merge(clean, on=["method", "space", "metric"], how="left")
    long["drop"] = long["clean"] - long["value"]
    return long.sort_values(["metric", "method", "space", "epsilon"], kind="stable").reset_index(drop=True)


def plot_sweep(rows: Sequence[Mapping[str, Any]], metric: str, ax=None, *, title: str | None = None):
    """Clean-vs-attacked curves of ``metric`` over ε (ε = 0 is the clean score): one colour per method
    (when rows carry ``method``), one line style per attack space. Returns the matplotlib Axes."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    table = sweep_table(rows, [metric])
    if ax is None:
        _, ax = plt.subplots(figsize=(4.8, 3.4))
    methods = [m for m in table["method"].unique() if m != ""]
    spaces = list(table["space"].unique())
    sns.lineplot(
        data=table, x="epsilon", y="value", hue="method" if methods else None,
        style="space" if len(spaces) > 1 or not methods else None, markers=True, dashes=True, ax=ax,
    )
    ax.set_xlabel("ε (FGSM)")
    ax.set_ylabel(metric)
    ax.set_title(title if title is not None else f"{metric} under FGSM ({', '.join(spaces)})")
    ax.grid(True, alpha=0.3)
    return ax
