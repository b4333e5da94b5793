"""Helpers for driving a real JupyterLab in headless Chromium (Debian's ``chromium`` + ``chromium-driver``).

Everything a run starts carries its private scratch directory in its command line (the Lab settings dir for
the server, the runtime dir for kernels, the profile dir for Chromium, the log path for chromedriver), so
:func:`processes_mentioning` can find exactly those processes and the context managers can make sure none
survives them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser")
CHROMEDRIVER_CANDIDATES = ("chromedriver",)
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--disable-extensions", "--disable-default-apps",
)
# User settings for a throwaway Lab: never save the notebook behind the test's back, never ask about news.
LAB_USER_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    # every cell in the page, also those scrolled out of view (the default windowing leaves them out)
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false", "checkForUpdates": False},
}
PROMPT_DONE = re.compile(r"^\[\d+\]:?$")


def find_browser() -> tuple[str, str] | None:
    """Paths of (chromium, chromedriver), or None when either is missing."""
    browser = next((p for p in map(shutil.which, CHROMIUM_CANDIDATES) if p), None)
    driver = next((p for p in map(shutil.which, CHROMEDRIVER_CANDIDATES) if p), None)
    return (browser, driver) if browser and driver else None


class WaitAborted(RuntimeError):
    """Raised by a :func:`wait_for` condition to stop waiting at once (e.g. the server died)."""


def wait_for(condition: Callable[[], T], timeout: float, what: str, poll: float = 0.1) -> T:
    """Poll ``condition`` until it returns something truthy; TimeoutError naming ``what`` otherwise.

    Exceptions from ``condition`` count as "not yet" (pages re-render, ports open late), except
    :class:`WaitAborted`, which propagates immediately.
    """
    if timeout <= 0:
        raise ValueError(f"timeout={timeout!r}: must be > 0 seconds")
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except WaitAborted:
            raise
        except Exception as exc:  # noqa: BLE001 - the page may be mid-render; retry until the deadline
            last_error = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(poll)


# --------------------------------------------------------------------------------------------- processes

def processes_mentioning(marker: str | os.PathLike[str]) -> list[int]:
    """Pids of live processes whose command line contains ``marker`` (Linux /proc; [] elsewhere)."""
    needle = os.fsencode(str(marker))
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmdline and state != "Z" and int(entry.name) != os.getpid():
            pids.append(int(entry.name))
    return pids


def kill_processes_mentioning(marker: str | os.PathLike[str], grace: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL, the processes :func:`processes_mentioning` finds; returns those it signalled."""
    pids = processes_mentioning(marker)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: not processes_mentioning(marker), grace, "processes to exit")
        if not processes_mentioning(marker):
            break
    if pids:
        log.warning("killed leftover processes %s mentioning %s", pids, marker)
    return pids


# ------------------------------------------------------------------------------------------- jupyter lab

