"""Fixtures shared by several test modules. Keep this file small: a fixture that one module
needs lives in that module."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

# Tests draw figures without a screen; set before anything imports matplotlib.
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]

try:  # the `test` extra has hypothesis; the profile only sets defaults
    from hypothesis import HealthCheck, settings

    # A shared 2-core host makes wall-clock deadlines flaky; CI also wants reproducible draws.
    settings.register_profile("dev", deadline=None)
    settings.register_profile(
        "ci", deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
    )
    settings.load_profile("ci" if os.environ.get("CI") else "dev")
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The checkout's top folder (holds pyproject.toml, notebooks/, scripts/)."""
    return ROOT


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    """Path of Debian's Chromium for Playwright's `executable_path=`.

    Skips when Chromium is missing, except under CI, where a missing browser is a failure
    (scripts/test installs it there)."""
    for cand in (os.environ.get("WQNB_CHROMIUM"), "chromium", "chromium-browser"):
        path = cand and shutil.which(cand)
        if path:
            return path
    msg = "Chromium not found: apt-get install chromium (never `playwright install`)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture
def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for Voila or JupyterLab)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
