"""Saving and loading prompts: small safetensors files plus a JSON config with a backbone fingerprint.

A prompt directory holds ``prompt.safetensors`` (only the prompt parameters) and ``prompt.json``
(format, :class:`PrefixConfig`, targeted layers, and the fingerprint of the backbone it was trained
on). The fingerprint records the architecture class, per-stack layers/heads/head_dim/d_model, and a
SHA-256 over a few weight tensors (token embedding, first encoder ``k_proj``, last decoder ``v_proj``)
rounded to bfloat16, so "same architecture, other weights" is caught while a float32 ↔ bfloat16 cast
of the same checkpoint is not. Loading onto a backbone that differs fails with a message listing
every difference. Files are written atomically (temp file in the same directory, then ``os.replace``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from mmprompt.core.checks import read_json
from mmprompt.core.atomic import atomic_write, write_json
from mmprompt.tuning import state as st
from mmprompt.tuning.prefix import PrefixConfig, PrefixModule, apply_prefix, new_prefix_module, prefix_module
from mmprompt.tuning.sites import discover_sites

logger = logging.getLogger(__name__)

FORMAT = "mmprompt-prefix"
FORMAT_VERSION = 1
WEIGHTS_FILE = "prompt.safetensors"
CONFIG_FILE = "prompt.json"


def _fingerprint_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    backbone = discover_sites(model)
    tensors = {"token_embedding": st.input_embeddings(model).weight}
    enc, dec = backbone.of_kind("encoder_self"), backbone.of_kind("decoder_self")
    if enc:
        tensors["encoder_first_k_proj"] = enc[0].module.k_proj.weight
    if dec:
        tensors["decoder_last_v_proj"] = dec[-1].module.v_proj.weight
    return tensors


def fingerprint(model: nn.Module) -> dict[str, Any]:
    """Architecture class, per-stack sizes and a weight hash of a backbone."""
    backbone = discover_sites(model)
    digest = hashlib.sha256()
    for name, tensor in _fingerprint_tensors(model).items():
        data = tensor.detach().to("cpu", torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(data)
    return {
        "architecture": type(model).__name__,
        "stacks": {name: info.as_dict() for name, info in backbone.stacks.items()},
        "weights_sha256": digest.hexdigest(),
    }


def fingerprint_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable differences between two fingerprints (empty when they match)."""
    diffs = []
    if saved.get("architecture") != current.get("architecture"):
        diffs.append(f"architecture: saved {saved.get('architecture')}, model {current.get('architecture')}")
    saved_stacks, stacks = saved.get("stacks", {}), current.get("stacks", {})
    for stack in sorted(set(saved_stacks) | set(stacks)):
        a, b = saved_stacks.get(stack), stacks.get(stack)
        if a is None or b is None:
            diffs.append(f"{stack} stack: saved {'present' if a else 'absent'}, model {'present' if b else 'absent'}")
            continue
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                diffs.append(f"{stack} {key}: saved {a.get(key)}, model {b.get(key)}")
    if not diffs and saved.get("weights_sha256") != current.get("weights_sha256"):
        diffs.append("weights: same architecture but different backbone weights (weight hash differs)")
    return diffs


def save_prompt(model: nn.Module, directory: str | os.PathLike, *, fold: bool = False) -> Path:
    """Save the prompt applied to ``model`` into ``directory`` (created if needed); returns the directory.

    ``fold=True`` stores the flat tables a reparameterisation MLP produces (the live module is unchanged).
    """
    return write_prompt(prefix_module(model), fingerprint(model), directory, fold=fold)


def write_prompt(bank: PrefixModule, backbone_fingerprint: dict[str, Any], directory: str | os.PathLike, *,
                 fold: bool = False) -> Path:
    """Write one :class:`PrefixModule` (trained on the backbone with ``backbone_fingerprint``) to ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = bank.config
    if fold and config.reparam:
        tensors = {f"encoders.{k}.embedding.weight": t for k, t in bank.tables().items()}
        config = PrefixConfig.from_dict({**config.to_dict(), "reparam": False, "reparam_hidden": None})
    else:
        tensors = {k: v.detach().clone() for k, v in bank.state_dict().items()}
    tensors = {k: v.to("cpu").contiguous() for k, v in tensors.items()}
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "config": config.to_dict(),
        "layers": bank.layers(),
        "fingerprint": backbone_fingerprint,
    }
    atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT}))
    write_json(directory / CONFIG_FILE, meta)
    logger.info("saved prompt (%d tensors) to %s", len(tensors), directory)
    return directory


def read_prompt_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``prompt.json`` of a prompt directory."""
    directory = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"prompt directory {str(directory)!r} has no {name}")
    meta = read_json(directory / CONFIG_FILE, "prompt config")
    if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{directory / CONFIG_FILE}: format {meta.get('format')!r} v{meta.get('version')!r}; "
            f"expected {FORMAT!r} v{FORMAT_VERSION}"
        )
    return meta


def read_prompt(model: nn.Module, directory: str | os.PathLike,
                current_fingerprint: dict[str, Any] | None = None) -> PrefixModule:
    """The saved prompt as a :class:`PrefixModule` planned on ``model``'s sites (on its device and dtype), not
    attached to anything. Every check runs here: format, backbone fingerprint (``ValueError`` naming every
    difference), config against the backbone's depth, and the weights against the config."""
    meta = read_prompt_meta(directory)
    diffs = fingerprint_differences(meta["fingerprint"], current_fingerprint or fingerprint(model))
    if diffs:
        raise ValueError(f"prompt in {str(directory)!r} was trained on another backbone: " + "; ".join(diffs))
    try:
        bank = new_prefix_module(model, PrefixConfig.from_dict(meta["config"]))
    except ValueError as err:
        raise ValueError(f"prompt in {str(directory)!r} does not fit this backbone: {err}") from err
    if bank.layers() != meta["layers"]:
        raise ValueError(f"saved prompt targets layers {meta['layers']}, config resolves to {bank.layers()}")
    reference = next(bank.parameters())
    tensors = {k: v.to(reference) for k, v in load_file(str(Path(directory) / WEIGHTS_FILE)).items()}
    try:
        bank.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise ValueError(f"prompt weights in {str(directory)!r} do not fit its config: {err}") from err
    bank.clear_cache()
    return bank


def load_prompt(model: nn.Module, directory: str | os.PathLike) -> PrefixModule:
    """Apply the saved prompt to ``model`` (which must carry no tuning method) and return its module.

    Raises ``ValueError`` naming every difference if ``model`` is not the backbone the prompt was saved
    from.
    """
    st.ensure_free(model, "prefix")
    saved = read_prompt(model, directory)
    bank = apply_prefix(model, saved.config)
    with torch.no_grad():
        bank.load_state_dict(saved.state_dict(), strict=True)
    bank.clear_cache()
    logger.info("loaded prompt from %s", directory)
    return bank
