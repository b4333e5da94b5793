"""The committed workbook: layout and hygiene of notebooks/NN_*.ipynb, and notebook 04 executed through the
papermill runner (a good run, and bad ``depth`` values that must fail before any training).

Executing every notebook at the ci profile is nbval's job (``testpaths`` includes ``notebooks/``).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import nbformat
import pytest

from mmprompt.workbook import notebook_tools as nt
from mmprompt.workbook import params, runs, runs_cli
from mmprompt.workbook import api as wb

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
#: The course order: a tour, the mechanism, the tasks, the ablations, the paper, one backbone serving many
#: prompts; the pretraining appendix last.
EXPECTED = [
    "00_tour", "01_prefix_tuning_explained", "02_tasks", "03_prompt_length", "04_prompt_depth",
    "05_reparameterization", "06_robustness", "07_efficiency", "08_lightweight_methods", "09_model_scale",
    "10_paper_reproduction", "11_prompt_bank", "12_appendix_pretraining",
]
#: Functions a notebook may define: the mechanism written out by hand in 01 (checked there against the library).
TEACHING_CODE = {"01_prefix_tuning_explained": ["prefix_attention"]}
DEPTH_NB = NOTEBOOKS / "04_prompt_depth.ipynb"
#: Rules a notebook passes to ``wb.validate`` on top of the workbook's.
RULE_OVERRIDES = {
    "12_appendix_pretraining": {"backbone": params.one_of("ofa-nano", "ofa-nano-small")},
    "02_tasks": {"task": wb.optional(params.one_of(*params.TASKS))},  # None: all four tasks
    "03_prompt_length": {"length": wb.optional(params.int_range(1))},  # None: the profile's grid
    "11_prompt_bank": {"per_task": params.int_range(1)},
}


def _nb(stem: str) -> nbformat.NotebookNode:
    return nbformat.read(str(NOTEBOOKS / f"{stem}.ipynb"), as_version=4)


def _code(nb: nbformat.NotebookNode) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def test_the_numbered_notebooks_are_all_there():
    found = [p.stem for p in nt.list_notebooks(REPO)]
    assert found == EXPECTED


def test_committed_notebooks_are_clean_and_their_generated_cells_fresh():
    """No outputs or execution counts, exactly one parameters cell, a kernelspec, a recorded output for each
    checked cell, and header, navigation and setup cells as `notebook_tools sync` writes them."""
    assert nt.check(REPO) == {}


def test_a_few_deterministic_cells_are_compared_by_nbval():
    checked = {p.stem: sum(nt.is_checked(c) for c in _nb(p.stem).cells) for p in nt.list_notebooks(REPO)}
    assert checked["01_prefix_tuning_explained"] == 2 and checked["10_paper_reproduction"] == 1, checked


@pytest.mark.parametrize("stem", EXPECTED)
def test_notebook_layout(stem):
    nb = _nb(stem)
    info = nt.read_repo_info(REPO)
    cells = nb.cells
    assert nb.metadata.kernelspec.name == "python3"
    assert cells[0].source.startswith(nt.HEADER_MARKER) and cells[-1].source.startswith(nt.NAV_MARKER)
    # no hand-written title: the only level-1 heading is the generated one
    titles = [c for c in cells[1:] if c.cell_type == "markdown" and re.search(r"^# ", c.source, re.MULTILINE)]
    assert titles == []
    code = _code(nb)
    kinds = ["params" if "parameters" in c.metadata.get("tags", []) else
             "setup" if c.source.startswith(nt.SETUP_MARKER) else "code" for c in code]
    # parameters, then the generated Colab setup cell, then imports + the one call that checks the parameters,
    # loads the backbone and opens the run: before anything else runs; the last code cell saves the metrics
    assert kinds[:3] == ["params", "setup", "code"], kinds
    assert code[1].source == nt.setup_source(info) and info.clone_url in code[1].source
    assert "run = wb.start(globals()" in code[2].source and "wb.validate(" not in code[2].source
    assert "run.finish(" in code[-1].source and "run_dir" not in code[-1].source
    assert "[Yang, Lin et al. (2022)" in cells[0].source and "https://arxiv.org/abs/2208.02532" in cells[0].source


@pytest.mark.parametrize("stem", EXPECTED)
def test_parameters_cell_defaults(stem):
    defaults = params.notebook_parameters(NOTEBOOKS / f"{stem}.ipynb")
    assert defaults["profile"] == "ci" and defaults["seed"] == 0 and defaults["run_dir"] is None
    assert defaults["backbone"] == "ofa-nano" and defaults["model_dir"] is None and defaults["data_dir"] is None
    if stem not in ("12_appendix_pretraining", "10_paper_reproduction", "11_prompt_bank"):
        assert "task" in defaults
    wb.validate(RULE_OVERRIDES.get(stem, {}), **defaults)  # the rules the notebook validates with accept them


@pytest.mark.parametrize("stem", EXPECTED)
def test_notebooks_hold_no_library_code(stem):
    """Narrative, parameters, calls and plots only: functions and classes belong in mmprompt/."""
    for cell in _code(_nb(stem)):
        tree = ast.parse(cell.source)
        defined = [n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)]
        assert defined in ([], TEACHING_CODE.get(stem)), (stem, defined)


def test_notebook_01_explorer_has_the_classes_the_browser_test_uses():
    source = "\n".join(c.source for c in _code(_nb("01_prefix_tuning_explained")))
    assert "prefix_explorer(" in source and "show_with_fallback(explorer, fig" in source


def test_every_badge_link_and_setup_cell_uses_the_configured_repository():
    """The repository URL lives in one setting ([tool.mmprompt] in pyproject.toml): every Colab badge, GitHub
    link and clone in the notebooks and the README is built from it (a fork changes it there, then `sync`)."""
    info = nt.read_repo_info(REPO)
    texts = {p.name: p.read_text(encoding="utf-8") for p in nt.list_notebooks(REPO)}
    texts["README.md"] = (REPO / "README.md").read_text(encoding="utf-8")
    for name, text in texts.items():
        for owner_repo in re.findall(r"colab\.research\.google\.com/github/([^/\s]+/[^/\s]+)/", text):
            assert owner_repo == f"{info.owner}/{info.repo}", (name, owner_repo)
        for link in re.findall(r"https://github\.com/(?:mmprompt|%s)/[^\s)\"']+" % re.escape(info.owner), text):
            assert link.startswith(info.url), (name, link)
    for path in nt.list_notebooks(REPO):
        nb = nbformat.read(str(path), as_version=4)
        assert nb.cells[0].source.count(info.colab_url(path.name)) == 1, path.name
        setup = [c.source for c in nb.cells if c.source.startswith(nt.SETUP_MARKER)]
        assert setup == [nt.setup_source(info)] and f'"{info.clone_url}"' in setup[0], path.name
        assert '_checkout + "[colab]"' in setup[0]  # the light extra: Colab keeps its own Jupyter
        links = re.findall(r"\]\(([^)]+)\)", nb.cells[-1].source)
        assert links and all(link.startswith(info.url + "/blob/" + info.branch + "/notebooks/") for link in links)


def test_sync_fills_the_setup_cell_from_pyproject(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.mmprompt]\nrepository_url = "https://github.com/me/fork"\n'
                                             'branch = "dev"\n')
    (tmp_path / "notebooks").mkdir()
    nb = nbformat.v4.new_notebook()
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("profile = 'ci'")
    params.metadata.tags = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(nt.SETUP_MARKER + " stale"), nbformat.v4.new_code_cell("x = 1")]
    path = tmp_path / "notebooks" / "00_demo.ipynb"
    nbformat.write(nb, str(path))
    assert list(nt.check(tmp_path)) == [path]
    nt.sync(tmp_path)
    assert nt.check(tmp_path) == {}
    setup = nbformat.read(str(path), as_version=4).cells[2].source
    assert '"https://github.com/me/fork.git"' in setup and '"--branch", "dev"' in setup
    assert 'if "google.colab" in sys.modules:' in setup
    compile(setup, "setup", "exec")
    assert nbformat.read(str(path), as_version=4).cells[3].source == "x = 1"  # other cells untouched


# ------------------------------------------------------------------------------------------------ runs
def _run(tmp_path: Path, depth) -> runs.RunResult:
    config = runs.RunConfig(out=tmp_path / "out", progress_bar=False)
    return runs.execute_run(DEPTH_NB, {"depth": depth}, config)


@pytest.mark.slow
def test_depth_6_runs_through_the_runner_cli(tmp_path):
    """`python -m mmprompt.runs run notebooks/04_prompt_depth.ipynb -p depth 6` (papermill underneath)."""
    out = tmp_path / "out"
    assert runs_cli.main(["run", str(DEPTH_NB), "-p", "depth", "6", "--out", str(out)]) == 0
    run_dir = out / "04_prompt_depth" / "depth-6"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["depth"] == 6 and metrics["profile"] == "ci" and metrics["task"] == "refcoco"
    assert metrics["trainable"] == 64 * 12 * 2 * 128  # depth 6 = every layer of ofa-nano (6 + 6, d = 128)
    assert set(metrics["results"]["refcoco"]) >= {"zero-shot", "encoder only", "decoder only", "encoder+decoder",
                                                 "bottom6", "top6"}
    assert metrics["heldout_loss"]["encoder+decoder"] != metrics["heldout_loss"]["zero-shot"]  # ci: changed
    assert json.loads((run_dir / "run.json").read_text())["status"] == "ok"
    assert not (out / "04_prompt_depth" / "_failed" / "depth-6").exists()


@pytest.mark.parametrize(("depth", "allowed", "cell_marker"), [
    (0, "an integer >= 1", "run = wb.start(globals())"),  # rejected by the parameter rules, before the model loads
    (13, "an integer >= 1 and <= 6", "int_range(1, min(n_enc, n_dec))"),  # rejected once the depth is known
])
def test_bad_depth_fails_before_any_training_and_leaves_no_good_run(tmp_path, depth, allowed, cell_marker):
    result = _run(tmp_path, depth)
    assert result.status == "failed"
    error = (result.path / "error.txt").read_text()
    assert "ValueError" in error and f"depth={depth}" in error and allowed in error
    failing_source = error.split("--- cell source ---", 1)[1].split("--- traceback ---", 1)[0]
    assert cell_marker in failing_source and "tune(" not in failing_source
    nb_dir = tmp_path / "out" / "04_prompt_depth"
    assert result.path == nb_dir / "_failed" / f"depth-{depth}"
    assert not (nb_dir / f"depth-{depth}").exists()
    assert not (result.path / "metrics.json").exists()
