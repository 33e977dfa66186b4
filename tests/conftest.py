"""Fixtures shared by several test modules. Keep this file small: a fixture that one module
needs lives in that module."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import MotoServer, RabbitMQServer, RedisServer, Server

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


# --- broker servers: scripts/test starts them (tests/servers.py) and exports their URLs ------

# fixture -> the marker its tests get (so `-m "not amqp"` deselects them)
_BROKER_FIXTURES = {"amqp_url": "amqp", "private_rabbitmq": "amqp", "redis_url": "redis",
                    "private_redis": "redis", "sqs_endpoint": "sqs"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture in set(getattr(item, "fixturenames", ())) & _BROKER_FIXTURES.keys():
            item.add_marker(_BROKER_FIXTURES[fixture])


def _missing(msg: str) -> None:
    """Skip, except under CI, where scripts/test provides every server: there it fails."""
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def _server_url(var: str, what: str) -> str:
    url = os.environ.get(var)
    if not url:
        _missing(f"set {var} to {what} on loopback (scripts/test starts one)")
    return url  # type: ignore[return-value]


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """The shared RabbitMQ's URL (guest on loopback); tests use their own queue names."""
    return _server_url(RabbitMQServer.env_var, "a RabbitMQ")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The shared Redis's URL (AOF on); tests use their own keys."""
    return _server_url(RedisServer.env_var, "a Redis")


@pytest.fixture(scope="session")
def sqs_endpoint() -> str:
    """The shared SQS endpoint (moto's server); tests use their own queue names. moto
    takes any credentials: dummy ones are set (for subprocess workers too) unless some
    are already in the environment."""
    url = _server_url(MotoServer.env_var, "an SQS endpoint (moto's server)")
    for var, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(var, value)
    return url


def _private(cls: type[Server], root: Path) -> Iterator[Server]:
    if not cls.available():
        _missing(f"{cls.missing_message()}: tests that kill the broker start their own")
    server = cls(root=root)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_rabbitmq(tmp_path: Path) -> Iterator[RabbitMQServer]:
    """A RabbitMQ of this test's own (~4 s to start), for tests that kill or restart it."""
    yield from _private(RabbitMQServer, tmp_path / "rabbitmq")  # type: ignore[misc]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own (AOF on, data in tmp_path), for tests that kill it."""
    yield from _private(RedisServer, tmp_path / "redis")  # type: ignore[misc]
