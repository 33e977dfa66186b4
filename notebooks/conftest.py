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


def _no_rabbitmq() -> str | None:
    """Why no broker can be had here, or ``None``."""
    if os.environ.get("WQNB_AMQP_URL") or os.environ.get("WQNB_TEST_AMQP_URL"):
        return None
    if _SERVERS.exists():
        mod = sys.modules.get("_wqnb_servers")
        if mod is None:
            spec = importlib.util.spec_from_file_location("_wqnb_servers", _SERVERS)
            mod = sys.modules["_wqnb_servers"] = importlib.util.module_from_spec(spec)  # (dataclasses look it up)
            spec.loader.exec_module(mod)
        if mod.RabbitMQServer.available():
            return None
    return "needs RabbitMQ: install rabbitmq-server or set WQNB_AMQP_URL"


def pytest_collection_modifyitems(config, items):
    """Skip the broker notebooks where no broker can run; under CI they run (and fail)."""
    wanted = [i for i in items if Path(str(i.path)).stem in _NEEDS_RABBITMQ]
    if not wanted or os.environ.get("CI", "").lower() in ("true", "1"):
        return
    reason = _no_rabbitmq()
    if reason:
        for item in wanted:
            item.add_marker(pytest.mark.skip(reason=reason))
