"""Atomic file writes: the new content goes to a temporary file in the target's directory, is flushed
to disk, and is renamed over the target, so a crash leaves the old file or the new one, never a mixture.
Every file mmprompt writes (JSON records, metrics, weights, TSVs) goes through :func:`atomic_write`."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any


def default_mode(directory: bool = False) -> int:
    """Permissions a plain ``open``/``mkdir`` would give under the current umask (mkstemp/mkdtemp use 0600/0700)."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` to fill a temporary file, then rename it to ``path`` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, default_mode())
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, ``\\n`` line ends) atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8", newline="\n"))


def write_json(path: str | os.PathLike, obj: Any, **dump_kwargs) -> Path:
    """Write ``obj`` as indented JSON atomically; ``dump_kwargs`` go to :func:`json.dumps`
    (e.g. ``sort_keys=True``, ``allow_nan=False``, ``default=str``)."""
    return write_text(path, json.dumps(obj, **{"indent": 2, **dump_kwargs}) + "\n")


def write_figure(path: str | os.PathLike, fig: Any, **savefig_kwargs) -> Path:
    """Save the matplotlib figure ``fig`` atomically, in the format named by ``path``'s suffix."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, **savefig_kwargs))


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> Path:
    """Replace ``path`` atomically with one JSON object per line."""
    return write_text(path, "".join(json.dumps(r) + "\n" for r in records))
