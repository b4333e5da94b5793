"""End-to-end in a real JupyterLab driven by headless Chromium: a notebook's ipywidgets render and react,
and the first notebooks of the course (00, 01, 04) run top to bottom and show their findings and figures.

Needs Debian's ``chromium`` and ``chromium-driver`` (skipped, with a reason, when they are missing) and
``selenium`` (the ``test`` extra). To check notebook 01 instead of the generated fixture, change ``CASES``.
"""

from __future__ import annotations

import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest

from browser_support import (
    LabServer, chromium_driver, find_browser, jupyter_lab, open_notebook, processes_mentioning, run_all_cells,
    save_screenshot, wait_for, wait_until_executed,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"


def _text_is(expected: str) -> Callable[[str, str], bool]:
    """Check for :attr:`WidgetCase.expect`: the output reads ``expected`` after the interaction."""
    return lambda before, after: after == expected


def _text_changed(before: str, after: str) -> bool:
    return bool(after) and after != before


@dataclass(frozen=True)
class WidgetCase:
    """What to open, which widget to operate and how to judge its dependent output.

    ``notebook`` is a path inside the repository, or None for the fixture this module writes.
    ``control`` (CSS) receives ``keys`` (names of ``selenium...Keys``); ``output`` (CSS) is the element whose
    text must go from ``before`` to something ``expect(before, after)`` accepts.
    """

    name: str
    notebook: Path | None = None
    rendered: str = ".jp-OutputArea-output .jupyter-widgets.widget-slider"
    control: str = ".widget-slider .noUi-handle"
    keys: tuple[str, ...] = ("ARROW_RIGHT",) * 3
    output: str = ".widget-html-content"
    expect_before: str | None = None
    expect: Callable[[str, str], bool] = _text_changed
    run_timeout: float = 120.0


FIXTURE_CASE = WidgetCase(
    name="fixture",
    control=".mmprompt-demo-slider .noUi-handle",
    output=".mmprompt-demo-report .widget-html-content",
    expect_before="n = 3, n*n = 9",
    expect=_text_is("n = 6, n*n = 36"),  # three steps right; the square is computed by the kernel's observer
)
# Notebook 01's explorer. Contract: its slider has ``add_class("mmprompt-explorer-slider")`` and the widget
# whose text depends on it (HTML, Label or Output) has ``add_class("mmprompt-explorer-output")``.
NOTEBOOK_01_CASE = WidgetCase(
    name="notebook01",
    notebook=Path("notebooks/01_prefix_tuning_explained.ipynb"),
    control=".mmprompt-explorer-slider .noUi-handle",
    output=".mmprompt-explorer-output",
    run_timeout=300.0,
)
CASES = [FIXTURE_CASE, NOTEBOOK_01_CASE]

FIXTURE_CODE = [
    """\
import ipywidgets as widgets
from IPython.display import display

slider = widgets.IntSlider(value=3, min=0, max=10, step=1, description="n")
slider.add_class("mmprompt-demo-slider")
report = widgets.HTML()
report.add_class("mmprompt-demo-report")


def show_square(change=None):
    report.value = f"<b>n = {slider.value}, n*n = {slider.value * slider.value}</b>"


slider.observe(show_square, names="value")
show_square()""",
    "display(widgets.VBox([slider, report]))",
    'print("fixture ran", 2 + 2)',
]


def write_fixture_notebook(path: Path) -> Path:
    """A three-cell notebook: build a slider and an observer-driven HTML report, show them, print."""
    nb = nbformat.v4.new_notebook()
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# Widget smoke test")]
    nb.cells += [nbformat.v4.new_code_cell(src) for src in FIXTURE_CODE]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def _visible_text(driver: Any, css: str) -> str:
    from selenium.webdriver.common.by import By

    texts = [e.text.strip() for e in driver.find_elements(By.CSS_SELECTOR, f".jp-NotebookPanel {css}")
             if e.is_displayed()]
    return texts[0] if texts else ""


def _operate(driver: Any, case: WidgetCase) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    if unknown := [k for k in case.keys if not k.isupper() or not hasattr(Keys, k)]:
        raise ValueError(f"keys={case.keys!r}: {unknown} are not names of selenium Keys (e.g. 'ARROW_RIGHT')")
    control = wait_for(lambda: next(iter(e for e in driver.find_elements(
        By.CSS_SELECTOR, f".jp-NotebookPanel {case.control}") if e.is_displayed()), None), 30, case.control)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", control)
    control.click()
    for name in case.keys:
        control.send_keys(getattr(Keys, name))


def _check_widget(driver: Any, server: LabServer, notebook: Path, case: WidgetCase, screenshot: Path) -> None:
    from selenium.webdriver.common.by import By

    open_notebook(driver, server, notebook)
    run_all_cells(driver)
    prompts = wait_until_executed(driver, server, timeout=case.run_timeout)
    assert prompts and all(re.fullmatch(r"\[\d+\]:", p) for p in prompts), prompts

    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, f".jp-NotebookPanel {case.rendered}"), 30,
             f"a rendered widget ({case.rendered})")
    before = wait_for(lambda: _visible_text(driver, case.output), 30, f"text in {case.output}")
    if case.expect_before is not None:
        assert before == case.expect_before
    _operate(driver, case)
    try:
        wait_for(lambda: case.expect(before, _visible_text(driver, case.output)), 20,
                 f"{case.output} to react to {case.keys}")
    except TimeoutError as exc:
        after = _visible_text(driver, case.output)
        raise AssertionError(f"{exc}: the text went from {before!r} to {after!r}") from None
    finally:
        save_screenshot(driver, screenshot)
    wait_until_executed(driver, server, timeout=30)  # kernel idle again, still no error output


