"""Who may publish where: Wippy's security policies, scopes and checks (DESIGN §8).

Entries of kind ``security.policy`` (actions, resources, effect, conditions) and
``security.policy.expr`` (the same with an ``expression``) belong to *groups*; a
consumer's ``lifecycle.security`` names an actor, groups and policies. Every publish a
handler makes is checked as Wippy's Lua ``queue.publish`` does (:class:`PublishGate`):
action ``queue.publish`` on resource ``""``, then ``queue.publish.queue`` on the queue id.

The rules are Wippy's (RT ``runtime/security/access.go``, ``service/security/policy``):

* with an actor **and** a scope: any deny wins, else any allow allows, else deny;
* without an actor or a scope: allow, unless strict mode;
* a lifecycle block sets the actor; its scope is every policy of its groups plus its own
  policies, and a block that lists none has no scope (so checks are permissive again).

Deviations, all at load time: an unknown group or policy id is a ConfigError naming the
entry, field and id (Wippy skips it silently); conditions, field paths, regexes and
``exists`` values are validated (Wippy fails them at check time, as "does not apply").
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from .errors import ConfigError
from .security_expr import EvalError, ExprError, compile_expression

__all__ = [
    "ALLOW",
    "DENY",
    "POLICY_KINDS",
    "Actor",
    "Condition",
    "Policy",
    "PublishGate",
    "Scope",
    "SecuritySpec",
    "build_scope",
    "check",
    "matches_pattern",
    "parse_policy",
    "parse_security",
    "validate_security",
]

ALLOW, DENY = "allow", "deny"
POLICY_KINDS = ("security.policy", "security.policy.expr")
OPERATORS = ("eq", "ne", "lt", "gt", "lte", "gte", "in", "nin", "exists", "nexists",
             "contains", "ncontains", "matches", "nmatches")

#: Wippy's texts for the two publish checks (RT runtime/lua/modules/queue/module.go).
PUBLISH_DENIED = "queue publishing not allowed"
QUEUE_DENIED = "not allowed to publish to queue: {}"


# -- shapes ---------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Actor:
    """Who acts: ``lifecycle.security.actor`` (``id`` and free-form ``meta``)."""

    id: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Condition:
    """One ``policy.conditions`` item: ``field operator value|value_from``."""

    field: str
    operator: str
    value: Any = None
    value_from: str = ""
    pattern: re.Pattern[str] | None = None  # matches/nmatches with a string value, compiled at load


@dataclass(frozen=True, eq=False)
class Policy:
    """A ``security.policy`` or ``security.policy.expr`` entry, parsed and compiled."""

    id: str
    kind: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    effect: str
    conditions: tuple[Condition, ...] = ()
    expression: Callable[[dict[str, Any]], bool] | None = None
    groups: tuple[str, ...] = ()
    file: str = "<code>"

    def evaluate(self, actor: Actor, action: str, resource: str, meta: Mapping[str, Any]) -> str | None:
        """``"allow"``, ``"deny"``, or None when the policy does not apply (Undefined)."""
        if not _matches_filter(self.actions, action) or not _matches_filter(self.resources, resource):
            return None
        if self.expression is not None:
            env = {"actor": {"id": actor.id, "meta": dict(actor.meta)}, "action": action,
                   "resource": resource, "meta": dict(meta)}
            try:
                return self.effect if self.expression(env) else None
            except EvalError:
                return None
        for c in self.conditions:
            if not _condition_holds(c, actor, action, resource, meta):
                return None
        return self.effect


@dataclass(frozen=True, eq=False)
class SecuritySpec:
    """A ``lifecycle.security`` block: the actor, and the ids of its groups and policies."""

    actor: Actor
    groups: tuple[str, ...] = ()
    policies: tuple[str, ...] = ()


class Scope:
    """The policies in force for one actor (Wippy's ``security.Scope``)."""

    def __init__(self, policies: Iterable[Policy]) -> None:
        self.policies = tuple(policies)

    def evaluate(self, actor: Actor, action: str, resource: str, meta: Mapping[str, Any]) -> str | None:
        """Any deny wins; else any allow allows; else None (nothing decided)."""
        allowed = False
        for p in self.policies:
            result = p.evaluate(actor, action, resource, meta)
            if result == DENY:
                return DENY
            if result == ALLOW:
                allowed = True
        return ALLOW if allowed else None

    def __repr__(self) -> str:
        return f"Scope({', '.join(p.id for p in self.policies)})"


def check(actor: Actor | None, scope: Scope | None, action: str, resource: str, strict: bool,
          meta: Mapping[str, Any] | None = None) -> bool:
    """Wippy's ``IsAllowed``: with actor and scope, only an allow allows; without either,
    allowed unless ``strict``."""
    if actor is not None and scope is not None:
        return scope.evaluate(actor, action, resource, meta or {}) == ALLOW
    return not strict


# -- patterns (RT service/security/policy/util.go) ---------------------------------------------
def matches_pattern(pattern: str, value: str) -> bool:
    """``*``, exact, ``prefix.*`` and ``prefix*``: both plain prefix matches (so
    ``app.queue.*`` also matches ``app.queue`` and ``app.queueX``, as in Wippy)."""
    if pattern == "*" or pattern == value:
        return True
    if len(pattern) > 2 and pattern.endswith(".*"):
        return value.startswith(pattern[:-2])
    if len(pattern) > 1 and pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return False


def _matches_filter(patterns: tuple[str, ...], value: str) -> bool:
    return any(matches_pattern(p, value) for p in patterns)


# -- conditions (RT service/security/policy/condition_evaluator.go) ----------------------------
class _Missing(Exception):
    """The field path names nothing (the value is then nil)."""


class _Broken(Exception):
    """The field path cannot be read at all (the policy then does not apply)."""


def _nested(m: Any, keys: list[str]) -> Any:
    for key in keys:
        if not isinstance(m, Mapping) or key not in m:
            raise _Missing
        m = m[key]
    return m


def _field(path: str, actor: Actor, action: str, resource: str, meta: Mapping[str, Any]) -> Any:
    parts = path.split(".")
    head = parts[0]
    if head == "actor":
        if not actor.id and not actor.meta:
            raise _Broken  # Wippy: nil or empty actor
        if parts[1] == "id":
            return actor.id
        return _nested(actor.meta, parts[2:]) if len(parts) > 2 else dict(actor.meta)
    if head == "meta":
        return _nested(meta, parts[1:])
    if head == "action":
        return action
    if head == "resource":
        return resource
    return meta.get(path)


def _value(path: str, actor: Actor, action: str, resource: str, meta: Mapping[str, Any]) -> Any:
    try:
        return _field(path, actor, action, resource, meta)
    except _Missing:
        return None


def _condition_holds(c: Condition, actor: Actor, action: str, resource: str, meta: Mapping[str, Any]) -> bool:
    try:
        value = _value(c.field, actor, action, resource, meta)
        other = _value(c.value_from, actor, action, resource, meta) if c.value_from else c.value
        return _compare(value, other, c)
    except _Broken:
        return False


def _to_float(v: Any) -> float | None:
    if type(v) is int or type(v) is float:
        return float(v)
    if type(v) is str and v and not any(ch.isspace() or ch == "_" for ch in v):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _to_str(v: Any) -> str | None:
    """Go's ``toString``: numbers as Go prints them, booleans as true/false."""
    if v is None or isinstance(v, (list, tuple, dict)):
        return None
    if type(v) is bool:
        return "true" if v else "false"
    if type(v) is float:
        if v.is_integer() and abs(v) < 1e16:
            return str(int(v))
        return format(Decimal(repr(v)), "f") if math.isfinite(v) else repr(v)
    return str(v)


def _equals(a: Any, b: Any) -> bool:
    if type(a) is type(b) and a == b:
        return True
    fa, fb = _to_float(a), _to_float(b)
    if fa is not None and fb is not None:
        return fa == fb
    sa, sb = _to_str(a), _to_str(b)
    return sa is not None and sb is not None and sa == sb


def _compare(value: Any, other: Any, c: Condition) -> bool:
    """One operator, with Wippy's outcomes; an operator that errors does not hold."""
    op = c.operator
    if value is None:
        if op == "exists":
            return other is False
        if op == "nexists":
            return other is True
        return False
    if op == "exists":
        return other if type(other) is bool else True
    if op == "nexists":
        return (not other) if type(other) is bool else False
    if op in ("eq", "ne"):
        return _equals(value, other) == (op == "eq")
    if op in ("lt", "gt", "lte", "gte"):
        fa, fb = _to_float(value), _to_float(other)
        if fa is None or fb is None:
            return False
        return {"lt": fa < fb, "gt": fa > fb, "lte": fa <= fb, "gte": fa >= fb}[op]
    if op in ("in", "nin"):
        if isinstance(other, (list, tuple)):
            found = any(_equals(value, item) for item in other)
        elif type(other) is str:
            found = _equals(value, other)
        else:
            return False
        return found == (op == "in")
    if op in ("contains", "ncontains"):
        sa, sb = _to_str(value), _to_str(other)
        if sa is not None and sb is not None and not isinstance(value, Mapping):
            found = sb in sa
        elif isinstance(value, (list, tuple)):
            found = any(_equals(item, other) for item in value)
        else:
            return False
        return found == (op == "contains")
    # matches / nmatches
    text = _to_str(value)
    if text is None or c.pattern is None:
        return False  # not a string, or a pattern from value_from (Wippy: "not compiled")
    return (c.pattern.search(text) is not None) == (op == "matches")


# -- loading ----------------------------------------------------------------------------------
def _qualify(ref: str, namespace: str) -> str:
    return ref if ":" in ref else f"{namespace}:{ref}"


def _ids(value: Any, namespace: str, err: Callable[[str, str], ConfigError], key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise err(f"{key.rpartition('.')[2]} must be a list of registry ids, got {value!r}", key)
    return tuple(_qualify(v.strip(), namespace) for v in value)


def _filter(value: Any, what: str, err: Callable[[str, str], ConfigError]) -> tuple[str, ...]:
    key = f"policy.{what}"
    if isinstance(value, str):
        if not value:
            raise err(f"{what} string cannot be empty", key)
        return (value,)
    if isinstance(value, list):
        if not value:
            raise err(f"{what} list cannot be empty", key)
        if not all(isinstance(v, str) for v in value):
            raise err(f"{what} must be strings, got {value!r}", key)
        return tuple(value)
    raise err(f"{what} must be a string or list", key)


def _check_path(path: Any, i: int, key: str, err: Callable[[str, str], ConfigError]) -> str:
    if not isinstance(path, str) or not path:
        raise err(f"condition {i}: {key.rpartition('.')[2]} is required", key)
    parts = path.split(".")
    bad = (
        (parts[0] == "actor" and (len(parts) < 2 or parts[1] not in ("id", "meta") or (parts[1] == "id" and len(parts) > 2)))
        or (parts[0] == "meta" and len(parts) < 2)
        or any(not p for p in parts)
    )
    if bad:
        raise err(f"condition {i}: {path!r} is not a field path (actor.id, actor.meta.<key>, action, "
                  "resource, meta.<key>)", key)
    return path


def _conditions(raw: Any, err: Callable[[str, str], ConfigError]) -> tuple[Condition, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise err("conditions must be a list", "policy.conditions")
    out = []
    for i, c in enumerate(raw):
        key = f"policy.conditions[{i}]"
        if not isinstance(c, dict):
            raise err(f"condition {i}: expected a mapping with field, operator, value", key)
        fld = _check_path(c.get("field"), i, f"{key}.field", err)
        op = c.get("operator")
        if not isinstance(op, str) or not op:
            raise err(f"condition {i}: operator is required", f"{key}.operator")
        if op not in OPERATORS:
            raise err(f"condition {i}: invalid operator: {op}", f"{key}.operator")
        value, value_from = c.get("value"), c.get("value_from") or ""
        if value is None and not value_from:
            raise err(f"condition {i}: value or value_from is required", key)
        if value_from:
            _check_path(value_from, i, f"{key}.value_from", err)
        if op in ("exists", "nexists") and not value_from and type(value) is not bool:
            raise err(f"condition {i}: {op} takes value: true or false, got {value!r}", f"{key}.value")
        pattern = None
        if op in ("matches", "nmatches") and not value_from:
            if not isinstance(value, str):
                raise err(f"condition {i}: {op} needs a regular expression string, got {value!r}", f"{key}.value")
            try:
                pattern = re.compile(value)
            except re.error as e:
                raise err(f"condition {i}: invalid regex pattern {value!r}: {e}", f"{key}.value") from None
        out.append(Condition(fld, op, value, value_from, pattern))
    return tuple(out)


def parse_policy(raw: Mapping[str, Any], entry_id: str, namespace: str, file: str, kind: str) -> Policy:
    """A ``security.policy`` / ``security.policy.expr`` entry; errors name file, entry, field."""
    def err(message: str, fld: str) -> ConfigError:
        return ConfigError(message, file=file, entry=entry_id, field=fld)

    body = raw.get("policy")
    if not isinstance(body, dict):
        raise err("policy is required: a mapping with actions, resources and effect", "policy")
    effect = body.get("effect")
    if effect not in (ALLOW, DENY):
        shown = "" if effect is None else effect
        raise err(f"invalid policy effect: {shown}", "policy.effect")
    actions = _filter(body.get("actions"), "actions", err)
    resources = _filter(body.get("resources"), "resources", err)
    groups = _ids(raw.get("groups"), namespace, err, "groups")
    if kind == "security.policy.expr":
        text = body.get("expression")
        try:
            expression = compile_expression(text if isinstance(text, str) else "")
        except ExprError as e:
            raise err(f"{e} (wqnb supports a subset of expr-lang: see docs/security.md)", "policy.expression") from None
        if "conditions" in body:
            raise err("a security.policy.expr entry has an expression, not conditions", "policy.conditions")
        return Policy(entry_id, kind, actions, resources, effect, (), expression, groups, file)
    if "expression" in body:
        raise err("expression belongs to kind security.policy.expr (this entry is security.policy)",
                  "policy.expression")
    return Policy(entry_id, kind, actions, resources, effect, _conditions(body.get("conditions"), err),
                  None, groups, file)


def parse_security(raw: Any, entry_id: str, namespace: str, file: str) -> SecuritySpec | None:
    """``lifecycle.security``: ``actor: {id, meta}``, ``groups``, ``policies`` (ids; a bare
    name gets the entry's namespace). None when the block is absent."""
    if raw is None:
        return None

    def err(message: str, fld: str) -> ConfigError:
        return ConfigError(message, file=file, entry=entry_id, field=f"lifecycle.security{fld and '.' + fld}")

    if not isinstance(raw, dict):
        raise err(f"expected a mapping with actor, groups, policies, got {type(raw).__name__}", "")
    unknown = set(raw) - {"actor", "groups", "policies"}
    if unknown:
        raise err(f"unknown key {min(unknown)!r} (expected actor, groups, policies)", "")
    actor_raw = raw.get("actor") or {}
    if not isinstance(actor_raw, dict):
        raise err(f"expected a mapping with id and meta, got {actor_raw!r}", "actor")
    actor_id = actor_raw.get("id", "")
    if not isinstance(actor_id, str):
        raise err(f"actor id must be a string, got {actor_id!r}", "actor.id")
    meta = actor_raw.get("meta") or {}
    if not isinstance(meta, dict):
        raise err(f"actor meta must be a mapping, got {meta!r}", "actor.meta")

    def ids_err(message: str, fld: str) -> ConfigError:
        return err(message, fld)

    return SecuritySpec(
        Actor(actor_id, dict(meta)),
        _ids(raw.get("groups"), namespace, ids_err, "groups"),
        _ids(raw.get("policies"), namespace, ids_err, "policies"),
    )


def _policies(entries: Mapping[str, Any]) -> list[Policy]:
    return [e for e in entries.values() if isinstance(e, Policy)]


def validate_security(entries: Mapping[str, Any]) -> None:
    """Every group and policy a ``lifecycle.security`` names exists (a load error naming
    the entry, the field and the id, where Wippy skips it silently)."""
    groups = {g for p in _policies(entries) for g in p.groups}
    for e in entries.values():
        spec = getattr(getattr(e, "lifecycle", None), "security", None)
        if spec is None:
            continue
        file = getattr(e, "file", None)
        for gid in spec.groups:
            if gid not in groups:
                known = ", ".join(sorted(groups)) or "none"
                raise ConfigError(f"policy group not found: {gid} (groups: {known})", file=file,
                                  entry=e.id, field="lifecycle.security.groups")
        for pid in spec.policies:
            target = entries.get(pid)
            if not isinstance(target, Policy):
                what = "not found" if target is None else "is not a security.policy"
                raise ConfigError(f"policy {what}: {pid}", file=file, entry=e.id,
                                  field="lifecycle.security.policies")


def build_scope(spec: SecuritySpec, entries: Mapping[str, Any]) -> Scope | None:
    """The policies of ``spec``'s groups, then its own policies; None when that is none
    (Wippy: no scope, so checks are permissive unless strict)."""
    found: list[Policy] = []
    all_policies = _policies(entries)
    for gid in spec.groups:
        found += [p for p in all_policies if gid in p.groups]
    for pid in spec.policies:
        p = entries.get(pid)
        if isinstance(p, Policy):
            found.append(p)
    return Scope(found) if found else None


# -- the publish check ------------------------------------------------------------------------
class PublishGate:
    """Checks a publish made from a handler, as Wippy's Lua ``queue.publish`` does.

    ``denied(consumer_entry, queue_id)`` returns None when allowed, else Wippy's text.
    ``consumer_entry`` is None for a handler without a consumer (then only strict mode
    matters). Scopes are built once per consumer entry. Host code is never checked.

    A publish check depends only on the consumer (its actor and scope), the queue id and
    ``strict`` (``meta`` is empty), so answers are kept: the first check of a pair costs
    the policies' evaluation (about 10 µs for two conditioned policies), the next ones a
    dict lookup. At most MAX_CACHED answers are kept (a handler publishing to ever new ids
    cannot grow it without bound)."""

    MAX_CACHED = 4096

    def __init__(self, entries: Mapping[str, Any], strict: bool = False) -> None:
        self.entries = entries
        self._strict = strict
        self._scopes: dict[str, tuple[Actor | None, Scope | None]] = {}
        self._answers: dict[tuple[str, str | None], str | None] = {}

    @property
    def strict(self) -> bool:
        """Strict mode: no actor or no scope means no publishing."""
        return self._strict

    @strict.setter
    def strict(self, value: bool) -> None:
        self._strict = bool(value)
        self._answers.clear()

    def _context(self, entry: Any) -> tuple[Actor | None, Scope | None]:
        if entry is None:
            return None, None
        key = getattr(entry, "id", "")
        ctx = self._scopes.get(key)
        if ctx is None:
            spec = getattr(getattr(entry, "lifecycle", None), "security", None)
            ctx = (None, None) if spec is None else (spec.actor, build_scope(spec, self.entries))
            self._scopes[key] = ctx
        return ctx

    def denied(self, entry: Any, queue_id: str | None) -> str | None:
        """Both checks in order; ``queue_id=None``: only the general one (Lua asks it
        before reading its arguments, as Wippy does)."""
        key = (getattr(entry, "id", ""), queue_id)
        answers = self._answers
        if key in answers:
            return answers[key]
        answer = self._decide(entry, queue_id)
        if len(answers) >= self.MAX_CACHED:
            answers.clear()
        answers[key] = answer
        return answer

    def _decide(self, entry: Any, queue_id: str | None) -> str | None:
        actor, scope = self._context(entry)
        if not check(actor, scope, "queue.publish", "", self.strict):
            return PUBLISH_DENIED
        if queue_id is None:
            return None
        if not check(actor, scope, "queue.publish.queue", queue_id, self.strict):
            return QUEUE_DENIED.format(queue_id)
        return None
