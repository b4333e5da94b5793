"""The package layout of ARCHITECTURE.md holds: imports point down the layer stack, never up, and no
module imports itself back through a cycle. Imports are read from the source (every ``import`` statement,
also those inside functions), so a lazy upward import is caught too."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mmprompt"

#: Bottom → top. A module may import its own layer and the layers below it. The top-level modules
#: (``mmprompt/runs.py`` …) are command-line entry points above everything.
LAYERS = ("core", "data", "tuning", "models", "training", "eval", "experiment", "robustness", "nano",
          "workbook", "bench")
ENTRY = len(LAYERS)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return ENTRY + 1  # mmprompt/__init__.py: lazy re-exports of the public API
    if parts[1] in LAYERS and (len(parts) > 2 or (PACKAGE / parts[1]).is_dir()):
        return LAYERS.index(parts[1])
    return ENTRY


def imported(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The mmprompt modules ``module`` imports (``from pkg import sub`` counts as the submodule)."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "mmprompt")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "mmprompt":
                continue
            subs = {f"{target}.{a.name}" for a in node.names} & set(modules)
            out.update(subs or {target})
            if len(subs) < len(node.names):
                out.add(target)
    return {m for m in out if m in modules and m != module}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {m: imported(m, p, modules) for m, p in modules.items()}


def test_every_subpackage_is_a_known_layer():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(LAYERS), f"unknown or missing layer folders: {packages ^ set(LAYERS)}"


def test_imports_point_down_the_layers(graph):
    upward = [f"{m} ({LAYERS[layer_of(m)] if layer_of(m) < ENTRY else 'entry'}) imports {t} "
              f"({LAYERS[layer_of(t)] if layer_of(t) < ENTRY else 'entry'})"
              for m, targets in graph.items() for t in sorted(targets) if layer_of(t) > layer_of(m)]
    assert not upward, "\n".join(upward)


def test_no_import_cycles(graph):
    """A package's ``__init__`` may re-export its own submodules; any other cycle is a defect."""
    def edges(m: str) -> set[str]:
        return {t for t in graph[m] if not (graph.get(t) is not None and m.startswith(t + "."))}

    cycles, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for t in sorted(edges(m)):
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t):] + [m, t]) if t in stack else f"{m} -> {t}")
            elif t not in state:
                visit(t, stack + [m])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The walk finds lazy imports inside functions and relative imports (the test can fail)."""
    fake = {"mmprompt.core.x": tmp_path / "x.py", "mmprompt.workbook.api": tmp_path / "api.py",
            "mmprompt.core.y": tmp_path / "y.py"}
    fake["mmprompt.core.x"].write_text("def f():\n    from mmprompt.workbook import api\n    from . import y\n")
    assert imported("mmprompt.core.x", fake["mmprompt.core.x"], fake) == {"mmprompt.workbook.api", "mmprompt.core.y"}
    assert layer_of("mmprompt.workbook.api") > layer_of("mmprompt.core.x")


def test_architecture_md_lists_the_layers_in_this_order():
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    listed = re.findall(r"^\| `(\w+)/` \|", text, flags=re.M)
    assert tuple(reversed(listed)) == LAYERS, "ARCHITECTURE.md's layer table (top → bottom) must match LAYERS"
