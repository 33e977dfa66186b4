"""The project's set-up files agree with each other: pyproject, conda/Binder envs, README, CI."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
ENV_FILES = ["binder/environment.yml", "environment.yml"]
# The extras a notebook user gets (scripts/quickstart and Binder install these).
USER_EXTRAS = ["lua", "notebook", "parquet"]
# PyPI name -> the conda-forge names that provide it.
CONDA_NAMES = {"matplotlib": {"matplotlib", "matplotlib-base"}}
BINDER_RE = re.compile(
    r"https://mybinder\.org/v2/gh/wqnb/wqnb/HEAD\?urlpath=lab/tree/(?P<path>[^)\s\"'>]+)"
)


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def user_requirements() -> list[Requirement]:
    project = pyproject()["project"]
    reqs = list(project["dependencies"])
    for extra in USER_EXTRAS:
        reqs += project["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


def env_package_names(path: str) -> set[str]:
    """Canonical names of the conda and pip packages an environment file asks for."""
    env = yaml.safe_load((ROOT / path).read_text())
    names: set[str] = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for pip_dep in dep.get("pip", []):
                if not pip_dep.startswith("-"):
                    names.add(canonicalize_name(Requirement(pip_dep).name))
        else:
            names.add(canonicalize_name(re.split(r"[\s=<>!~]", dep, maxsplit=1)[0]))
    return names


def readme_commands() -> list[str]:
    """The commands in the README's first shell block (comments and blank lines dropped)."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```(?:bash|sh|shell|console)?\n(.*?)```", text, re.S)
    assert block, "README.md has no fenced shell block"
    lines = [ln.split(" #")[0].strip() for ln in block.group(1).splitlines()]
    return [ln.removeprefix("$ ") for ln in lines if ln and not ln.startswith("#")]


@pytest.mark.parametrize("path", ENV_FILES)
def test_environment_file_parses_and_uses_conda_forge(path):
    env = yaml.safe_load((ROOT / path).read_text())
    assert env["channels"] == ["conda-forge"], f"{path}: use conda-forge only"
    pythons = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert pythons, f"{path} does not pin python"


def test_binder_uses_python_312():
    env = yaml.safe_load((ROOT / "binder/environment.yml").read_text())
    assert "python=3.12" in env["dependencies"]


@pytest.mark.parametrize("path", ENV_FILES)
def test_environment_file_has_every_user_dependency(path):
    names = env_package_names(path)
    missing = [
        str(req)
        for req in user_requirements()
        if not (CONDA_NAMES.get(canonicalize_name(req.name), {canonicalize_name(req.name)}) & names)
    ]
    assert not missing, f"{path} lacks {missing} (pyproject core + {USER_EXTRAS} extras)"


def test_dev_environment_has_test_and_browser_extras():
    names = env_package_names("environment.yml")
    extras = pyproject()["project"]["optional-dependencies"]
    missing = [
        r
        for r in extras["test"] + extras["browser"]
        if canonicalize_name(Requirement(r).name) not in names
    ]
    assert not missing, f"environment.yml lacks {missing}"


def test_pyproject_keeps_its_extras_and_script():
    project = pyproject()["project"]
    assert set(project["optional-dependencies"]) >= {
        "lua",
        "notebook",
        "parquet",
        "redis",
        "amqp",
        "test",
        "browser",
    }
    assert project["scripts"]["wqnb"] == "wqnb.cli:main"
    assert project["requires-python"] == ">=3.11"


def test_binder_postbuild_installs_wqnb_without_deps():
    post = ROOT / "binder/postBuild"
    assert os.access(post, os.X_OK), "binder/postBuild must be executable"
    text = post.read_text()
    assert "set -euo pipefail" in text
    assert "pip install --no-deps -e ." in text


def test_readme_opens_with_two_executable_commands():
    cmds = readme_commands()
    assert len(cmds) == 2, f"README's first shell block should hold exactly 2 commands, has {cmds}"
    for cmd in cmds:
        exe = ROOT / shlex.split(cmd)[0]
        assert exe.is_file(), f"README command {cmd!r}: {exe} does not exist"
        assert os.access(exe, os.X_OK), f"README command {cmd!r}: {exe} is not executable"


def test_ci_runs_the_readme_test_command():
    test_cmd = readme_commands()[1]
    ci = (ROOT / ".ci/run").read_text()
    assert ci.startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in ci
    code = [ln.split("#")[0] for ln in ci.splitlines()]
    assert any(test_cmd in ln for ln in code), f".ci/run does not call {test_cmd!r}"


@pytest.mark.parametrize(
    "script",
    [".ci/run", "scripts/test", "scripts/quickstart", "scripts/_lib.sh", "binder/postBuild"],
)
def test_shell_scripts_are_valid_bash(script):
    result = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True)
    assert result.returncode == 0, f"{script}: {result.stderr}"


def test_quickstart_help_runs_without_installing(tmp_path):
    # --help must answer before any venv work (it touches nothing).
    env = dict(os.environ, WQNB_VENV=str(tmp_path / "no-venv"))
    result = subprocess.run(
        [str(ROOT / "scripts/quickstart"), "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "--headless" in result.stdout
    assert not (tmp_path / "no-venv").exists()


def test_readme_badge_points_at_an_existing_notebook():
    text = (ROOT / "README.md").read_text()
    match = BINDER_RE.search(text)
    assert match, "README.md has no Binder badge for wqnb/wqnb"
    assert "mybinder.org/badge_logo.svg" in text
    if not list((ROOT / "notebooks").glob("*.ipynb")):
        pytest.skip("notebooks/ has no notebook yet, so the badge's target cannot be checked")
    target = ROOT / match.group("path")
    assert target.is_file(), f"the Binder badge opens {match.group('path')}, which does not exist"


def test_readme_relative_links_resolve():
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\((?!https?:|mailto:|#)([^)\s]+)\)", text)
    missing = [t for t in targets if not (ROOT / t.split("#")[0]).exists()]
    assert not missing, f"README.md links to paths that do not exist: {missing}"


def test_readme_keeps_the_sections_others_fill():
    text = (ROOT / "README.md").read_text()
    for heading in ("## Semantics and deviations from Wippy", "## Notebooks"):
        assert re.search(rf"^{re.escape(heading)}\s*$", text, re.M), f"README lacks {heading!r}"


def test_gitignore_keeps_build_and_venv_out():
    ignored = (ROOT / ".gitignore").read_text().split()
    assert {".venv/", "__pycache__/", ".ipynb_checkpoints/"} <= set(ignored)
