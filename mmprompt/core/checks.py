"""Parameter checks shared by every layer: each raises ``ValueError`` naming the parameter, the value and
what is allowed, so bad input is refused before any work starts."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def _range(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f" in [{lo}, {hi}]"
    if lo is not None:
        return f" >= {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""


def check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None, *,
              optional: bool = False) -> int | None:
    """``value`` if it is an int (not a bool) within ``[lo, hi]`` (``None`` too with ``optional``)."""
    if value is None and optional:
        return None
    ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok or (lo is not None and value < lo) or (hi is not None and value > hi):
        allowed = f"an integer{_range(lo, hi)}" + (" or None" if optional else "")
        raise ValueError(f"{name}={value!r}: allowed {allowed}")
    return value


def check_number(name: str, value: Any, lo: float | None = None, hi: float | None = None, *,
                 optional: bool = False) -> float | None:
    """``value`` if it is a finite int or float (not a bool, not a string) within ``[lo, hi]``."""
    if value is None and optional:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (lo is not None and value < lo) or (hi is not None and value > hi):
        allowed = f"a finite number{_range(lo, hi)}" + (" or None" if optional else "")
        raise ValueError(f"{name}={value!r}: allowed {allowed}")
    return value


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """``value`` if it is one of ``allowed``."""
    options = tuple(allowed)
    if value not in options:
        raise ValueError(f"{name}={value!r}: allowed {list(options)}")
    return value


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """The parsed JSON of ``path``; malformed JSON raises ValueError naming the file, line and column."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} {str(p)!r} is not valid JSON: {exc.msg} at line {exc.lineno} "
                         f"column {exc.colno}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} {str(p)!r} is not UTF-8 text ({exc.reason})") from None


def check_apart(name: str, path: str | os.PathLike, other_name: str, other: str | os.PathLike) -> Path:
    """``path`` (resolved) if it neither equals, lies inside nor contains ``other``: an output directory
    must not be the place whose files it would overwrite."""
    a, b = Path(path).resolve(), Path(other).resolve()
    if a == b or a.is_relative_to(b) or b.is_relative_to(a):
        how = "is" if a == b else ("is inside" if a.is_relative_to(b) else "contains")
        raise ValueError(f"{name}={str(path)!r} {how} {other_name}={str(other)!r}: writing there would "
                         f"overwrite its files; allowed: a directory outside {other_name}")
    return a


def check_metrics(source: str, metrics: Any, where: str = "") -> dict[str, float]:
    """``metrics`` (what ``source`` returned, ``for where``) as ``{name: float}``: a non-empty mapping from names
    to numbers (Python, NumPy or 0-d torch scalars; not bools)."""
    at = f" for {where}" if where else ""
    if not isinstance(metrics, Mapping) or not metrics:
        raise ValueError(f"{source} returned {metrics!r}{at}; expected a non-empty dict of metric name -> number")
    out = {}
    for name, value in metrics.items():
        try:
            if not isinstance(name, str) or isinstance(value, bool):
                raise TypeError
            out[name] = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{source} returned {name!r}: {value!r}{at}; every metric must be a number keyed by "
                             "its name (keep predictions elsewhere)") from None
    return out
