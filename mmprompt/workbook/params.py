"""Notebook parameters: the rules they are checked against, CLI value parsing, run ids, the defaults a
notebook declares in its ``parameters`` cell, and conversion of values to JSON."""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import math
import numbers
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mmprompt.data.tasks import TASKS
from mmprompt.eval.stats import check_seeds

log = logging.getLogger(__name__)

PROFILES: tuple[str, ...] = ("ci", "cpu", "gpu")
#: The parameter the runner injects: where the notebook writes ``metrics.json``.
RUN_DIR_PARAM = "run_dir"


@dataclass(frozen=True)
class ParamRule:
    """A check for one notebook parameter and the human description of what it allows."""

    check: Callable[[Any], bool]
    allowed: str


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def one_of(*values: Any) -> ParamRule:
    """The parameter must equal one of ``values``."""
    return ParamRule(lambda v: any(v == x and type(v) is type(x) for x in values),
                     "one of " + ", ".join(repr(x) for x in values))


def int_range(lo: int | None = None, hi: int | None = None) -> ParamRule:
    """An integer (not bool) with ``lo <= v <= hi`` (either bound optional)."""
    bounds = " and ".join(b for b in (f">= {lo}" if lo is not None else "", f"<= {hi}" if hi is not None else "") if b)
    return ParamRule(lambda v: _is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi),
                     "an integer" + (f" {bounds}" if bounds else ""))


def positive_number() -> ParamRule:
    """A finite real number > 0."""
    return ParamRule(lambda v: _is_real(v) and v > 0, "a finite number > 0")


def fraction() -> ParamRule:
    """A real number in [0, 1)."""
    return ParamRule(lambda v: _is_real(v) and 0 <= v < 1, "a number in [0, 1)")


def optional_path() -> ParamRule:
    """None, or a non-empty string/path."""
    return ParamRule(lambda v: v is None or (isinstance(v, str | os.PathLike) and str(v) != ""),
                     "None or a non-empty path string")


def seed_list() -> ParamRule:
    """A non-empty list of distinct integers >= 0 (training seeds, e.g. ``[0, 1, 2]``)."""

    def ok(v: Any) -> bool:
        try:
            check_seeds(v)
        except ValueError:
            return False
        return isinstance(v, list)

    return ParamRule(ok, "a non-empty list of distinct integers >= 0, e.g. [0, 1, 2]")


COMMON_RULES: dict[str, ParamRule] = {
    "profile": one_of(*PROFILES),
    "seed": int_range(0),
    "seeds": seed_list(),
    "task": one_of(*TASKS),
    RUN_DIR_PARAM: optional_path(),
    "model_dir": optional_path(),
    "data_dir": optional_path(),
    "batch_size": int_range(1),
    "max_steps": int_range(1),
    "epochs": int_range(1),
    "lr": positive_number(),
    "prompt_length": int_range(1),
    "dropout": fraction(),
}


def validate_params(rules: Mapping[str, ParamRule] | None = None, /, **params: Any) -> dict[str, Any]:
    """Check notebook parameters; raise ONE ``ValueError`` listing every bad one.

    Common parameters (``profile``, ``seed``, ``task``, ``run_dir``, ``lr``, ... see
    ``COMMON_RULES``) are always checked; ``rules`` adds or overrides notebook-specific ones::

        validate_params({"depth": int_range(1, 12)}, profile=profile, seed=seed, depth=depth)

    Parameters without a rule pass unchecked. Returns the parameters as a dict.
    """
    all_rules = {**COMMON_RULES, **(rules or {})}
    bad = []
    for name, value in params.items():
        rule = all_rules.get(name)
        if rule is not None and not rule.check(value):
            bad.append(f"  {name}={value!r} (allowed: {rule.allowed})")
    if bad:
        raise ValueError("invalid notebook parameter(s):\n" + "\n".join(bad))
    return dict(params)


def to_json(value: Any, where: str) -> Any:
    """Convert metric values (numpy/torch scalars included) to JSON; NaN/inf become None."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if value is None or isinstance(value, bool | str):
        return value
    if _is_int(value):
        return int(value)
    if isinstance(value, numbers.Real):
        if not math.isfinite(float(value)):
            log.warning("%s is %s; stored as null", where, value)
            return None
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): to_json(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise ValueError(f"metric {where} has unsupported type {type(value).__name__}; "
                     "allowed: numbers, bool, str, None, lists and dicts of those")


def parse_value(text: str) -> Any:
    """Parse a CLI value like papermill's ``-p``: True/False/None, int, float, a JSON list (``"[0,1,2]"``),
    else the string. Text that starts with ``[`` but is not a JSON list is a ValueError."""
    if text.lstrip().startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"value {text!r} starts with '[' but is not a JSON list ({exc.msg}); "
                             'allowed: e.g. "[0,1,2]" or \'["a","b"]\'') from exc
        if not isinstance(value, list):
            raise ValueError(f"value {text!r} starts with '[' but is not a JSON list")
        return value
    if text in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[text]
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str | bool | int) or value is None:
        return str(value)
    return json.dumps(value, sort_keys=True)


def run_id_for(params: Mapping[str, Any]) -> str:
    """Deterministic run id from the passed parameters: ``profile-cpu_length-64``.

    ``profile`` comes first, the rest sorted by name. Characters outside ``[A-Za-z0-9.+-]`` in
    values are replaced by ``-``; when that (or the 100-character cap) changes anything, an
    8-character hash of the exact parameters is appended so different runs never collide.
    """
    if not params:
        return "default"
    keys = sorted(params, key=lambda k: (k != "profile", k))
    parts, lossy = [], False
    for key in keys:
        raw = _format_value(params[key])
        safe = re.sub(r"[^A-Za-z0-9.+-]+", "-", raw).strip("-.") or "x"
        lossy |= safe != raw
        parts.append(f"{key}-{safe}")
    rid = "_".join(parts)
    if lossy or len(rid) > 100:
        digest = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8]
        rid = rid[:100].rstrip("-_.") + "_" + digest
    return rid


def _parameters_cell(nb: Any) -> Any | None:
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            return cell
    return None


def notebook_parameters(notebook: str | os.PathLike[str]) -> dict[str, Any]:
    """Names and defaults declared in the notebook's ``parameters`` cell (literal values where
    possible, else the source text of the expression)."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    cell = _parameters_cell(nb)
    if cell is None:
        raise ValueError(f"notebook {str(notebook)!r} has no code cell tagged 'parameters'")
    source = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ValueError(f"parameters cell of {str(notebook)!r} is not valid Python: {exc}") from exc
    out: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        value = node.value
        for target in targets:
            if isinstance(target, ast.Name):
                try:
                    out[target.id] = ast.literal_eval(value) if value is not None else None
                except ValueError:
                    out[target.id] = ast.get_source_segment(source, value)
    return out
