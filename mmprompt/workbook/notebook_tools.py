"""Housekeeping for the numbered notebooks in ``notebooks/NN_*.ipynb``.

* ``sync``: (re)writes in every notebook a generated header cell (title + Colab badge) as the
  first cell and a prev/next navigation cell as the last cell, and regenerates the source of every
  code cell that starts with :data:`SETUP_MARKER` (the Colab install cell, so that the repository
  URL lives in ``pyproject.toml`` only). Idempotent.
* ``check``: exit 1, with one message per problem, when a notebook has outputs or execution
  counts, not exactly one ``parameters``-tagged cell, a papermill ``injected-parameters`` cell,
  no kernelspec, a stale header/navigation/setup cell, or a checked cell without a recorded output.
* ``strip``: clears outputs, execution counts and execution metadata in place.
* ``record``: executes notebooks at their defaults (the ``ci`` profile) and stores the output of
  their checked cells in :data:`CHECKED_OUTPUTS`.

Checked cells are tagged :data:`CHECK_OUTPUT_TAG`: deterministic facts (parameter counts, shapes)
whose plain-text output nbval compares on every test run (``--nbval-lax`` compares exactly these
cells). Notebooks stay committed without outputs: the expected outputs live in
``notebooks/checked_outputs.json``, and :func:`attach_checked_outputs` (called from
``notebooks/conftest.py``) hands them to nbval's collected cells.

The Colab URL comes from ``[tool.mmprompt]`` in ``pyproject.toml`` (``repository_url``,
``branch``). A notebook's title is ``metadata.mmprompt.title`` when set, else the title of its
existing generated header, else derived from the file name (``04_prompt_depth`` ->
``Prompt depth``); sync stores it in ``metadata.mmprompt.title``. Generated cells are markdown
cells whose first line is :data:`HEADER_MARKER` or :data:`NAV_MARKER`; edit the title in the
metadata (or in the header's ``#`` line), not elsewhere.

CLI: ``python -m mmprompt.notebook_tools {sync,check,strip,record} [--root REPO] [NOTEBOOK ...]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import re
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

from mmprompt.core.atomic import write_text

log = logging.getLogger("mmprompt.workbook.notebook_tools")  # same name under `python -m`

HEADER_MARKER = "<!--MMPROMPT-HEADER-->"
NAV_MARKER = "<!--NAVIGATION-->"
SETUP_MARKER = "# MMPROMPT-SETUP"
HEADER_ID = "mmprompt-header"
NAV_ID = "mmprompt-navigation"
NOTEBOOK_PATTERN = re.compile(r"^\d{2}_.+\.ipynb$")
COLAB_BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
#: The paper the workbook follows; linked from every notebook header and the README.
PAPER = ("Yang, Lin et al. (2022), *Prompt Tuning for Generative Multimodal Pretrained Models*",
         "https://arxiv.org/abs/2208.02532")
_STRIP_CELL_METADATA = ("execution", "papermill", "collapsed", "scrolled")
_STRIP_NB_METADATA = ("papermill", "widgets")
CHECK_OUTPUT_TAG = "nbval-check-output"
CHECKED_OUTPUTS = "checked_outputs.json"  # next to the notebooks: {notebook file: {cell id: [outputs]}}
#: Output kinds a checked cell keeps (the rest, e.g. HTML, images, widgets, stderr, is not compared).
_CHECKED_MIME = "text/plain"


@dataclass(frozen=True)
class RepoInfo:
    """Where the notebooks live on GitHub."""

    owner: str
    repo: str
    branch: str
    notebooks_dir: str = "notebooks"

    @property
    def clone_url(self) -> str:
        return f"https://github.com/{self.owner}/{self.repo}.git"

    @property
    def url(self) -> str:
        return f"https://github.com/{self.owner}/{self.repo}"

    def blob_url(self, filename: str) -> str:
        """GitHub page of ``notebooks/<filename>`` on the configured branch: an absolute link, so navigation
        works wherever a copy of the notebook lies (``notebooks/``, ``papermill_runs/<nb>/<run>/``, Colab)."""
        return f"{self.url}/blob/{self.branch}/{self.notebooks_dir}/{filename}"

    def colab_url(self, filename: str) -> str:
        """Open-in-Colab URL of ``notebooks/<filename>`` on the configured branch."""
        return (f"https://colab.research.google.com/github/{self.owner}/{self.repo}/blob/"
                f"{self.branch}/{self.notebooks_dir}/{filename}")


def find_repo_root(start: str | Path | None = None) -> Path:
    """The nearest directory at or above ``start`` (default: cwd) whose pyproject.toml has
    ``[tool.mmprompt]``."""
    here = Path(start or Path.cwd()).resolve()
    for cand in (here, *here.parents):
        pp = cand / "pyproject.toml"
        if pp.is_file() and "mmprompt" in tomllib.loads(pp.read_text(encoding="utf-8")).get("tool", {}):
            return cand
    raise FileNotFoundError(f"no pyproject.toml with [tool.mmprompt] at or above {str(here)!r}; pass --root")


def read_repo_info(root: str | Path) -> RepoInfo:
    """Parse ``repository_url`` (``https://github.com/<owner>/<repo>``) and ``branch`` from pyproject."""
    pp = Path(root) / "pyproject.toml"
    if not pp.is_file():
        raise FileNotFoundError(f"{str(pp)!r} does not exist")
    cfg = tomllib.loads(pp.read_text(encoding="utf-8")).get("tool", {}).get("mmprompt", {})
    url, branch = cfg.get("repository_url"), cfg.get("branch")
    m = re.fullmatch(r"https://github\.com/([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+?)(?:\.git)?/?", str(url or ""))
    if not m:
        raise ValueError(f"[tool.mmprompt] repository_url={url!r} in {pp}; allowed: https://github.com/<owner>/<repo>")
    if not isinstance(branch, str) or not branch.strip():
        raise ValueError(f"[tool.mmprompt] branch={branch!r} in {pp}; allowed: a non-empty branch name")
    return RepoInfo(m.group(1), m.group(2), branch.strip())


def list_notebooks(root: str | Path) -> list[Path]:
    """``<root>/notebooks/NN_*.ipynb`` in order."""
    nb_dir = Path(root) / "notebooks"
    if not nb_dir.is_dir():
        return []
    return sorted(p for p in nb_dir.iterdir() if p.is_file() and NOTEBOOK_PATTERN.match(p.name))


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(str(path), as_version=4)


def _is_generated(cell: Any, marker: str) -> bool:
    return cell.cell_type == "markdown" and cell.source.lstrip().startswith(marker)


def title_from_filename(path: str | Path) -> str:
    """``04_prompt_depth.ipynb`` -> ``Prompt depth``."""
    words = re.sub(r"^\d+_", "", Path(path).stem).replace("_", " ").strip()
    return words[:1].upper() + words[1:]


def notebook_title(nb: nbformat.NotebookNode, path: Path) -> str:
    """Title from metadata, else from the generated header's ``#`` line, else from the file name."""
    title = nb.metadata.get("mmprompt", {}).get("title")
    if isinstance(title, str) and title.strip():
        return title.strip()
    for cell in nb.cells:
        if _is_generated(cell, HEADER_MARKER):
            m = re.search(r"^#\s+(.+?)\s*$", cell.source, flags=re.MULTILINE)
            if m:
                return m.group(1)
    return title_from_filename(path)


def header_source(title: str, filename: str, info: RepoInfo) -> str:
    """Markdown of the generated header cell: title, Colab badge, the paper and the repository."""
    return (f"{HEADER_MARKER}\n# {title}\n\n[![Open In Colab]({COLAB_BADGE})]({info.colab_url(filename)})\n\n"
            f"Paper: [{PAPER[0]}]({PAPER[1]}) · Workbook: [{info.owner}/{info.repo}]({info.url})")


def nav_source(prev: tuple[str, str] | None, nxt: tuple[str, str] | None, info: RepoInfo) -> str:
    """Markdown of the navigation cell; ``prev``/``nxt`` are ``(filename, title)`` or None. Links are
    absolute (:meth:`RepoInfo.blob_url`): executed copies in ``papermill_runs/`` have no neighbours."""
    parts = []
    if prev:
        parts.append(f"< [{prev[1]}]({info.blob_url(prev[0])})")
    if nxt:
        parts.append(f"[{nxt[1]}]({info.blob_url(nxt[0])}) >")
    return f"{NAV_MARKER}\n" + (" | ".join(parts) if parts else "(only notebook)")


def setup_source(info: RepoInfo) -> str:
    """Source of the generated Colab setup cell: on Colab, clone the repository (library + shipped
    checkpoints, which a plain ``pip install git+...`` of the package would leave behind), install it with
    the light ``colab`` extra (no JupyterLab, papermill or test tools: Colab has its own) and import it
    from the clone; elsewhere do nothing."""
    return (
        f"{SETUP_MARKER}: generated by `python -m mmprompt.notebook_tools sync` from [tool.mmprompt] in\n"
        "# pyproject.toml (edit it there). On Colab: fetch and install the workbook; elsewhere: nothing to do.\n"
        "import sys\n\n"
        'if "google.colab" in sys.modules:\n'
        "    import os\n"
        "    import subprocess\n\n"
        '    _checkout = "/content/mmprompt"\n'
        "    if not os.path.isdir(_checkout):\n"
        f'        subprocess.run(["git", "clone", "--quiet", "--depth", "1", "--branch", "{info.branch}",\n'
        f'                        "{info.clone_url}", _checkout], check=True)\n'
        '    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-e", _checkout + "[colab]"],\n'
        "                   check=True)\n"
        "    sys.path.insert(0, _checkout)"
    )


def _is_setup(cell: Any) -> bool:
    return cell.cell_type == "code" and cell.source.lstrip().startswith(SETUP_MARKER)


def _generated_cell(cell_id: str, source: str, nb_minor: int) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_markdown_cell(source)
    if nb_minor >= 5:
        cell.id = cell_id  # fixed ids keep sync idempotent
    else:
        cell.pop("id", None)  # cell ids only exist from nbformat 4.5 on
    return cell


def synced(nb: nbformat.NotebookNode, filename: str, title: str, info: RepoInfo,
           prev: tuple[str, str] | None, nxt: tuple[str, str] | None) -> nbformat.NotebookNode:
    """A copy of ``nb`` with fresh header (first) and navigation (last) cells."""
    out = copy.deepcopy(nb)
    body = [c for c in out.cells if not (_is_generated(c, HEADER_MARKER) or _is_generated(c, NAV_MARKER))]
    for cell in body:
        if _is_setup(cell):
            cell.source = setup_source(info)
    minor = int(out.get("nbformat_minor", 5))
    out.cells = [_generated_cell(HEADER_ID, header_source(title, filename, info), minor), *body,
                 _generated_cell(NAV_ID, nav_source(prev, nxt, info), minor)]
    out.metadata.setdefault("mmprompt", {})["title"] = title
    return out


def _expected(paths: Sequence[Path], info: RepoInfo) -> dict[Path, tuple[str, str]]:
    """``{path: (current text, synced text)}`` for the whole ordered set of notebooks."""
    nbs = {p: _read(p) for p in paths}
    titles = {p: notebook_title(nbs[p], p) for p in paths}
    out = {}
    for i, p in enumerate(paths):
        prev = (paths[i - 1].name, titles[paths[i - 1]]) if i > 0 else None
        nxt = (paths[i + 1].name, titles[paths[i + 1]]) if i + 1 < len(paths) else None
        new = synced(nbs[p], p.name, titles[p], info, prev, nxt)
        out[p] = (p.read_text(encoding="utf-8"), nbformat.writes(new) + "\n")
    return out


def sync(root: str | Path) -> list[Path]:
    """Rewrite header and navigation cells of every ``notebooks/NN_*.ipynb``; returns the changed files."""
    root = Path(root)
    info = read_repo_info(root)
    changed = []
    for path, (old, new) in _expected(list_notebooks(root), info).items():
        if old != new:
            write_text(path, new)
            changed.append(path)
            log.info("synced %s", path.name)
    return changed


def is_checked(cell: Any) -> bool:
    """Whether nbval compares this cell's stored output (the cell is tagged :data:`CHECK_OUTPUT_TAG`)."""
    return cell.cell_type == "code" and CHECK_OUTPUT_TAG in cell.get("metadata", {}).get("tags", [])


def notebook_problems(nb: nbformat.NotebookNode) -> list[str]:
    """Problems of one notebook that do not depend on its neighbours."""
    problems = []
    code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    with_out = [i for i, c in code if c.get("outputs")]
    if with_out:
        problems.append(f"{len(with_out)} code cell(s) have outputs (cells {with_out}); run `strip`")
    counted = [i for i, c in code if c.get("execution_count") is not None]
    if counted:
        problems.append(f"{len(counted)} code cell(s) have execution counts (cells {counted}); run `strip`")
    n_params = sum("parameters" in c.get("metadata", {}).get("tags", []) for _, c in code)
    if n_params != 1:
        problems.append(f"{n_params} code cells are tagged 'parameters'; exactly one is required")
    if any("injected-parameters" in c.get("metadata", {}).get("tags", []) for c in nb.cells):
        problems.append("has a papermill 'injected-parameters' cell (an executed copy?)")
    if not nb.metadata.get("kernelspec", {}).get("name"):
        problems.append("has no metadata.kernelspec (papermill and nbval need it)")
    return problems


def check(root: str | Path) -> dict[Path, list[str]]:
    """``{notebook: [problems]}`` for every notebook with at least one problem."""
    root = Path(root)
    info = read_repo_info(root)
    paths = list_notebooks(root)
    expected = _expected(paths, info)
    report: dict[Path, list[str]] = {}
    recorded = load_checked_outputs(root / info.notebooks_dir)
    for path in paths:
        nb = _read(path)
        problems = notebook_problems(nb)
        checked = {c.get("id") for c in nb.cells if is_checked(c)}
        missing, stale = checked - set(recorded.get(path.name, {})), set(recorded.get(path.name, {})) - checked
        if missing or stale:
            problems.append(f"{CHECKED_OUTPUTS} is out of date (checked cells without an output: {sorted(missing)}, "
                            f"outputs of cells no longer checked: {sorted(stale)}); run `record`")
        old, new = expected[path]
        if _read_text_nb(old) != _read_text_nb(new):
            problems.append("header/navigation cells are missing or stale; run `sync`")
        if problems:
            report[path] = problems
    return report


def _read_text_nb(text: str) -> Any:
    """Normalised content for comparison (ignores JSON formatting differences)."""
    return nbformat.from_dict(nbformat.reads(text, as_version=4))


def strip_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Clear outputs, execution counts and execution metadata (in place; returns ``nb``)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        for key in _STRIP_CELL_METADATA:
            cell.metadata.pop(key, None)
    for key in _STRIP_NB_METADATA:
        nb.metadata.pop(key, None)
    return nb


def _checked_outputs(outputs: Sequence[Any]) -> list[dict]:
    """The compared part of a checked cell's outputs: stdout text and plain-text results."""
    kept = []
    for out in outputs:
        if out.output_type == "stream" and out.name == "stdout":
            kept.append({"output_type": "stream", "name": "stdout", "text": out.text})
        elif out.output_type in ("execute_result", "display_data") and _CHECKED_MIME in out.get("data", {}):
            kept.append({"output_type": "display_data", "metadata": {},
                         "data": {_CHECKED_MIME: out.data[_CHECKED_MIME]}})
    return kept


def load_checked_outputs(notebooks_dir: str | Path) -> dict[str, dict[str, list[dict]]]:
    """``{notebook file: {cell id: outputs}}`` from :data:`CHECKED_OUTPUTS` (empty when there is none)."""
    path = Path(notebooks_dir) / CHECKED_OUTPUTS
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def attach_checked_outputs(items: Sequence[Any]) -> None:
    """Give nbval's collected checked cells their recorded outputs (a pytest ``collection_modifyitems``
    helper): nbval compares a cell's output only when the cell it read holds one, and the committed
    notebooks hold none."""
    cache: dict[Path, dict] = {}
    for item in items:
        cell = getattr(item, "cell", None)
        if cell is None or not is_checked(cell):
            continue
        nb_path = Path(str(item.fspath))
        if nb_path.parent not in cache:
            cache[nb_path.parent] = load_checked_outputs(nb_path.parent)
        outputs = cache[nb_path.parent].get(nb_path.name, {}).get(cell.get("id"))
        if outputs is not None:
            cell.outputs = [nbformat.from_dict(o) for o in outputs]
            cell.execution_count = 1


def _existing(paths: Sequence[str | Path]) -> list[Path]:
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"notebook(s) {missing} do not exist")
    return [Path(p) for p in paths]


