"""nbval settings for the course notebooks (``pytest --nbval notebooks/``).

* stderr is not compared: the kernel may print warnings there that are no part of the
  lesson (ecosystem notes §2); stdout, text/plain and text/html are compared.
* a notebook whose cells no longer match its source in ``notebooks/src/`` fails at
  collection: rebuild it with ``python scripts/build_notebooks.py``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

_BUILD = Path(__file__).resolve().parents[1] / "scripts" / "build_notebooks.py"


def _stale(path: Path) -> str | None:
    src = path.parent / "src" / f"{path.stem}.py"
    if not src.exists() or not _BUILD.exists():
        return None
    spec = importlib.util.spec_from_file_location("_build_notebooks", _BUILD)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.stale(src)


def pytest_collectstart(collector):
    path = getattr(collector, "path", None)
    if path is not None and path.suffix == ".ipynb" and hasattr(collector, "skip_compare"):
        collector.skip_compare += ("stderr",)
        problem = _stale(Path(path))
        if problem:
            raise pytest.UsageError(f"{problem}: run `python scripts/build_notebooks.py`")


#: notebooks that need a RabbitMQ: they start their own where rabbitmq-server is
#: installed, or use WQNB_AMQP_URL / WQNB_TEST_AMQP_URL (scripts/test exports the latter)
_NEEDS_RABBITMQ = {"07-rabbitmq"}
_SERVERS = Path(__file__).resolve().parents[1] / "tests" / "servers.py"


#: ... and the ones that need a Redis (the same way: redis-server, WQNB_REDIS_URL or
#: WQNB_TEST_REDIS_URL)
_NEEDS_REDIS = {"08-redis"}


def _servers_module():
    mod = sys.modules.get("_wqnb_servers")
    if mod is None:
        spec = importlib.util.spec_from_file_location("_wqnb_servers", _SERVERS)
        mod = sys.modules["_wqnb_servers"] = importlib.util.module_from_spec(spec)  # (dataclasses look it up)
        spec.loader.exec_module(mod)
    return mod


def _no_broker(server: str, env: tuple[str, str], package: str) -> str | None:
    """Why no broker of that kind can be had here, or ``None``."""
    if any(os.environ.get(v) for v in env):
        return None
    if _SERVERS.exists() and getattr(_servers_module(), server).available():
        return None
    return f"needs {server.removesuffix('Server')}: install {package} or set {env[0]}"


def _no_rabbitmq() -> str | None:
    return _no_broker("RabbitMQServer", ("WQNB_AMQP_URL", "WQNB_TEST_AMQP_URL"), "rabbitmq-server")


def _no_redis() -> str | None:
    return _no_broker("RedisServer", ("WQNB_REDIS_URL", "WQNB_TEST_REDIS_URL"), "redis-server")


def pytest_collection_modifyitems(config, items):
    """Skip the broker notebooks where no broker can run; under CI they run (and fail)."""
    if os.environ.get("CI", "").lower() in ("true", "1"):
        return
    for names, why in ((_NEEDS_RABBITMQ, _no_rabbitmq), (_NEEDS_REDIS, _no_redis)):
        wanted = [i for i in items if Path(str(i.path)).stem in names]
        reason = why() if wanted else None
        if reason:
            for item in wanted:
                item.add_marker(pytest.mark.skip(reason=reason))
