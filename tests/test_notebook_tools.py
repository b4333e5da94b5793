"""mmprompt.workbook.notebook_tools on throwaway repositories: sync, check, strip, record."""

import logging
from pathlib import Path

import nbformat
import pytest

from mmprompt.workbook import notebook_tools as nt

PYPROJECT = """[project]
name = "x"

[tool.mmprompt]
repository_url = "https://github.com/someone/mmprompt-fork"
branch = "dev"
"""


def _nb(title_md: str | None = None, tagged: int = 1) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cells = [nbformat.v4.new_markdown_cell(title_md)] if title_md else []
    for _ in range(tagged):
        c = nbformat.v4.new_code_cell("profile = 'ci'")
        c.metadata.tags = ["parameters"]
        cells.append(c)
    cells.append(nbformat.v4.new_code_cell("print(profile)"))
    nb.cells = cells
    return nb


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    for name in ("00_setup.ipynb", "01_refcoco_prompt_tuning.ipynb", "04_prompt_depth.ipynb"):
        nbformat.write(_nb("Some intro text."), str(nbs / name))
    (nbs / "scratch.ipynb").write_text("not a numbered notebook; ignored")
    return tmp_path


def _cells(path: Path):
    return nbformat.read(str(path), as_version=4).cells


def test_repo_info_from_pyproject(repo):
    info = nt.read_repo_info(repo)
    assert (info.owner, info.repo, info.branch) == ("someone", "mmprompt-fork", "dev")
    assert info.colab_url("04_prompt_depth.ipynb") == (
        "https://colab.research.google.com/github/someone/mmprompt-fork/blob/dev/notebooks/04_prompt_depth.ipynb")
    assert nt.find_repo_root(repo / "notebooks") == repo.resolve()


def test_repo_info_rejects_non_github_urls(tmp_path):
    (tmp_path / "pyproject.toml").write_text(PYPROJECT.replace("https://github.com/someone/mmprompt-fork",
                                                               "ftp://example.org/x"))
    with pytest.raises(ValueError, match="repository_url='ftp://example.org/x'"):
        nt.read_repo_info(tmp_path)


def test_the_real_pyproject_is_readable():
    info = nt.read_repo_info(Path(__file__).resolve().parents[1])
    assert info.owner and info.repo and info.branch


def test_sync_writes_header_badge_and_navigation(repo):
    changed = nt.sync(repo)
    assert len(changed) == 3
    cells = _cells(repo / "notebooks" / "01_refcoco_prompt_tuning.ipynb")
    header, nav = cells[0].source, cells[-1].source
    assert header.startswith(nt.HEADER_MARKER) and "# Refcoco prompt tuning" in header
    assert ("https://colab.research.google.com/github/someone/mmprompt-fork/blob/dev/"
            "notebooks/01_refcoco_prompt_tuning.ipynb") in header
    blob = "https://github.com/someone/mmprompt-fork/blob/dev/notebooks/"  # absolute: copies have no neighbours
    assert nav == f"{nt.NAV_MARKER}\n< [Setup]({blob}00_setup.ipynb) | [Prompt depth]({blob}04_prompt_depth.ipynb) >"
    assert "[arXiv" not in header and "https://arxiv.org/abs/2208.02532" in header
    assert cells[1].source == "Some intro text."  # the body is untouched
    first_nav = _cells(repo / "notebooks" / "00_setup.ipynb")[-1].source
    assert first_nav == f"{nt.NAV_MARKER}\n[Refcoco prompt tuning]({blob}01_refcoco_prompt_tuning.ipynb) >"
    assert (repo / "notebooks" / "scratch.ipynb").read_text() == "not a numbered notebook; ignored"


def test_sync_is_idempotent_and_keeps_edited_titles(repo):
    nt.sync(repo)
    snapshot = {p: p.read_bytes() for p in (repo / "notebooks").glob("0*.ipynb")}
    assert nt.sync(repo) == []
    assert {p: p.read_bytes() for p in snapshot} == snapshot
    # retitle through the metadata; the neighbours' navigation follows
    path = repo / "notebooks" / "04_prompt_depth.ipynb"
    nb = nbformat.read(str(path), as_version=4)
    nb.metadata["mmprompt"]["title"] = "Prompt depth (Table 3)"
    nbformat.write(nb, str(path))
    assert set(nt.sync(repo)) == {path, repo / "notebooks" / "01_refcoco_prompt_tuning.ipynb"}
    assert "[Prompt depth (Table 3)](https://github.com/someone/mmprompt-fork/blob/dev/notebooks/04_prompt_depth.ipynb)" in _cells(
        repo / "notebooks" / "01_refcoco_prompt_tuning.ipynb")[-1].source
    assert sum(c.source.startswith(nt.HEADER_MARKER) for c in _cells(path)) == 1  # replaced, not added


