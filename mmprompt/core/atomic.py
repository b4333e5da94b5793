"""Atomic writes, the only ones in mmprompt.

Files: the new content goes to a temporary file in the target's directory, is flushed to disk, and is
renamed over the target, so a crash leaves the old file or the new one, never a mixture
(:func:`atomic_write` and its wrappers). Directories (checkpoints, tokenizers, generated data, finished
notebook runs): :func:`atomic_dir` fills a hidden temporary sibling and swaps it in whole with
:func:`replace_dir`, under a lock on the parent so concurrent writers of the same target leave one complete
directory and no debris. Everything written gets the permissions a plain ``open``/``mkdir`` would under the
current umask (``mkstemp``/``mkdtemp`` alone would leave 0600/0700).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
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


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``directory`` (held by this process until the block ends)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def temp_dir_for(final: str | os.PathLike) -> Path:
    """A new, empty hidden directory beside ``final`` (``.<name>.tmp-<pid>-…``), with umask permissions."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    os.chmod(tmp, default_mode(directory=True))
    return tmp


def replace_dir(src: str | os.PathLike, dst: str | os.PathLike, *, replace: bool = True) -> bool:
    """Move the finished directory ``src`` to ``dst`` in one step. An existing ``dst`` is swapped out and
    deleted only after ``src`` is in place (``replace=False`` keeps it and discards ``src``; returns False)."""
    src, dst = Path(src), Path(dst)
    with _locked(dst.parent):
        if not dst.exists():
            os.rename(src, dst)
            return True
        if not replace:
            shutil.rmtree(src, ignore_errors=True)
            return False
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.rename(dst, old)
        os.rename(src, dst)
    shutil.rmtree(old, ignore_errors=True)
    return True


@contextmanager
def atomic_dir(final: str | os.PathLike, *, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temporary directory; when the block succeeds, its files are flushed to disk and it
    replaces ``final`` (see :func:`replace_dir`); when it fails, it vanishes and ``final`` is untouched."""
    tmp = temp_dir_for(final)
    try:
        yield tmp
        for f in tmp.rglob("*"):
            os.chmod(f, default_mode(directory=f.is_dir()))
            if f.is_file():
                fsync_file(f)
        replace_dir(tmp, final, replace=replace)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def stale_temp_dirs(parent: str | os.PathLike) -> list[Path]:
    """Temporary directories under ``parent`` left by writers that died (their process is gone)."""
    out = []
    for p in Path(parent).glob(".*.tmp-*"):
        pid = p.name.rsplit(".tmp-", 1)[1].split("-", 1)[0]
        if p.is_dir() and (not pid.isdigit() or not _alive(int(pid))):
            out.append(p)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
