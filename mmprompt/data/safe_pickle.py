"""Read OFA's small pickle files (``trainval_ans2label.pkl``, ``cider_cached_tokens/*.p``) without running code.

A restricted unpickler: plain containers and scalars are built by pickle opcodes that never import anything;
every import a pickle asks for is refused except ``collections.defaultdict`` with a ``float``/``int``/``list``
default (how CIDEr document frequencies are stored), which is read as a plain ``dict``. The loaded value is
then checked to hold only ``dict``, ``str``, ``int``, ``float``, ``list`` and ``tuple`` (Python 2 byte strings
are read as ``str`` through latin-1, as OFA's own loader does).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

ALLOWED_TYPES = (dict, str, int, float, list, tuple)
_DEFAULT_FACTORIES = {"float": float, "int": int, "list": list}
_BUILTIN_MODULES = ("builtins", "__builtin__")


def _plain_dict(factory: Any = None, *_: Any) -> dict:
    if factory not in (None, *_DEFAULT_FACTORIES.values()):
        raise pickle.UnpicklingError(f"defaultdict with default factory {factory!r} is not allowed")
    return {}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "defaultdict":
            return _plain_dict
        if module in _BUILTIN_MODULES and name in _DEFAULT_FACTORIES:
            return _DEFAULT_FACTORIES[name]
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed (only plain dicts, strings and numbers)")


def _check(value: Any, path: str, where: str = "value") -> None:
    if isinstance(value, bool) or not isinstance(value, ALLOWED_TYPES):
        raise ValueError(f"path={path!r}: {where} has type {type(value).__name__}; allowed "
                         f"{', '.join(t.__name__ for t in ALLOWED_TYPES)}")
    if isinstance(value, dict):
        for k, v in value.items():
            _check(k, path, f"a key of {where}")
            _check(v, path, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check(v, path, f"{where}[{i}]")


def load_plain_pickle(path: str | os.PathLike) -> Any:
    """The value of a pickle that holds only dicts, strings, ints, floats, lists and tuples.

    Raises FileNotFoundError for a missing file and ValueError (naming the file and the offending global or
    type) for anything else; no code from the file is ever run.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"path={str(p)!r}: no such pickle file")
    with open(p, "rb") as f:
        try:
            value = _RestrictedUnpickler(f, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError) as err:
            raise ValueError(f"path={str(p)!r}: not a plain-data pickle ({err})") from None
    _check(value, str(p))
    return value
