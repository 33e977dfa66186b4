"""Wippy's Lua modules for wqnb's Lua handlers (``json``, ``logger``, ``queue``, ``time``).

The modules are Lua code (the ``.lua`` files beside this one) run once per Lua runtime
with the privileged kernel table ``K``; what they need from Python sits in
:mod:`wqnb.lua.host`. The engine that loads, sandboxes and steps handlers is
:mod:`wqnb.handlers.lua`.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

__all__ = ["MODULES", "lua_source"]

#: The modules a ``function.lua`` entry may list, in the order they are built.
MODULES: tuple[str, ...] = ("json", "logger", "queue", "time")


@cache
def lua_source(name: str) -> str:
    """The text of ``wqnb/lua/<name>.lua`` (read once per process, from the package)."""
    return resources.files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
