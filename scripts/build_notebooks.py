#!/usr/bin/env python
"""Build the course notebooks from their sources, execute them, and write them executed.

Each ``notebooks/src/NN-name.py`` is a plain Python file in the "percent" format that
Jupytext, VS Code and Spyder understand::

    # %% [markdown]
    # # A title
    # Some prose.

    # %%
    tl = wqnb.simulate(seed=1)

It becomes ``notebooks/NN-name.ipynb``, executed top to bottom with nbclient in
``notebooks/`` (the directory a reader opens it from), and written with its outputs: the
notebooks are committed executed, and ``pytest --nbval`` compares a fresh run with them.

Outputs are kept deterministic by the sources (virtual time, fixed seeds, rounded
figures); this script removes what changes on every run anyway: execution timings and
the kernel's random widget model ids in the notebook metadata.

Usage::

    python scripts/build_notebooks.py            # build (execute) every notebook
    python scripts/build_notebooks.py 02 04      # only those whose name starts so
    python scripts/build_notebooks.py --check    # fail if a notebook is stale vs its source
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
SOURCES = NOTEBOOKS / "src"
CELL_MARK = re.compile(r"^# %%(?P<rest>.*)$")
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def parse_source(text: str) -> list[nbformat.NotebookNode]:
    """Split a percent-format file into notebook cells (markdown or code)."""
    cells: list[nbformat.NotebookNode] = []
    kind: str | None = None
    lines: list[str] = []

    def flush() -> None:
        if kind is None:
            return
        body = "\n".join(lines).strip("\n")
        if kind == "markdown":
            body = "\n".join(
                ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in body.splitlines()
            )
            cells.append(nbformat.v4.new_markdown_cell(body))
        elif body.strip():
            cells.append(nbformat.v4.new_code_cell(body))

    for line in text.splitlines():
        m = CELL_MARK.match(line)
        if m:
            flush()
            kind = "markdown" if "[markdown]" in m.group("rest") else "code"
            lines = []
        elif kind is not None:
            lines.append(line)
    flush()
    return cells


def notebook_from_source(src: Path) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = parse_source(src.read_text(encoding="utf-8"))
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{src.stem[:2]}-{i:02d}"  # stable ids: no churn in git diffs
    return nb


def tidy(nb: nbformat.NotebookNode) -> None:
    """Drop what differs on every run and is never compared: timings, random model ids."""
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    nb.metadata["language_info"] = {"name": "python"}


def build(src: Path, *, timeout: int = 300) -> Path:
    nb = notebook_from_source(src)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
        record_timing=False,
    )
    t0 = time.perf_counter()
    client.execute()
    tidy(nb)
    out = NOTEBOOKS / f"{src.stem}.ipynb"
    nbformat.write(nb, out)
    print(f"built {out.relative_to(ROOT)} in {time.perf_counter() - t0:.1f} s")
    return out


def stale(src: Path) -> str | None:
    """Why the committed notebook of ``src`` does not match its source, or ``None``."""
    out = NOTEBOOKS / f"{src.stem}.ipynb"
    if not out.exists():
        return f"{out.name} is missing"
    want = [(c.cell_type, c.source) for c in notebook_from_source(src).cells]
    have = [(c.cell_type, c.source) for c in nbformat.read(out, as_version=4).cells]
    if want != have:
        return f"{out.name} differs from src/{src.name}"
    unexecuted = [
        i for i, c in enumerate(nbformat.read(out, as_version=4).cells)
        if c.cell_type == "code" and c.get("execution_count") is None
    ]
    if unexecuted:
        return f"{out.name} has unexecuted cells {unexecuted}"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("only", nargs="*", help="build only notebooks whose name starts so")
    ap.add_argument("--check", action="store_true", help="only check they are up to date")
    args = ap.parse_args(argv)
    sources = sorted(SOURCES.glob("*.py"))
    if args.only:
        sources = [s for s in sources if any(s.stem.startswith(o) for o in args.only)]
    if not sources:
        print("no notebook sources matched", file=sys.stderr)
        return 2
    if args.check:
        problems = [p for s in sources if (p := stale(s))]
        for p in problems:
            print(f"stale: {p} (run scripts/build_notebooks.py)", file=sys.stderr)
        return 1 if problems else 0
    for src in sources:
        build(src)
    return 0


if __name__ == "__main__":
    sys.exit(main())
