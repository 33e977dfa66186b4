"""nbval settings for the course notebooks (``pytest --nbval notebooks/``).

* stderr is not compared: the kernel may print warnings there that are no part of the
  lesson (ecosystem notes §2); stdout, text/plain and text/html are compared.
* a notebook whose cells no longer match its source in ``notebooks/src/`` fails at
  collection: rebuild it with ``python scripts/build_notebooks.py``.
"""

from __future__ import annotations

import importlib.util
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