@dataclass(frozen=True)
class LabServer:
    """A running JupyterLab: ``base_url`` like ``http://127.0.0.1:PORT/`` and its ``token``."""

    base_url: str
    token: str
    root_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def api(self, path: str, method: str = "GET", timeout: float = 5.0) -> Any:
        """JSON answer of the REST API at ``path`` (e.g. ``api/kernels``)."""
        request = urllib.request.Request(self.base_url + path, method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - localhost only
            body = response.read()
        return json.loads(body) if body else None

    def lab_url(self, notebook: Path) -> str:
        """URL that opens ``notebook`` (a path inside ``root_dir``) in a fresh Lab workspace."""
        rel = notebook.resolve().relative_to(self.root_dir).as_posix()
        return f"{self.base_url}lab/tree/{urllib.request.pathname2url(rel)}?reset&token={self.token}"

    def kernels_idle(self) -> bool:
        """True when at least one kernel runs and every kernel reports ``execution_state == 'idle'``."""
        kernels = self.api("api/kernels")
        return bool(kernels) and all(k.get("execution_state") == "idle" for k in kernels)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


def _isolated_jupyter_env(scratch: Path) -> dict[str, str]:
    """Environment that keeps Jupyter's config, runtime and user data inside ``scratch``."""
    env = dict(os.environ)
    env.update({
        "JUPYTER_CONFIG_DIR": str(scratch / "config"),
        "JUPYTER_DATA_DIR": str(scratch / "data"),
        "JUPYTER_RUNTIME_DIR": str(scratch / "runtime"),
        "JUPYTER_PREFER_ENV_PATH": "1",  # the venv's kernelspecs and lab extensions win
        "JUPYTER_PLATFORM_DIRS": "1",
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        "PYTHONUNBUFFERED": "1",
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",  # figures inline, as a learner sees them
    })
    env.pop("JUPYTER_TOKEN", None)
    return env


def _write_lab_settings(settings_dir: Path) -> None:
    for rel, values in LAB_USER_SETTINGS.items():
        path = settings_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


def _read_server_url(runtime_dir: Path, pid: int) -> str | None:
    info = runtime_dir / f"jpserver-{pid}.json"
    if not info.exists():
        return None
    data = json.loads(info.read_text())
    return f"http://127.0.0.1:{int(data['port'])}/"


def _stop_lab(proc: subprocess.Popen[bytes], server: LabServer | None, scratch: Path, timeout: float) -> None:
    """Ask the server to stop (it shuts its kernels down), escalate to signals, then kill any straggler."""
    if proc.poll() is None and server is not None:
        with contextlib.suppress(OSError, ValueError):  # URLError is an OSError
            for kernel in server.api("api/kernels"):
                server.api(f"api/kernels/{kernel['id']}", method="DELETE", timeout=timeout)
        with contextlib.suppress(OSError, ValueError):
            server.api("api/shutdown", method="POST")
    try:
        proc.wait(timeout if server is not None else 0.1)
    except subprocess.TimeoutExpired:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            log.warning("jupyter lab (pid %d) still running; sending %s to its group", proc.pid, sig.name)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout)
                break
            except subprocess.TimeoutExpired:
                continue
    kill_processes_mentioning(scratch)


