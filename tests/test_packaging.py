"""The package installs from its own files, and environment.yml stays in sync with pyproject.toml."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_installs_the_package_with_its_extras():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    pip_block = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert pip_block == ["-e .[test]"], "environment.yml must install the package itself (pyproject is the source of truth)"
    conda_names = {re.split(r"[=<>]", d)[0] for d in deps if isinstance(d, str)}
    assert conda_names == {"python", "pip"}, f"extra conda packages drift from pyproject: {conda_names}"


def test_environment_python_satisfies_requires_python():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    py = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    major, minor = map(int, py.split("=")[1].split(".")[:2])
    floor = _pyproject()["project"]["requires-python"].removeprefix(">=")
    fmajor, fminor = map(int, floor.split(".")[:2])
    assert (major, minor) >= (fmajor, fminor)


def test_declared_dependencies_cover_the_user_facing_stack():
    project = _pyproject()["project"]
    deps, extras = " ".join(project["dependencies"]), project["optional-dependencies"]
    for name in ["torch", "transformers", "matplotlib", "seaborn", "pandas"]:
        assert re.search(rf"\b{name}\b", deps), f"{name} missing from [project.dependencies]"
    lab, test = " ".join(extras["lab"]), " ".join(extras["test"])
    for name in ["jupyterlab", "papermill", "ipykernel", "mmprompt[colab]"]:
        assert name in lab, f"{name} missing from the lab extra"
    assert "mmprompt[lab]" in test and "nbval" in test and "pytest" in test


def test_the_colab_extra_is_light():
    """Colab brings its own Jupyter: the install its set-up cell runs (base + `colab`) pulls no JupyterLab,
    papermill or test tools."""
    project = _pyproject()["project"]
    installed = " ".join(project["dependencies"] + project["optional-dependencies"]["colab"])
    for heavy in ["jupyterlab", "papermill", "ipykernel", "pytest", "nbval", "selenium", "mmprompt["]:
        assert heavy not in installed, f"{heavy} is installed on Colab"
    assert "ipywidgets" in installed


def test_readme_names_the_ci_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = ci.strip().splitlines()[-1].strip()
    assert command in readme, f"README must show the test command CI runs: {command!r}"
