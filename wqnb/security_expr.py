"""The expression language of ``security.policy.expr`` entries: a small, safe subset.

Wippy evaluates these with expr-lang. wqnb takes the part its docs use, written as a
tokenizer and a recursive-descent parser that build plain closures, so nothing in an
expression ever reaches Python's ``eval``, attributes, or calls:

* literals: ``"text"`` / ``'text'`` (escapes ``\\" \\' \\\\ \\n \\t``), numbers (``3``,
  ``-1.5``, ``1e3``), ``true``/``false``, ``nil``/``null``, lists ``["a", "b"]``;
* field paths from four roots: ``actor.id``, ``actor.meta.<key>...``, ``action``,
  ``resource``, ``meta.<key>...`` (a missing key reads as ``nil``);
* comparisons ``== != < > <= >=``, ``in`` and ``not in`` (a list, or a map's keys);
* ``and``/``&&``, ``or``/``||``, ``not``/``!`` (binding tighter than comparisons, as in
  expr-lang), parentheses.

Anything else (another name such as ``__import__``, a call ``f(x)``, indexing, a member
of a literal, ``+``) is refused when the entry loads, with the position. At run time a
comparison of mismatched types, ``and`` on a non-boolean, or a path through a non-map is
an evaluation error: the policy then does not apply (Wippy: Undefined).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_DEPTH", "MAX_LENGTH", "EvalError", "ExprError", "compile_expression"]

#: Longest expression accepted (characters), and deepest nesting (parentheses, not, lists).
MAX_LENGTH = 4096
MAX_DEPTH = 32

ROOTS = ("actor", "action", "resource", "meta")

Env = dict[str, Any]
Node = Callable[[Env], Any]


class ExprError(ValueError):
    """An expression outside the supported subset (raised at load)."""


class EvalError(Exception):
    """An expression that cannot be evaluated on these values (the policy does not apply)."""


_TOKEN = re.compile(
    r"""\s*(?:
      (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
    | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<op>==|!=|<=|>=|&&|\|\||[<>!()\[\],.\-])
    )""",
    re.VERBOSE,
)
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "n": "\n", "t": "\t"}
_KEYWORDS = {"and", "or", "not", "in", "true", "false", "nil", "null"}


def _tokens(text: str) -> list[tuple[str, Any, int]]:
    out: list[tuple[str, Any, int]] = []
    pos = 0
    n = len(text)
    while True:
        while pos < n and text[pos].isspace():
            pos += 1
        if pos >= n:
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise ExprError(f"unexpected character {text[pos]!r} at position {pos + 1}")
        kind = m.lastgroup or ""
        raw = m.group(kind)
        at = m.start(kind) + 1
        if kind == "number":
            value: Any = float(raw) if any(c in raw for c in ".eE") else int(raw)
        elif kind == "string":
            value = _unescape(raw[1:-1], at)
        else:
            value = raw
        out.append((kind, value, at))
        pos = m.end()
    out.append(("end", None, n + 1))
    return out


def _unescape(body: str, at: int) -> str:
    out = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            nxt = body[i + 1] if i + 1 < len(body) else ""
            if nxt not in _ESCAPES:
                raise ExprError(f"unsupported escape \\{nxt} in the string at position {at}")
            out.append(_ESCAPES[nxt])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


# -- run-time helpers ------------------------------------------------------------------------
def _is_num(v: Any) -> bool:
    return (type(v) is int or type(v) is float)


def _eq(a: Any, b: Any) -> bool:
    """expr-lang's ``==``: numbers by value; otherwise the same type and equal."""
    if _is_num(a) and _is_num(b):
        return a == b
    return type(a) is type(b) and a == b


def _order(op: str) -> Callable[[Any, Any], bool]:
    def compare(a: Any, b: Any) -> bool:
        if not ((_is_num(a) and _is_num(b)) or (type(a) is str and type(b) is str)):
            raise EvalError(f"cannot compare {type(a).__name__} {op} {type(b).__name__}")
        if op == "<":
            return a < b
        if op == ">":
            return a > b
        if op == "<=":
            return a <= b
        return a >= b
    return compare


def _in(a: Any, b: Any) -> bool:
    if type(b) is list:
        return any(_eq(a, item) for item in b)
    if type(b) is dict:
        return type(a) is str and a in b
    raise EvalError(f"'in' needs a list or a map on its right, got {type(b).__name__}")


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": _eq,
    "!=": lambda a, b: not _eq(a, b),
    "<": _order("<"),
    ">": _order(">"),
    "<=": _order("<="),
    ">=": _order(">="),
    "in": _in,
    "not in": lambda a, b: not _in(a, b),
}


def _bool(v: Any, what: str) -> bool:
    if type(v) is not bool:
        raise EvalError(f"{what} needs true or false, got {type(v).__name__}")
    return v


