"""Backbones: a model together with its tokenizer and the task plumbing the experiment layer needs.

``load_model("ofa-nano")`` loads the shipped nano checkpoint (no network); ``load_model(path)`` loads an
OFA-Sys-style directory (``config.json`` + weights + tokenizer files) or a Florence-2 directory saved by
transformers. Both kinds implement :class:`Backbone`, the one interface the experiment layer uses.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from mmprompt.core.checks import read_json
from mmprompt.core import env as env_names
from mmprompt.data import TaskDataset, build_ofa_tokenizer, load_tokenizer
from mmprompt.eval.evaluation import EvalResult, EvalSettings, evaluate
from mmprompt.data.ofa_files import ofa_dataset_kwargs
from mmprompt.experiment.profiles import Profile
from mmprompt.models.ofa import OFAConfig, OFAModel, from_pretrained
from mmprompt.models.ofa.config import PRESETS, REAL_PRESETS

#: Checkpoints shipped in the repository (``data/checkpoints/<name>``), pretrained by ``mmprompt.nano.pretrain``.
SHIPPED = ("ofa-nano", "ofa-nano-small")
DEFAULT_BACKBONE = "ofa-nano"


def checkpoints_dir() -> Path:
    """Where shipped checkpoints live: ``$MMPROMPT_CHECKPOINTS`` or this checkout's ``data/checkpoints``."""
    env = os.environ.get(env_names.CHECKPOINTS_DIR)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "data" / "checkpoints"


class Backbone(Protocol):
    """What the experiment layer uses of a backbone (:class:`OFABackbone`,
    :class:`~mmprompt.experiment.florence2.Florence2Backbone`)."""

    model: torch.nn.Module
    name: str

    @property
    def ofa_size(self) -> str | None:
        """The OFA size (``tiny`` … ``huge``) whose shape the model has, else None (picks gpu recipes)."""

    def make_dataset(self, task: str, split_path: str | os.PathLike, **kwargs: Any) -> Any:
        """The task's dataset over one split file."""

    def profile_options(self, task: str, split: str, data: Path, profile: Profile) -> dict[str, Any]:
        """The :meth:`make_dataset` options a profile implies for this backbone (resolution, conventions)."""

    def default_eval_settings(self, **overrides: Any) -> EvalSettings:
        """Decoding settings with the model's own defaults."""

    def evaluate(self, dataset: Any, settings: EvalSettings | None = None,
                 model: torch.nn.Module | None = None) -> EvalResult:
        """Score ``model`` (default: the backbone's) on ``dataset``."""


@dataclass
class OFABackbone:
    """An OFA model with its tokenizer."""

    model: OFAModel
    tokenizer: Any
    name: str = "ofa"
    source: str | None = None

    @property
    def patch_image_size(self) -> int:
        return self.model.config.patch_image_size

    @property
    def ofa_size(self) -> str | None:
        shape = tuple(getattr(self.model.config, k, None) for k in ("d_model", "encoder_layers", "decoder_layers"))
        for name in REAL_PRESETS:
            if shape == tuple(PRESETS[name][k] for k in ("d_model", "encoder_layers", "decoder_layers")):
                return name.removeprefix("ofa-")
        return None

    def make_dataset(self, task: str, split_path: str | os.PathLike, image_size: int | None = None,
                     **kwargs: Any) -> TaskDataset:
        """The task's dataset over an OFA-layout TSV at ``image_size`` (default: the model's resolution;
        keyword options of :class:`TaskDataset`)."""
        return TaskDataset(split_path, task, self.tokenizer, image_size or self.patch_image_size, **kwargs)

    def profile_options(self, task: str, split: str, data: Path, profile: Profile) -> dict[str, Any]:
        """The profile's image resolution, and OFA's dataset conventions where the profile reads OFA's data."""
        options: dict[str, Any] = {"image_size": profile.image_size}
        if profile.convention == "ofa":
            options.update(ofa_dataset_kwargs(task, split, data))
            if task == "vqa":
                options["add_object"] = profile.add_object
        return options

    def collate(self, samples: list[dict]) -> dict:
        from mmprompt.data import collate_batch

        return collate_batch(samples)

    def default_eval_settings(self, **overrides: Any) -> EvalSettings:
        return EvalSettings(**overrides)

    def evaluate(self, dataset: TaskDataset, settings: EvalSettings | None = None,
                 model: torch.nn.Module | None = None) -> EvalResult:
        """Score ``model`` (default: this backbone's) on ``dataset``."""
        return evaluate(self.model if model is None else model, dataset, settings)