def test_check_passes_after_sync(repo):
    assert set(nt.check(repo)) == {p for p in (repo / "notebooks").glob("0*.ipynb")}  # stale before sync
    nt.sync(repo)
    assert nt.check(repo) == {}
    assert nt.main(["check", "--root", str(repo)]) == 0


@pytest.mark.parametrize(
    ("defect", "message"),
    [
        ("outputs", "have outputs"),
        ("count", "execution counts"),
        ("no_params", "0 code cells are tagged 'parameters'"),
        ("two_params", "2 code cells are tagged 'parameters'"),
        ("stale_badge", "stale"),
        ("no_nav", "stale"),
        ("injected", "injected-parameters"),
        ("no_kernelspec", "kernelspec"),
    ],
)
def test_check_catches_each_defect(repo, defect, message, caplog):
    nt.sync(repo)
    path = repo / "notebooks" / "04_prompt_depth.ipynb"
    nb = nbformat.read(str(path), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    if defect == "outputs":
        code[-1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="ci\n")]
    elif defect == "count":
        code[-1].execution_count = 3
    elif defect == "no_params":
        code[0].metadata.tags = []
    elif defect == "two_params":
        code[-1].metadata.tags = ["parameters"]
    elif defect == "stale_badge":
        nb.cells[0].source = nb.cells[0].source.replace("/blob/dev/", "/blob/main/")
    elif defect == "no_nav":
        nb.cells.pop()
    elif defect == "injected":
        cell = nbformat.v4.new_code_cell("profile = 'gpu'")
        cell.metadata.tags = ["injected-parameters"]
        nb.cells.insert(3, cell)
    elif defect == "no_kernelspec":
        del nb.metadata["kernelspec"]
    nbformat.write(nb, str(path))
    problems = nt.check(repo)
    assert list(problems) == [path]
    assert any(message in p for p in problems[path]), problems[path]
    with caplog.at_level(logging.ERROR):
        assert nt.main(["check", "--root", str(repo)]) == 1
    assert "04_prompt_depth.ipynb" in caplog.text and message in caplog.text


def test_strip_clears_outputs_counts_and_execution_metadata(repo):
    nt.sync(repo)
    path = repo / "notebooks" / "00_setup.ipynb"
    nb = nbformat.read(str(path), as_version=4)
    clean = nbformat.writes(nb)
    cell = nb.cells[-2]
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="ci\n")]
    cell.execution_count = 7
    cell.metadata["papermill"] = {"duration": 1.0}
    cell.metadata["execution"] = {"iopub.status.busy": "2024-01-01"}
    nb.metadata["papermill"] = {"parameters": {}}
    nbformat.write(nb, str(path))
    assert nt.check(repo)  # dirty
    assert nt.main(["strip", "--root", str(repo)]) == 0
    assert nbformat.writes(nbformat.read(str(path), as_version=4)) == clean
    assert nt.check(repo) == {}
    assert nt.strip([path]) == []  # idempotent


def test_cli_rejects_paths_for_sync(repo):
    assert nt.main(["sync", "--root", str(repo), str(repo / "notebooks" / "00_setup.ipynb")]) == 2


def _checked_notebook(path: Path) -> None:
    """A numbered notebook with a checked cell printing 42."""
    nb = _nb()
    cell = nbformat.v4.new_code_cell("print(6 * 7)")
    cell.metadata.tags = [nt.CHECK_OUTPUT_TAG]
    nb.cells.append(cell)
    nbformat.write(nb, str(path))


def test_check_wants_a_recorded_output_for_every_checked_cell(repo):
    path = repo / "notebooks" / "01_refcoco_prompt_tuning.ipynb"
    _checked_notebook(path)
    nt.sync(repo)
    assert any("without an output" in p for p in nt.check(repo)[path])


def test_record_stores_the_output_and_nbval_compares_it(repo):
    """`record` runs the notebook and stores the checked cell's output beside it (the notebook stays clean);
    nbval, given it by the conftest hook, passes, and fails once the recorded output no longer matches."""
    import json
    import subprocess
    import sys

    path = repo / "notebooks" / "01_refcoco_prompt_tuning.ipynb"
    _checked_notebook(path)
    nt.sync(repo)
    before = path.read_text()
    assert nt.record([path]) == [path] and path.read_text() == before
    store = repo / "notebooks" / nt.CHECKED_OUTPUTS
    (cell_id, outputs), = json.loads(store.read_text())[path.name].items()
    assert outputs == [{"output_type": "stream", "name": "stdout", "text": "42\n"}]
    assert nt.check(repo) == {} and nt.record([path]) == []
    (repo / "notebooks" / "conftest.py").write_text(
        "from mmprompt.workbook.notebook_tools import attach_checked_outputs\n\n\n"
        "def pytest_collection_modifyitems(items):\n    attach_checked_outputs(items)\n")

    def nbval() -> int:
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
               "--rootdir", str(repo), str(path)]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=repo).returncode

    assert nbval() == 0
    store.write_text(json.dumps({path.name: {cell_id: [dict(outputs[0], text="41\n")]}}))
    assert nbval() == 1
