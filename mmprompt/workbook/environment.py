"""The environment record of a run: versions, platform, CPU/GPU and git commit."""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

_PACKAGES = ("mmprompt", "torch", "transformers", "tokenizers", "safetensors", "numpy", "papermill", "nbclient",
             "ipykernel")
#: The package directory (``mmprompt/``) of the library that runs the notebooks.
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


@functools.lru_cache(maxsize=4)
def capture_environment(repo_dir: str | None = None) -> dict[str, Any]:
    """Versions, platform, CPU/GPU and git commit of the interpreter that runs the notebooks.

    ``packages`` holds the installed distributions' versions (``2.14.1``); ``torch_build`` the version torch
    reports at run time, with its local build tag (``2.14.1+cu130``, ``2.13.0+cpu``)."""
    packages: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    gpu, cuda, torch_build = None, None, None
    with contextlib.suppress(Exception):
        import torch

        cuda, torch_build = torch.version.cuda, torch.__version__
        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    cwd = Path(repo_dir or PACKAGE_DIR)
    commit = _git(["rev-parse", "HEAD"], cwd)
    dirty = _git(["status", "--porcelain", "--untracked-files=no"], cwd)
    return {
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpu": gpu,
        "cuda": cuda,
        "torch_build": torch_build,
        "packages": packages,
        "git_commit": commit,
        "git_dirty": None if dirty is None else bool(dirty),
    }
