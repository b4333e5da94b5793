"""Atomic checkpoint directories: safetensors weights, ``weights_only`` training state, RNG.

A checkpoint directory holds ``weights.safetensors`` (the saved weights), optionally
``ema.safetensors`` and ``buffers.safetensors``, ``state.pt`` (optimizer/scheduler/scaler/RNG
state and loop counters: tensors and primitive containers only, read back with
``torch.load(weights_only=True)``) and ``meta.json``, written last. It is assembled in a hidden
temporary directory next to it and swapped in with renames, so a crash leaves either the old or
the new checkpoint, never a mixture.
"""

from __future__ import annotations

import json
import pickle
import random
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mmprompt.core.atomic import atomic_dir, stale_temp_dirs, write_json

__all__ = ["Checkpoint", "append_jsonl", "capture_rng", "clean_stale",
           "find_checkpoint", "load_tensors", "read_checkpoint", "restore_rng",
           "save_tensors", "write_checkpoint"]

WEIGHTS, EMA, BUFFERS, STATE, META = ("weights.safetensors", "ema.safetensors",
                                      "buffers.safetensors", "state.pt", "meta.json")
_ALIASES = "mmprompt_aliases"



def append_jsonl(path: str | Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line (a single write of a whole line)."""
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """``safetensors`` file of CPU copies; tensors sharing storage (tied weights) are stored once
    and restored as aliases by :func:`load_tensors`."""
    out: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    ptrs: set[int] = set()
    for name, tensor in tensors.items():
        t = tensor.detach()
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(),
               t.dtype, t.device)
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        ptr = t.untyped_storage().data_ptr()
        cpu = t.to("cpu").contiguous()
        if t.numel() and (ptr in ptrs or cpu.untyped_storage().nbytes() != cpu.nbytes):
            cpu = cpu.clone()  # an overlapping view or a slice of a larger storage
        ptrs.add(ptr)
        out[name] = cpu
    save_file(out, str(path), metadata={_ALIASES: json.dumps(aliases)})


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Inverse of :func:`save_tensors` (CPU tensors)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    tensors = load_file(str(path))
    for alias, source in json.loads(meta.get(_ALIASES, "{}")).items():
        tensors[alias] = tensors[source]
    return tensors


def clean_stale(out_dir: str | Path) -> None:
    """Remove temporary directories left by interrupted saves (of processes that are gone)."""
    for tmp in stale_temp_dirs(out_dir):
        shutil.rmtree(tmp, ignore_errors=True)


def find_checkpoint(out_dir: str | Path, name: str) -> Path | None:
    """``out_dir/name`` if complete; the previous copy if a crash hit between the two renames."""
    for cand in (Path(out_dir) / name, Path(out_dir) / f"{name}.old"):
        if (cand / META).is_file():
            return cand
    return None


def write_checkpoint(directory: str | Path, *, weights: Mapping[str, torch.Tensor],
                     meta: Mapping[str, Any], ema: Mapping[str, torch.Tensor] | None = None,
                     buffers: Mapping[str, torch.Tensor] | None = None,
                     state: Mapping[str, Any] | None = None) -> Path:
    """Atomically write a checkpoint directory (see the module docstring)."""
    with atomic_dir(directory) as tmp:
        save_tensors(tmp / WEIGHTS, weights)
        if ema is not None:
            save_tensors(tmp / EMA, ema)
        if buffers:
            save_tensors(tmp / BUFFERS, buffers)
        if state is not None:
            torch.save(dict(state), tmp / STATE)
        write_json(tmp / META, dict(meta))
    return Path(directory)


@dataclass
class Checkpoint:
    """Contents of a checkpoint directory."""

    path: Path
    meta: dict[str, Any]
    weights: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None = None
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    state: dict[str, Any] | None = None


def _read(path: Path, read: Callable[[Path], Any]) -> Any:
    """``read(path)``; a damaged file (truncated, overwritten) raises ValueError naming it."""
    try:
        return read(path)
    except (OSError, EOFError, RuntimeError, ValueError, SafetensorError, pickle.UnpicklingError) as exc:
        raise ValueError(f"checkpoint file {str(path)!r} is damaged ({type(exc).__name__}: {exc}); nothing was "
                         "changed: restore it, or start the run in another directory") from None


def read_checkpoint(directory: str | Path, *, with_state: bool = True) -> Checkpoint:
    """Load a checkpoint directory written by :func:`write_checkpoint` (safe loaders only)."""
    directory = Path(directory)
    if not (directory / META).is_file():
        raise FileNotFoundError(f"checkpoint directory={str(directory)!r} has no {META}; "
                                "expected a directory written by mmprompt.training")
    meta = _read(directory / META, lambda p: json.loads(p.read_text()))
    ema = _read(directory / EMA, load_tensors) if (directory / EMA).is_file() else None
    buffers = _read(directory / BUFFERS, load_tensors) if (directory / BUFFERS).is_file() else {}
    state = None
    if with_state and (directory / STATE).is_file():
        state = _read(directory / STATE, lambda p: torch.load(p, map_location="cpu", weights_only=True))
    return Checkpoint(directory, meta, _read(directory / WEIGHTS, load_tensors), ema, buffers, state)


def capture_rng() -> dict[str, Any]:
    """Python, NumPy, torch and CUDA generator states as tensors and primitives."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    cuda = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = torch.cuda.get_rng_state_all()
    version, internal, gauss = random.getstate()
    return {"python": [version, list(internal), gauss],
            "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                      "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
            "torch": torch.get_rng_state(), "cuda": list(cuda)}


def restore_rng(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