def strip(paths: Sequence[str | Path]) -> list[Path]:
    """Strip the given notebooks in place; returns the files that changed."""
    changed = []
    for p in _existing(paths):
        old = p.read_text(encoding="utf-8")
        new = nbformat.writes(strip_notebook(nbformat.reads(old, as_version=4))) + "\n"
        if new != old:
            write_text(p, new)
            changed.append(p)
            log.info("stripped %s", p.name)
    return changed


def record(paths: Sequence[str | Path]) -> list[Path]:
    """Execute each notebook with checked cells at its defaults (papermill, in its own directory) and store
    their outputs in the :data:`CHECKED_OUTPUTS` file next to it; returns the notebooks whose entry changed."""
    import papermill  # heavy: imported only when recording

    changed = []
    for path in _existing(paths):
        nb = _read(path)
        ids = [c.get("id") for c in nb.cells if is_checked(c)]
        store = path.parent / CHECKED_OUTPUTS
        recorded = load_checked_outputs(path.parent)
        entry = {}
        if ids:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / path.name
                papermill.execute_notebook(str(path), str(out), cwd=str(path.parent.resolve()), progress_bar=False)
                executed = {c.get("id"): c for c in _read(out).cells}
            entry = {i: _checked_outputs(executed[i].outputs) for i in ids}
        if recorded.get(path.name, {}) != entry:
            recorded = {k: v for k, v in recorded.items() if k != path.name} | ({path.name: entry} if entry else {})
            write_text(store, json.dumps(dict(sorted(recorded.items())), indent=1, ensure_ascii=False) + "\n")
            changed.append(path)
            log.info("recorded %s", path.name)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (1 when ``check`` finds problems, 2 on bad input)."""
    parser = argparse.ArgumentParser(prog="python -m mmprompt.notebook_tools", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("sync", "check", "strip", "record"))
    parser.add_argument("paths", nargs="*", type=Path,
                        help="notebooks for `strip` / `record` (default: all notebooks/NN_*)")
    parser.add_argument("--root", type=Path, default=None, help="repository root (default: found from cwd)")
    args = parser.parse_intermixed_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        root = args.root.resolve() if args.root else find_repo_root()
        if args.paths and args.command not in ("strip", "record"):
            raise ValueError(f"`{args.command}` works on all notebooks/NN_*.ipynb together; it takes no paths")
        if args.command == "sync":
            changed = sync(root)
            log.info("sync: %d notebook(s) changed", len(changed))
        elif args.command in ("strip", "record"):
            run = strip if args.command == "strip" else record
            changed = run(args.paths or list_notebooks(root))
            log.info("%s: %d notebook(s) changed", args.command, len(changed))
        else:
            problems = check(root)
            for path, msgs in problems.items():
                for msg in msgs:
                    log.error("%s: %s", path.relative_to(root), msg)
            log.info("check: %d notebook(s), %d with problems", len(list_notebooks(root)), len(problems))
            return 1 if problems else 0
    except (ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
