"""Efficiency benchmarks, run as ``python -m mmprompt.bench <name> [options]``.

Each benchmark is a module ``mmprompt.bench.<name>`` with a ``main(argv: list[str]) -> int | None``
function; dropping such a module into this package is all it takes to add one.
"""

from __future__ import annotations

import pkgutil


def available() -> list[str]:
    """Names of the benchmark modules in this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
