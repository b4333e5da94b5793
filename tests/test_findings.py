"""mmprompt.workbook.findings: verdicts in executed notebooks are rechecked against their numbers."""

import copy
from pathlib import Path

import nbformat
import numpy as np
import pytest

from mmprompt.workbook.findings import FINDING_MIME, assert_findings_hold, check_notebook, finding

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(0)
A = (RNG.random(400) < 0.45).astype(float).tolist()
B = (RNG.random(400) < 0.30).astype(float).tolist()


def _display(name_a, a, name_b, b, **kw):
    v, record = finding(name_a, a, name_b, b, **kw)
    return nbformat.v4.new_output("display_data", data={"text/plain": "Finding: " + v.text, FINDING_MIME: record})


def _notebook(*outputs, markdown="Prefix tuning against zero-shot on REC.") -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("show_finding(...)")
    code.outputs = list(outputs)
    nb.cells = [nbformat.v4.new_markdown_cell(markdown), code]
    return nb


def test_findings_that_match_their_numbers_pass(tmp_path):
    nb = _notebook(_display("prefix", A, "zero-shot", B),
                   _display("lora", A, "adapter", A[:200] + B[200:], profile="ci"),
                   nbformat.v4.new_output("stream", text="step 100: loss 1.23\n"))
    path = tmp_path / "executed.ipynb"
    nbformat.write(nb, str(path))
    report = assert_findings_hold(path)
    assert report.ok and len(report.findings) == 2
    assert report.findings[0].startswith("prefix ahead of zero-shot by ")
    assert report.findings[1].startswith("smoke test (ci profile, not a finding): ")


def test_text_that_its_numbers_do_not_support_fails():
    out = _display("prefix", A, "zero-shot", B)
    claimed = copy.deepcopy(out)
    claimed.data[FINDING_MIME]["text"] = "no difference at this resolution (prefix − zero-shot = 0.0 ± 5.0 points)"
    claimed.data["text/plain"] = "Finding: " + claimed.data[FINDING_MIME]["text"]
    problems = check_notebook(_notebook(claimed)).problems
    assert len(problems) == 1 and "its numbers give 'prefix ahead of zero-shot by" in problems[0].message


def test_numbers_changed_after_the_text_fail():
    out = _display("prefix", A, "zero-shot", B)
    out.data[FINDING_MIME]["a"] = B  # same numbers on both sides: no difference any more
    messages = [p.message for p in check_notebook(_notebook(out)).problems]
    assert any("no difference at this resolution" in m for m in messages)
    assert any("recorded winner 'prefix'" in m for m in messages)


def test_displayed_text_must_be_the_recorded_text():
    out = _display("prefix", A, "zero-shot", B)
    out.data["text/plain"] = "Finding: prefix is much better"
    problems = check_notebook(_notebook(out)).problems
    assert len(problems) == 1 and "displayed ['Finding: prefix is much better']" in problems[0].message


@pytest.mark.parametrize(
    "output",
    [nbformat.v4.new_output("stream", text="Finding: bottom layers are better\n"),
     nbformat.v4.new_output("stream", text="depth 6: prefix ahead of finetune by 1.4 ± 0.2 points\n"),
     nbformat.v4.new_output("execute_result", data={"text/plain": "'no difference at this resolution'"},
                            execution_count=1)],
)
def test_verdicts_without_their_numbers_fail(output):
    problems = check_notebook(_notebook(output)).problems
    assert len(problems) == 1 and "without its numbers" in problems[0].message


def test_typed_findings_in_markdown_fail(tmp_path):
    nb = _notebook(markdown="## Findings\n\nFinding: finetuning is more robust than prefix tuning.")
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, str(path))
    with pytest.raises(AssertionError, match=r"(?s)1 finding\(s\) disagree.*cell 0: 'Finding: finetuning"):
        assert_findings_hold(path)


def test_unreadable_record_is_a_problem():
    out = _display("prefix", A, "zero-shot", B)
    del out.data[FINDING_MIME]["settings"]["over"]
    assert "cannot be recomputed" in check_notebook(_notebook(out)).problems[0].message


def test_show_finding_in_a_kernel_writes_a_checkable_output(tmp_path):
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(
        "from mmprompt.workbook.findings import show_finding\n"
        f"v = show_finding('prefix', {A!r}, 'zero-shot', {B!r}, n_resamples=500)")]
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    report = check_notebook(nb)
    assert report.ok and len(report.findings) == 1
    assert nb.cells[0].outputs[0].data["text/plain"] == "Finding: " + report.findings[0]


REFERENCE_RUNS = sorted((ROOT / "papermill_runs").glob("*/*/*.ipynb"))


@pytest.mark.parametrize("notebook", REFERENCE_RUNS, ids=[str(p.relative_to(ROOT)) for p in REFERENCE_RUNS])
def test_reference_runs_state_only_what_their_data_supports(notebook):
    if "_failed" in notebook.parts:
        pytest.skip("failed runs are kept apart and not reported")
    assert_findings_hold(notebook)