def _ofa_tokenizer(directory: Path):
    if (directory / "tokenizer.json").is_file():
        return load_tokenizer(directory)
    if (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
        return build_ofa_tokenizer(directory)
    raise FileNotFoundError(
        f"model directory {str(directory)!r} has no tokenizer: expected tokenizer.json (mmprompt) or "
        f"vocab.json + merges.txt (OFA-Sys)"
    )


def _model_type(directory: Path) -> str:
    config = directory / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"model directory {str(directory)!r} has no config.json")
    data = read_json(config, "config file")
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(config)!r}: expected a JSON object, got {type(data).__name__}")
    return data.get("model_type", "ofa")


def model_path(name_or_dir: str | os.PathLike) -> Path:
    """The directory a backbone name (shipped) or path stands for."""
    name = os.fspath(name_or_dir)
    return checkpoints_dir() / name if name in SHIPPED else Path(name)


def _check_overrides(overrides: dict[str, Any]) -> None:
    known = {f.name for f in dataclasses.fields(OFAConfig)} - {"extra"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"load_model overrides {unknown}: not OFAConfig fields; allowed {sorted(known)}")


def _is_hub_id(name: str) -> bool:
    from mmprompt.models.florence2.model import is_hub_id

    return is_hub_id(name)


def _download(repo_id: str) -> Path:
    """A hub repository's files (cached by huggingface_hub), or a clear error where there is no network."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id))
    except Exception as err:  # noqa: BLE001 - offline, unknown repository, no huggingface_hub: one message
        raise FileNotFoundError(
            f"backbone={repo_id!r}: not a local directory, and the hub repository could not be fetched "
            f"({type(err).__name__}: {err}); where there is network run `huggingface-cli download {repo_id} "
            f"--local-dir DIR` and pass DIR") from None


def load_model(name_or_dir: str | os.PathLike = DEFAULT_BACKBONE, *, pretrained: bool = True,
               device: str | torch.device = "cpu", seed: int = 0, strict: bool = True, **overrides: Any):
    """Load a backbone by shipped name (``ofa-nano``, ``ofa-nano-small``), from a local directory, or from a
    hub id (``org/name``, downloaded where there is network; a clear error offline).

    ``pretrained=False`` builds the same architecture with random weights (seeded) and the same
    tokenizer — the from-scratch baseline of the transfer study. ``overrides`` replace fields of an OFA
    directory's ``config.json`` (e.g. ``patch_image_size=384``, ``dropout=0.0``); a config.json without
    ``patch_image_size`` (OFA-Sys') takes the size of the preset whose dimensions it matches. The weights'
    keys must match the model's (``strict=False``: load what matches, log the rest).
    """
    name = os.fspath(name_or_dir)
    directory = model_path(name)
    if not directory.is_dir() and _is_hub_id(name):
        directory = _download(name)
    if not directory.is_dir():
        hint = f"a shipped name {SHIPPED} or a model directory"
        raise FileNotFoundError(f"backbone={name!r}: no directory {str(directory)!r} ({hint})")
    kind = _model_type(directory)
    if kind == "florence2":
        if overrides or not strict:
            raise ValueError(f"config overrides {sorted(overrides)} / strict=False: only for OFA backbones")
        if not pretrained:
            raise ValueError("pretrained=False is only supported for OFA backbones")
        from mmprompt.experiment.florence2 import florence2_backbone

        backbone = florence2_backbone(directory)
        backbone.model.to(device)
        return backbone
    if kind != "ofa":
        raise ValueError(f"backbone={name!r}: config.json model_type={kind!r}; allowed 'ofa' or 'florence2'")
    _check_overrides(overrides)
    tokenizer = _ofa_tokenizer(directory)
    if pretrained:
        model = from_pretrained(directory, strict=strict, **overrides)
    else:
        config = OFAConfig.from_json(directory / "config.json")
        if overrides:
            config = OFAConfig.from_dict({**config.to_dict(), **overrides})
        model = OFAModel(config, seed=seed).eval()
    return OFABackbone(model.to(device), tokenizer, name=Path(name).name, source=str(directory))