def _dump_diagnostics(driver: Any, server: LabServer | None) -> None:
    """Printed (pytest shows it on failure): the server log tail and the browser console."""
    if server is not None:
        print("---- jupyter lab log (tail) ----\n" + server.log_tail())
    if driver is not None:
        try:
            console = driver.get_log("browser")
        except Exception as exc:  # noqa: BLE001 - diagnostics must not mask the real failure
            console = [{"message": f"(no console log: {exc!r})"}]
        print("---- browser console ----\n" + "\n".join(str(e.get("message")) for e in console[-50:]))


@pytest.mark.slow
@pytest.mark.skipif(find_browser() is None,
                    reason="needs Debian's chromium + chromedriver (apt-get install chromium chromium-driver)")
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_widget_renders_and_responds_in_jupyterlab(case: WidgetCase, tmp_path: Path) -> None:
    run_dir = ARTIFACTS / f"browser-{case.name}-{uuid.uuid4().hex[:8]}"  # inside the server's root_dir
    if case.notebook is None:
        notebook = write_fixture_notebook(run_dir / "widget_demo.ipynb")
    else:
        notebook = REPO_ROOT / case.notebook
    if not notebook.exists():
        raise FileNotFoundError(f"notebook={str(notebook)!r}: no such notebook")
    original = notebook.read_bytes()
    started = time.monotonic()
    server = driver = None
    try:
        with jupyter_lab(REPO_ROOT, tmp_path) as server, chromium_driver(tmp_path) as driver:
            try:
                _check_widget(driver, server, notebook, case, ARTIFACTS / f"jupyterlab_{case.name}.png")
            except BaseException:
                _dump_diagnostics(driver, server)
                raise
        assert not processes_mentioning(tmp_path), "server, kernel or browser processes outlived the test"
        assert notebook.read_bytes() == original, "the browser session modified the notebook on disk"
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        print(f"{case.name}: {time.monotonic() - started:.1f} s")


#: The course's first stops: what a learner opens first must run in JupyterLab and read as it should.
COURSE_NOTEBOOKS = ["00_tour", "01_prefix_tuning_explained", "04_prompt_depth"]
FINDINGS_HEADING = "What this run found"


def _check_course_notebook(driver: Any, server: LabServer, notebook: Path, screenshot: Path) -> None:
    """Run every cell; then the findings (a rendered Markdown heading with bullets marked as a smoke test at
    the default ``ci`` profile) and at least one figure (a rendered PNG of real size) must be on the page."""
    from selenium.webdriver.common.by import By

    open_notebook(driver, server, notebook)
    run_all_cells(driver)
    prompts = wait_until_executed(driver, server, timeout=300)
    assert prompts and all(re.fullmatch(r"\[\d+\]:", p) for p in prompts), prompts

    def text(element: Any) -> str:  # textContent: also for cells outside the viewport
        return driver.execute_script("return arguments[0].textContent", element).strip()

    def findings() -> Any:
        for heading in driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output h3"):
            if text(heading).rstrip("¶").strip() == FINDINGS_HEADING:  # JupyterLab appends an anchor "¶"
                return heading
        return None

    heading = wait_for(findings, 30, f"the rendered findings heading {FINDINGS_HEADING!r}")
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'});", heading)
    bullets = [text(b) for b in heading.find_elements(By.XPATH, "following-sibling::ul[1]/li")]
    assert bullets and all(b.startswith("smoke test (ci profile, not a finding): ") for b in bullets), bullets
    figures = wait_for(lambda: [img for img in driver.find_elements(By.CSS_SELECTOR, ".jp-RenderedImage img")
                                if driver.execute_script("return arguments[0].naturalWidth", img) > 200], 30,
                       "a rendered figure")
    assert figures
    save_screenshot(driver, screenshot)


@pytest.mark.slow
@pytest.mark.skipif(find_browser() is None,
                    reason="needs Debian's chromium + chromedriver (apt-get install chromium chromium-driver)")
@pytest.mark.parametrize("stem", COURSE_NOTEBOOKS)
def test_course_notebook_runs_and_shows_findings_and_a_figure(stem: str, tmp_path: Path) -> None:
    notebook = REPO_ROOT / "notebooks" / f"{stem}.ipynb"
    original = notebook.read_bytes()
    started = time.monotonic()
    server = driver = None
    try:
        with jupyter_lab(REPO_ROOT, tmp_path) as server, chromium_driver(tmp_path) as driver:
            try:
                _check_course_notebook(driver, server, notebook, ARTIFACTS / f"jupyterlab_course_{stem}.png")
            except BaseException:
                _dump_diagnostics(driver, server)
                raise
        assert not processes_mentioning(tmp_path), "server, kernel or browser processes outlived the test"
        assert notebook.read_bytes() == original, "the browser session modified the notebook on disk"
    finally:
        print(f"{stem}: {time.monotonic() - started:.1f} s")
