"""Efficiency benchmarks, run as ``python -m mmprompt.bench <name> [options]``.

Each benchmark is a module ``mmprompt.bench.<name>`` with a ``main(argv: list[str]) -> int | None``
function; dropping such a module into this package is all it takes to add one. Shared helpers (fresh
processes, peak memory, interleaved timing) live in :mod:`mmprompt.bench.common`.
"""

from __future__ import annotations

import pkgutil


#: Modules of this package that are helpers, not benchmarks.
HELPERS = frozenset({"common"})


def available() -> list[str]:
    """Names of the benchmark modules in this package."""
    names = (m.name for m in pkgutil.iter_modules(__path__))
    return sorted(n for n in names if not n.startswith("_") and n not in HELPERS)