@contextlib.contextmanager
def jupyter_lab(root_dir: Path, scratch: Path, start_timeout: float = 90.0) -> Iterator[LabServer]:
    """Run ``jupyter lab`` on 127.0.0.1 (a free port the OS picks) rooted at ``root_dir``; stop it on exit.

    ``scratch`` (an empty, private directory) receives Jupyter's config/runtime/data dirs and the log.
    Kernels come from this interpreter's environment.
    """
    root_dir = Path(root_dir).resolve()
    if not root_dir.is_dir():
        raise FileNotFoundError(f"root_dir={str(root_dir)!r}: not a directory")
    scratch = Path(scratch).resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    _write_lab_settings(scratch / "lab-settings")
    token = secrets.token_hex(16)
    log_path = scratch / "jupyter-lab.log"
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser",
        "--ServerApp.ip=127.0.0.1", "--ServerApp.port=0", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root_dir}",
        "--ServerApp.terminals_enabled=False", "--ServerApp.shutdown_no_activity_timeout=600",
        f"--LabApp.user_settings_dir={scratch / 'lab-settings'}",
        f"--LabApp.workspaces_dir={scratch / 'lab-workspaces'}",
        *(["--ServerApp.allow_root=True"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
        "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=root_dir, env=_isolated_jupyter_env(scratch), stdin=subprocess.DEVNULL,
                                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    server: LabServer | None = None
    try:
        def ready() -> str | None:
            if proc.poll() is not None:
                raise WaitAborted(f"jupyter lab exited with code {proc.returncode}:\n"
                                   f"{log_path.read_text(errors='replace')[-4000:]}")
            url = _read_server_url(scratch / "runtime", proc.pid)
            if url is None:
                return None
            with urllib.request.urlopen(f"{url}api/status?token={token}", timeout=2):  # noqa: S310
                return url

        try:
            url = wait_for(ready, start_timeout, "jupyter lab to answer on its port", poll=0.2)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{log_path.read_text(errors='replace')[-4000:]}") from None
        server = LabServer(url, token, root_dir, proc, log_path)
        log.info("jupyter lab ready at %s (pid %d)", url, proc.pid)
        yield server
    finally:
        _stop_lab(proc, server, scratch, timeout=15.0)


# ---------------------------------------------------------------------------------------------- chromium

@contextlib.contextmanager
def chromium_driver(scratch: Path, window_size: tuple[int, int] = (1400, 1000)) -> Iterator[Any]:
    """A Selenium ``webdriver.Chrome`` on headless Debian Chromium with a fresh profile under ``scratch``.

    Selenium Manager is never consulted (explicit browser and driver paths), so nothing is downloaded.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    paths = find_browser()
    if paths is None:
        raise FileNotFoundError("chromium and chromedriver are not on PATH "
                                "(apt-get install chromium chromium-driver)")
    scratch = Path(scratch).resolve()
    profile = scratch / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={window_size[0]},{window_size[1]}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=paths[1], log_output=str(scratch / "chromedriver.log"))
    driver = None
    try:
        driver = webdriver.Chrome(service=service, options=options)
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        if driver is not None:
            with contextlib.suppress(Exception):
                driver.quit()
        else:
            with contextlib.suppress(Exception):
                service.stop()
        kill_processes_mentioning(profile)
        kill_processes_mentioning(scratch / "chromedriver.log")


# ------------------------------------------------------------------------------------- lab interactions

def open_notebook(driver: Any, server: LabServer, notebook: Path, timeout: float = 60.0) -> None:
    """Load ``notebook`` in Lab and wait until its cells are shown and its kernel is connected."""
    from selenium.webdriver.common.by import By

    driver.get(server.lab_url(notebook))
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Cell"), timeout,
             f"{notebook.name} to appear in JupyterLab")
    wait_for(lambda: server.kernels_idle(), timeout, "the notebook's kernel to start")


def click_menu(driver: Any, menu: str, entry: str, timeout: float = 10.0) -> None:
    """Open the main menu ``menu`` (e.g. "Run") and click its ``entry`` (e.g. "Run All Cells"), found by label."""
    from selenium.webdriver.common.by import By

    def labelled(css: str, label: str) -> Any:
        return next((e for e in driver.find_elements(By.CSS_SELECTOR, css)
                     if e.is_displayed() and e.text.strip() == label), None)

    wait_for(lambda: labelled("#jp-MainMenu .lm-MenuBar-item", menu), timeout, f"the {menu!r} menu").click()
    label = wait_for(lambda: labelled(".lm-Menu .lm-Menu-item .lm-Menu-itemLabel", entry), timeout,
                     f"the {entry!r} entry of the {menu!r} menu")
    label.find_element(By.XPATH, "./ancestor::li[1]").click()


def run_all_cells(driver: Any, timeout: float = 10.0) -> None:
    """Main menu "Run" → "Run All Cells", like a person would."""
    click_menu(driver, "Run", "Run All Cells", timeout)


def code_cell_prompts(driver: Any) -> list[str]:
    """Execution prompts (``[3]:``, ``[*]:``, ``[ ]:``) of the notebook's non-empty code cells."""
    return driver.execute_script("""
        const cells = document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell');
        return Array.from(cells)
            .filter(c => (c.querySelector('.cm-content')?.textContent ?? '').trim() !== '')
            .map(c => (c.querySelector('.jp-InputPrompt')?.textContent ?? '').trim());
    """)


def error_outputs(driver: Any) -> list[str]:
    """Texts of error (traceback) outputs shown in the notebook."""
    from selenium.webdriver.common.by import By

    return [e.text for e in driver.find_elements(
        By.CSS_SELECTOR, '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]')]


def wait_until_executed(driver: Any, server: LabServer, timeout: float = 120.0) -> list[str]:
    """Wait until every non-empty code cell shows an execution count and the kernel is idle; return prompts."""
    def done() -> list[str] | None:
        if errors := error_outputs(driver):
            raise WaitAborted("a cell raised:\n" + "\n---\n".join(errors))
        prompts = code_cell_prompts(driver)
        if prompts and all(PROMPT_DONE.match(p) for p in prompts) and server.kernels_idle():
            return prompts
        return None

    try:
        return wait_for(done, timeout, "all cells to finish executing", poll=0.2)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; prompts now: {code_cell_prompts(driver)}") from None


def save_screenshot(driver: Any, path: Path) -> Path:
    """Write a PNG of the browser window to ``path`` atomically; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(driver.get_screenshot_as_png())
    os.replace(tmp, path)
    return path
