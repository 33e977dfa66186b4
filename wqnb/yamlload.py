"""YAML loading with bounds: what an app file may expand to, and how deep it may nest.

PyYAML's ``safe_load`` shares one Python object per anchor, so a 1 KB "billion laughs"
file loads in no time, but anything that walks the result (a ``repr`` in an error text,
a JSON encode, a copy) walks every alias expanded: gigabytes. And 5,000 nested ``[``
overflow PyYAML's recursive composer (``RecursionError``). Both are refused here as a
:class:`~wqnb.errors.ConfigError` naming the file, before anything is built.
"""

from __future__ import annotations

from typing import Any

import yaml

from .errors import ConfigError

__all__ = ["MAX_DEPTH", "MAX_NODES", "load_yaml"]

#: Values a file may hold once its aliases are expanded (a large app has a few thousand).
MAX_NODES = 100_000
#: How deeply collections may nest (an app nests about five levels).
MAX_DEPTH = 100


def load_yaml(text: str, *, name: str) -> Any:
    """``yaml.safe_load(text)``, refusing alias bombs, recursive aliases and deep nesting."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise ConfigError(
                f"YAML nested too deeply to read (more than about {MAX_DEPTH} levels of [ or {{ are refused)",
                file=name,
            ) from None
        if node is None:
            return None
        _check(node, name)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check(root: yaml.Node, name: str) -> None:
    """Count the values ``root`` holds with aliases expanded, and its depth, without
    expanding anything (each node is visited once; an alias is a shared node)."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            kids = _children(node)
            size[key] = min(MAX_NODES + 1, 1 + sum(size[id(k)] for k in kids))
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            on_path.discard(key)
            if size[key] > MAX_NODES:
                raise ConfigError(
                    f"YAML aliases expand to more than {MAX_NODES:,} values (line {node.start_mark.line + 1}): "
                    "an alias bomb? wqnb refuses files that large",
                    file=name,
                )
            if depth[key] > MAX_DEPTH:
                raise ConfigError(f"YAML nested deeper than {MAX_DEPTH} levels", file=name)
            continue
        if key in size:
            continue
        if key in on_path:
            raise ConfigError(
                f"recursive YAML alias (line {node.start_mark.line + 1}): a value that contains itself",
                file=name,
            )
        on_path.add(key)
        stack.append((node, True))
        for kid in _children(node):
            if id(kid) not in size:
                stack.append((kid, False))