# -- the parser --------------------------------------------------------------------------------
class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0
        self.depth = 0

    def peek(self) -> tuple[str, Any, int]:
        return self.toks[self.i]

    def take(self) -> tuple[str, Any, int]:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def at(self, *values: str) -> bool:
        kind, value, _ = self.peek()
        return kind in ("op", "name") and value in values

    def expect(self, value: str) -> None:
        kind, got, pos = self.take()
        if kind not in ("op", "name") or got != value:
            raise ExprError(f"expected {value!r} at position {pos}, got {_show(kind, got)}")

    def nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExprError(f"expression nested deeper than {MAX_DEPTH} levels")

    def parse(self) -> Node:
        node = self.or_()
        kind, value, pos = self.peek()
        if kind != "end":
            if kind == "op" and value == "(":
                raise ExprError(f"function calls are not supported (position {pos})")
            raise ExprError(f"unexpected {_show(kind, value)} at position {pos}")
        return node

    def or_(self) -> Node:
        left = self.and_()
        while self.at("or", "||"):
            self.take()
            right = self.and_()
            left = _or(left, right)
        return left

    def and_(self) -> Node:
        left = self.comparison()
        while self.at("and", "&&"):
            self.take()
            right = self.comparison()
            left = _and(left, right)
        return left

    def unary(self) -> Node:
        """``not``/``!`` bind tighter than comparisons, as in expr-lang: ``not a == b`` is
        ``(not a) == b`` (an evaluation error when ``a`` is not a boolean)."""
        if self.at("not", "!"):
            self.take()
            self.nest()
            inner = self.unary()
            self.depth -= 1
            return lambda env: not _bool(inner(env), "not")
        return self.operand()

    def comparison(self) -> Node:
        left = self.unary()
        kind, value, _ = self.peek()
        op = None
        if kind == "op" and value in ("==", "!=", "<", ">", "<=", ">="):
            op = value
            self.take()
        elif kind == "name" and value == "in":
            op = "in"
            self.take()
        elif kind == "name" and value == "not" and self.toks[self.i + 1][:2] == ("name", "in"):
            op = "not in"
            self.take()
            self.take()
        if op is None:
            return left
        right = self.unary()
        fn = _COMPARE[op]
        return lambda env: fn(left(env), right(env))

    def operand(self) -> Node:
        kind, value, pos = self.take()
        if kind == "number":
            return _const(value)
        if kind == "string":
            return self.no_member(_const(value), "a string")
        if kind == "op" and value == "-":
            k2, v2, _ = self.take()
            if k2 != "number":
                raise ExprError(f"'-' must be followed by a number (position {pos})")
            return _const(-v2)
        if kind == "op" and value == "(":
            self.nest()
            inner = self.or_()
            self.expect(")")
            self.depth -= 1
            return self.no_member(inner, "a parenthesised expression")
        if kind == "op" and value == "[":
            return self.list_(pos)
        if kind == "name":
            if value in ("true", "false"):
                return _const(value == "true")
            if value in ("nil", "null"):
                return _const(None)
            if value in _KEYWORDS:
                raise ExprError(f"unexpected {value!r} at position {pos}")
            if value not in ROOTS:
                raise ExprError(
                    f"unknown name {value!r} at position {pos} (an expression may read only "
                    f"{', '.join(ROOTS)})"
                )
            return self.path(value)
        raise ExprError(f"unexpected {_show(kind, value)} at position {pos}")

    def no_member(self, node: Node, what: str) -> Node:
        kind, value, pos = self.peek()
        if kind == "op" and value in (".", "[", "("):
            raise ExprError(f"{what} has no members, indexes or calls (position {pos})")
        return node

    def path(self, root: str) -> Node:
        keys: list[str] = []
        while self.at("."):
            self.take()
            kind, value, pos = self.take()
            if kind != "name":
                raise ExprError(f"expected a field name after '.' at position {pos}")
            if value.startswith("__"):
                raise ExprError(f"field names may not start with '__' ({value!r} at position {pos})")
            keys.append(value)
        kind, value, pos = self.peek()
        if kind == "op" and value == "(":
            raise ExprError(f"function calls are not supported (position {pos})")
        if kind == "op" and value == "[":
            raise ExprError(f"indexing is not supported, use a field path (position {pos})")
        if root in ("action", "resource") and keys:
            raise ExprError(f"{root} is a string: it has no field {keys[0]!r}")
        if root == "actor" and keys and keys[0] not in ("id", "meta"):
            raise ExprError(f"actor has fields id and meta, not {keys[0]!r}")
        return _path(root, tuple(keys))

    def list_(self, pos: int) -> Node:
        self.nest()
        items: list[Node] = []
        if not self.at("]"):
            while True:
                items.append(self.or_())
                if self.at(","):
                    self.take()
                    if self.at("]"):
                        break
                    continue
                break
        self.expect("]")
        self.depth -= 1
        frozen = tuple(items)
        return self.no_member(lambda env: [f(env) for f in frozen], "a list")


def _show(kind: str, value: Any) -> str:
    return "end of expression" if kind == "end" else repr(value)


def _const(value: Any) -> Node:
    return lambda env: value


def _path(root: str, keys: tuple[str, ...]) -> Node:
    def read(env: Env) -> Any:
        cur = env.get(root)
        for key in keys:
            if type(cur) is not dict:
                raise EvalError(f"cannot fetch {key} from {type(cur).__name__}")
            cur = cur.get(key)
        return cur
    return read


def _and(left: Node, right: Node) -> Node:
    return lambda env: _bool(left(env), "and") and _bool(right(env), "and")


def _or(left: Node, right: Node) -> Node:
    return lambda env: _bool(left(env), "or") or _bool(right(env), "or")


def compile_expression(text: str) -> Callable[[Env], bool]:
    """The expression as a function of ``{"actor": {"id", "meta"}, "action", "resource",
    "meta"}`` that returns True or False, or raises :class:`EvalError` (the policy then
    does not apply). Raises :class:`ExprError` for anything outside the subset."""
    if not isinstance(text, str) or not text.strip():
        raise ExprError("expression cannot be empty")
    if len(text) > MAX_LENGTH:
        raise ExprError(f"expression longer than {MAX_LENGTH} characters ({len(text)})")
    node = _Parser(text).parse()

    def run(env: Env) -> bool:
        result = node(env)
        if type(result) is not bool:
            raise EvalError(f"the expression gave {type(result).__name__}, not true or false")
        return result
    return run

