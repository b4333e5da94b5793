"""Load OFA-Sys HF-style checkpoint directories and save models in the same layout.

A directory holds ``config.json`` and the weights as ``model.safetensors`` or ``pytorch_model.bin``
(possibly sharded with an ``*.index.json``). Tokenizer files are the data pipeline's business.
Only safe loading is used (safetensors, or ``torch.load(weights_only=True)``).

Checkpoint keys are matched to the model's state-dict names; keys shaped differently are refused
before anything is loaded (the message names each key and both shapes). Missing and unexpected keys are
an error by default (a renamed prefix or a config with more layers than the file would otherwise leave
random weights behind a successful load); ``strict=False`` loads anyway, logs them and returns them in a
:class:`LoadReport`. The
relative-position bucket buffers that OFA-Sys checkpoints carry are rebuilt from the published
formulas instead of loaded; when a checkpoint has them, they are compared with the rebuilt ones and
any difference is reported.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from mmprompt.core.checks import read_json
from mmprompt.core.atomic import atomic_write, write_text

from .config import OFAConfig
from .modeling import OFAModel

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
BIN_NAME = "pytorch_model.bin"
#: Buffers of OFA-Sys checkpoints this implementation rebuilds (or does not need: image-code decoding).
REBUILT_BUFFERS = ("token_rp_bucket", "image_rp_bucket")
IGNORED_KEYS = ("decoder.image_position_idx", "encoder.version", "decoder.version")


@dataclass
class LoadReport:
    """What happened while loading a checkpoint."""

    source: str
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    rebuilt_buffers: list[str] = field(default_factory=list)
    differing_buffers: list[str] = field(default_factory=list)
    ignored_keys: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing_keys or self.unexpected_keys or self.differing_buffers)


# ------------------------------------------------------------------------------------------- reading
def _weight_files(directory: Path) -> tuple[list[Path], Callable[[Path], dict[str, torch.Tensor]]]:
    def read_bin(p: Path) -> dict[str, torch.Tensor]:
        return torch.load(p, map_location="cpu", weights_only=True)

    def read_st(p: Path) -> dict[str, torch.Tensor]:
        return load_file(str(p), device="cpu")

    for name, reader in ((SAFETENSORS_NAME, read_st), (BIN_NAME, read_bin)):
        if (directory / name).is_file():
            return [directory / name], reader
        index = directory / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(read_json(index, "weight index")["weight_map"].values()))
            return [directory / s for s in shards], reader
    raise FileNotFoundError(
        f"no weights in {str(directory)!r}: expected {SAFETENSORS_NAME} or {BIN_NAME} (or a sharded *.index.json)"
    )


def read_state_dict(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory (keys normalised: a leading ``model.`` is stripped)."""
    directory = Path(directory)
    files, reader = _weight_files(directory)
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(reader(f))
    if state and all(k.startswith("model.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items()}
    return state


def _check_directory(directory: Path) -> None:
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {str(directory)!r} does not exist")
    if not (directory / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"{str(directory)!r} has no {CONFIG_NAME}; expected an OFA-Sys HF-style directory with {CONFIG_NAME} "
            f"and {SAFETENSORS_NAME} or {BIN_NAME}"
        )


# ------------------------------------------------------------------------------------------- loading
def _alias_groups(model: torch.nn.Module) -> dict[str, list[str]]:
    """Map each parameter name to all names of the same (tied) parameter."""
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return {name: names for names in by_id.values() for name in names}


def load_state_dict_into(model: OFAModel, state: dict[str, torch.Tensor], strict: bool = False,
                         source: str = "<state dict>") -> LoadReport:
    """Copy ``state`` into ``model`` after checking shapes; returns what was missing/unexpected."""
    report = LoadReport(source=source)
    own = model.state_dict()
    buffers = dict(model.named_buffers())
    aliases = _alias_groups(model)
    to_load: dict[str, torch.Tensor] = {}
    mismatched = []
    for key, value in state.items():
        short = key.rsplit(".", 1)[-1]
        if key in IGNORED_KEYS:
            report.ignored_keys.append(key)
        elif short in REBUILT_BUFFERS and key in buffers:
            report.rebuilt_buffers.append(key)
            mine = buffers[key]
            if tuple(mine.shape) != tuple(value.shape) or not torch.equal(mine.cpu(), value.to(mine.dtype)):
                report.differing_buffers.append(key)
        elif key not in own:
            report.unexpected_keys.append(key)
        elif tuple(own[key].shape) != tuple(value.shape):
            mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}")
        else:
            to_load[key] = value
    if mismatched:
        raise ValueError(f"shape mismatch loading {source}:\n  " + "\n  ".join(mismatched))
    for key in own:
        if key in to_load or any(a in to_load for a in aliases.get(key, ())):
            continue
        if key.endswith("num_batches_tracked"):
            continue  # BatchNorm bookkeeping; no effect on outputs
        report.missing_keys.append(key)
    if strict and (report.missing_keys or report.unexpected_keys):
        raise ValueError(f"the weights of {source} do not match the model: {_keys_summary(report)}; a checkpoint "
                         "of another architecture or key naming? strict=False loads it anyway (missing weights "
                         "keep their random initial values)")
    _warn_differing_aliases(to_load, aliases)
    model.load_state_dict(to_load, strict=False)
    _log_report(report)
    return report


def _keys_summary(report: LoadReport, shown: int = 3) -> str:
    parts = []
    for what, keys in (("missing", report.missing_keys), ("unexpected", report.unexpected_keys)):
        if keys:
            more = f", … ({len(keys) - shown} more)" if len(keys) > shown else ""
            parts.append(f"{len(keys)} {what} keys ({', '.join(keys[:shown])}{more})")
    return " and ".join(parts)


def _warn_differing_aliases(to_load: dict[str, torch.Tensor], aliases: dict[str, list[str]]) -> None:
    seen = set()
    for key, names in aliases.items():
        present = [n for n in names if n in to_load]
        if len(present) > 1 and present[0] not in seen:
            seen.add(present[0])
            first = to_load[present[0]]
            if any(not torch.equal(first, to_load[n]) for n in present[1:]):
                logger.warning("tied parameters %s differ in the checkpoint; the last one wins", present)


def _log_report(report: LoadReport) -> None:
    if report.missing_keys:
        logger.warning("%d keys missing from %s (left at their initial values): %s",
                       len(report.missing_keys), report.source, report.missing_keys)
    if report.unexpected_keys:
        logger.warning("%d unexpected keys in %s (ignored): %s",
                       len(report.unexpected_keys), report.source, report.unexpected_keys)
    if report.differing_buffers:
        logger.warning("checkpoint buffers %s differ from the ones rebuilt from OFA's formulas; using the rebuilt ones",
                       report.differing_buffers)


def from_pretrained(
    path: str | Path,
    *,
    strict: bool = True,
    output_loading_info: bool = False,
    dtype: torch.dtype | None = None,
    **config_overrides,
) -> OFAModel | tuple[OFAModel, LoadReport]:
    """Build an :class:`OFAModel` from an OFA-Sys HF-style directory (``config.json`` + weights).

    ``config_overrides`` replace config.json fields (e.g. ``dropout=0.0``). Keys of the file and the model
    must match (``strict=False``: load what matches, report the rest). With ``output_loading_info`` the
    :class:`LoadReport` is returned too.
    """
    directory = Path(path)
    _check_directory(directory)
    config = OFAConfig.from_json(directory / CONFIG_NAME)
    if config_overrides:
        data = config.to_dict()
        data.update(config_overrides)
        config = OFAConfig.from_dict(data)
    state = read_state_dict(directory)
    model = OFAModel(config)
    report = load_state_dict_into(model, state, strict=strict, source=str(directory))
    if dtype is not None:
        model = model.to(dtype)
    model.eval()
    return (model, report) if output_loading_info else model


# ------------------------------------------------------------------------------------------- saving
def save_pretrained(model: OFAModel, directory: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (each atomically); tied copies are stored once."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    canonical = {name for name, _ in model.named_parameters()}
    tied = {name for name, _ in model.named_parameters(remove_duplicate=False)} - canonical
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k not in tied}
    atomic_write(directory / SAFETENSORS_NAME,
                 lambda tmp: save_file(tensors, tmp, metadata={"format": "pt", "tied": json.dumps(sorted(tied))}))
    write_text(directory / CONFIG_NAME, model.config.to_json_string())
    logger.info("saved %s (%d tensors) to %s", type(model).__name__, len(tensors), directory)
    return directory
