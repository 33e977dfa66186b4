"""Publish security (issue 12 §1, DESIGN §8, notes/brokers.md §9.2 cases 21-26): Wippy's
policies, scopes and checks on every publish a handler makes, Lua and Python; the
expression subset of ``security.policy.expr``; load errors naming entry, field and id."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

import wqnb
from wqnb.registry import Registry
from wqnb.security import (
    Actor,
    Policy,
    PublishGate,
    Scope,
    SecuritySpec,
    check,
    matches_pattern,
    parse_policy,
)
from wqnb.security_expr import EvalError, ExprError, compile_expression

WORKER = Actor("service:worker", {"role": "worker", "results": "app.queue:results"})


def policy(name: str = "p", kind: str = "security.policy", **body: Any) -> Policy:
    return parse_policy({"policy": body}, f"t:{name}", "t", "<test>", kind)


def allowed(scope: Scope | None, resource: str, action: str = "queue.publish.queue",
            actor: Actor | None = WORKER, strict: bool = False) -> bool:
    return check(actor, scope, action, resource, strict)


# -- patterns ------------------------------------------------------------------------------------
@pytest.mark.parametrize("pattern,value,expected", [
    ("*", "", True), ("*", "app.queue:tasks", True),
    ("app.queue:tasks", "app.queue:tasks", True), ("app.queue:tasks", "app.queue:task", False),
    ("app.queue:*", "app.queue:tasks", True), ("app.queue:*", "app.other:x", False),
    ("app.queue.*", "app.queue.tasks", True),
    ("app.queue.*", "app.queueX", True),  # Wippy's quirk: a plain prefix match
    ("app.queue:*", "", False),
])
def test_patterns_are_wippys(pattern, value, expected):
    assert matches_pattern(pattern, value) is expected


# -- 21: no actor or no scope ---------------------------------------------------------------------
def test_21_without_actor_or_scope_allowed_unless_strict():
    scope = Scope([policy(actions="*", resources="*", effect="deny")])
    for actor, sc in ((None, None), (WORKER, None), (None, scope)):
        assert check(actor, sc, "queue.publish", "", strict=False) is True
        assert check(actor, sc, "queue.publish", "", strict=True) is False
    gate = PublishGate({}, strict=True)
    assert gate.denied(None, "app.queue:tasks") == "queue publishing not allowed"
    gate = PublishGate({}, strict=False)
    assert gate.denied(None, "app.queue:tasks") is None
    gate.strict = True  # (answers are cached: a change of mode forgets them)
    assert gate.denied(None, "app.queue:tasks") == "queue publishing not allowed"


# -- 22: the two checks ---------------------------------------------------------------------------
SECURITY_YAML = """\
namespace: app.security
entries:
  - name: may_publish
    kind: security.policy
    policy: {actions: queue.publish, resources: "*", effect: allow}
    groups: [workers]
  - name: tasks_only
    kind: security.policy
    policy: {actions: queue.publish.queue, resources: "app.queue:*", effect: allow}
    groups: [workers]
  - name: never_other
    kind: security.policy
    policy: {actions: queue.publish.queue, resources: app.queue:other, effect: deny}
"""


def app_yaml(security: str = "", handler: str = "h", dead_letter: bool = True) -> str:
    block = textwrap.indent(textwrap.dedent(security), " " * 8) if security else ""
    dl = "    dead_letter: {queue: dead, max_attempts: 1}\n" if dead_letter else ""
    return (
        "namespace: app.queue\nentries:\n"
        "  - {name: mem, kind: queue.driver.memory, lifecycle: {auto_start: true}}\n"
        "  - name: tasks\n    kind: queue.queue\n    driver: mem\n" + dl +
        "  - {name: results, kind: queue.queue, driver: mem}\n"
        "  - {name: other, kind: queue.queue, driver: mem}\n"
        "  - {name: dead, kind: queue.queue, driver: mem}\n"
        "  - name: worker\n    kind: queue.consumer\n    queue: tasks\n"
        f"    func: {handler}\n"
        "    lifecycle:\n      auto_start: true\n"
        + ("      security:\n" + block if block else "")
    )


def registry(*texts: str) -> Registry:
    reg = Registry()
    for i, t in enumerate(texts):
        reg.load_string(t, name=f"<yaml {i}>")
    reg.check()
    return reg


WORKER_SECURITY = """\
actor: {id: "service:worker", meta: {role: worker}}
groups: [app.security:workers]
"""


def test_22_publish_allowed_on_app_queue_denied_elsewhere_with_wippys_text():
    reg = registry(SECURITY_YAML, app_yaml(WORKER_SECURITY))
    entry = reg.entries["app.queue:worker"]
    spec = entry.lifecycle.security
    assert spec is not None and spec.actor.id == "service:worker" and spec.groups == ("app.security:workers",)
    gate = PublishGate(reg.entries)
    assert gate.denied(entry, "app.queue:tasks") is None
    assert gate.denied(entry, "app.other:x") == "not allowed to publish to queue: app.other:x"
    # the quirk: a policy on "app.queue:*" alone fails the first check (resource "")
    only_queue = Scope([policy(actions="queue.publish*", resources="app.queue:*", effect="allow")])
    assert not allowed(only_queue, "", action="queue.publish")
    assert allowed(only_queue, "app.queue:tasks")


# -- 23: deny beats allow; nothing decided denies --------------------------------------------------
def test_23_deny_wins_and_no_matching_policy_denies():
    allow_all = policy("a", actions="*", resources="*", effect="allow")
    deny_other = policy("d", actions="queue.publish.queue", resources="app.queue:other", effect="deny")
    scope = Scope([allow_all, deny_other])
    assert allowed(scope, "app.queue:tasks")
    assert not allowed(scope, "app.queue:other")
    assert not allowed(Scope([deny_other, allow_all]), "app.queue:other")  # in either order
    unrelated = Scope([policy("u", actions="fs.read", resources="*", effect="allow")])
    assert not allowed(unrelated, "app.queue:tasks")
    assert Scope([]).evaluate(WORKER, "queue.publish", "", {}) is None
    # the registry's deny policy, listed besides the group
    reg = registry(SECURITY_YAML, app_yaml(WORKER_SECURITY + "policies: [app.security:never_other]\n"))
    gate = PublishGate(reg.entries)
    entry = reg.entries["app.queue:worker"]
    assert gate.denied(entry, "app.queue:results") is None
    assert gate.denied(entry, "app.queue:other") == "not allowed to publish to queue: app.queue:other"


# -- 24: conditions --------------------------------------------------------------------------------
def cond(**c: Any) -> Scope:
    return Scope([policy(actions="*", resources="*", effect="allow", conditions=[c])])


@pytest.mark.parametrize("condition,resource,expected", [
    ({"field": "actor.meta.role", "operator": "eq", "value": "worker"}, "x", True),
    ({"field": "actor.meta.role", "operator": "eq", "value": "admin"}, "x", False),
    ({"field": "actor.meta.role", "operator": "ne", "value": "admin"}, "x", True),
    ({"field": "actor.meta.missing", "operator": "ne", "value": "admin"}, "x", False),  # nil: false
    ({"field": "resource", "operator": "eq", "value_from": "actor.meta.results"}, "app.queue:results", True),
    ({"field": "resource", "operator": "eq", "value_from": "actor.meta.results"}, "app.queue:tasks", False),
    ({"field": "actor.id", "operator": "eq", "value_from": "actor.id"}, "x", True),
    ({"field": "actor.meta.owner", "operator": "eq", "value_from": "actor.id"}, "x", True),
    ({"field": "resource", "operator": "matches", "value": r"^app\.queue:"}, "app.queue:tasks", True),
    ({"field": "resource", "operator": "matches", "value": r"^app\.queue:"}, "app.other:x", False),
    ({"field": "resource", "operator": "nmatches", "value": r":other$"}, "app.queue:tasks", True),
    ({"field": "actor.meta.level", "operator": "gte", "value": 3}, "x", True),
    ({"field": "actor.meta.level", "operator": "lt", "value": "3"}, "x", False),  # numbers from text
    ({"field": "actor.meta.level", "operator": "eq", "value": "3"}, "x", True),
    ({"field": "actor.meta.role", "operator": "gt", "value": 1}, "x", False),  # not a number: no
    ({"field": "actor.meta.role", "operator": "in", "value": ["worker", "admin"]}, "x", True),
    ({"field": "actor.meta.role", "operator": "nin", "value": ["worker", "admin"]}, "x", False),
    ({"field": "actor.meta.tags", "operator": "contains", "value": "blue"}, "x", True),
    ({"field": "actor.meta.tags", "operator": "ncontains", "value": "red"}, "x", True),
    ({"field": "resource", "operator": "contains", "value": "results"}, "app.queue:results", True),
    ({"field": "actor.meta.role", "operator": "exists", "value": True}, "x", True),
    ({"field": "actor.meta.nope", "operator": "exists", "value": True}, "x", False),
    ({"field": "actor.meta.nope", "operator": "nexists", "value": True}, "x", True),
    ({"field": "actor.meta.deep.a", "operator": "eq", "value": 1}, "x", True),
    ({"field": "meta.anything", "operator": "exists", "value": True}, "x", False),  # publish: no meta
    ({"field": "action", "operator": "eq", "value": "queue.publish.queue"}, "x", True),
])
def test_24_conditions(condition, resource, expected):
    actor = Actor("service:worker", {"role": "worker", "results": "app.queue:results", "level": 3,
                                     "owner": "service:worker", "tags": ["blue", "green"], "deep": {"a": 1}})
    assert allowed(cond(**condition), resource, actor=actor) is expected


def test_24_all_conditions_must_hold_and_an_empty_actor_matches_none():
    both = Scope([policy(actions="*", resources="*", effect="allow", conditions=[
        {"field": "actor.meta.role", "operator": "eq", "value": "worker"},
        {"field": "resource", "operator": "eq", "value": "app.queue:results"},
    ])])
    assert allowed(both, "app.queue:results")
    assert not allowed(both, "app.queue:tasks")
    assert not allowed(cond(field="actor.id", operator="exists", value=True), "x", actor=Actor())


# -- 25: lifecycle security reaches the handlers ------------------------------------------------
RESULTS_ONLY = """\
namespace: app.security
entries:
  - name: may_publish
    kind: security.policy
    policy: {actions: queue.publish, resources: "*", effect: allow}
    groups: [own_results]
  - name: own_results_queue
    kind: security.policy
    policy:
      actions: queue.publish.queue
      resources: "*"
      effect: allow
      conditions:
        - {field: resource, operator: eq, value_from: actor.meta.results}
    groups: [own_results]
"""
RESULTS_SECURITY = """\
actor: {id: "service:worker", meta: {results: app.queue:results}}
groups: [app.security:own_results]
"""

LUA_HANDLER = """\
  - name: h
    kind: function.lua
    modules: [queue]
    source: |
      local queue = require("queue")
      return function(body)
        local ok, err = queue.publish("app.queue:results", body)
        if not ok then return nil, "results: " .. tostring(err) end
        local ok2, err2 = queue.publish("app.queue:other", body)
        if ok2 then return true end
        return nil, err2:kind() .. ": " .. tostring(err2)
      end
"""


async def _run(rt: wqnb.Runtime, n: int = 3) -> None:
    await rt.start()
    for i in range(n):
        await rt.publish("app.queue:tasks", {"i": i})
    await rt.drain(timeout=30)
    await rt.stop()


def _rows(rt: wqnb.Runtime, event: str, queue: str) -> Any:
    df = rt.timeline.df
    return df[(df.event == event) & (df.queue == queue)]


def test_25_lua_handler_publish_is_checked_against_its_consumers_security():
    pytest.importorskip("lupa")
    reg = registry(RESULTS_ONLY, app_yaml(RESULTS_SECURITY) + LUA_HANDLER)
    rt = wqnb.Runtime(reg)
    wqnb.run_virtual(_run(rt))
    assert len(_rows(rt, "publish", "app.queue:results")) == 3
    assert len(_rows(rt, "publish", "app.queue:other")) == 0
    nacks = _rows(rt, "nack", "app.queue:tasks")
    assert list(nacks.error) == ["Invalid: not allowed to publish to queue: app.queue:other"] * 3


def test_25_lua_handler_in_strict_mode_without_security():
    pytest.importorskip("lupa")
    rt = wqnb.Runtime(registry(app_yaml() + LUA_HANDLER), strict_security=True)
    wqnb.run_virtual(_run(rt, 1))
    assert list(_rows(rt, "nack", "app.queue:tasks").error) == ["results: queue publishing not allowed"]
    assert len(_rows(rt, "publish", "app.queue:tasks")) == 1  # host code is never checked


ORDER_HANDLER = """\
  - name: h
    kind: function.lua
    modules: [queue]
    source: |
      local queue = require("queue")
      return function(body)
        local seen = {}
        for _, args in ipairs({{}, {"app.queue:other"}, {"app.queue:results"}}) do
          local ok, err = queue.publish(table.unpack(args))
          seen[#seen + 1] = ok and "ok" or tostring(err)
        end
        return nil, table.concat(seen, " | ")
      end
"""


@pytest.mark.parametrize("strict,security,expected", [
    # Wippy's order: the general check before the arguments, the queue check before the data
    (True, "", "queue publishing not allowed | queue publishing not allowed | queue publishing not allowed"),
    (False, RESULTS_SECURITY, ("queue ID required | not allowed to publish to queue: app.queue:other | "
                               "message data required")),
    (False, "", "queue ID required | message data required | message data required"),
])
def test_25_lua_checks_come_in_wippys_order(strict, security, expected):
    pytest.importorskip("lupa")
    texts = [RESULTS_ONLY, app_yaml(security) + ORDER_HANDLER] if security else [app_yaml() + ORDER_HANDLER]
    rt = wqnb.Runtime(registry(*texts), strict_security=strict)
    wqnb.run_virtual(_run(rt, 1))
    assert list(_rows(rt, "nack", "app.queue:tasks").error) == [expected]


def test_25_each_delivery_is_checked_as_its_own_consumer():
    """Two consumers of one Lua function: the actor travels with the delivery, not the code."""
    pytest.importorskip("lupa")
    second = ("  - {name: tasks2, kind: queue.queue, driver: mem}\n"
              "  - name: free\n    kind: queue.consumer\n    queue: tasks2\n    func: h\n"
              "    lifecycle: {auto_start: true}\n")
    rt = wqnb.Runtime(registry(RESULTS_ONLY, app_yaml(RESULTS_SECURITY) + LUA_HANDLER + second))

    async def main() -> None:
        await rt.start()
        for q in ("app.queue:tasks", "app.queue:tasks2"):
            await rt.publish(q, {"i": 1})
        await rt.drain(timeout=30)
        await rt.stop()

    wqnb.run_virtual(main())
    assert list(_rows(rt, "nack", "app.queue:tasks").error) == [
        "Invalid: not allowed to publish to queue: app.queue:other"]
    assert len(_rows(rt, "ack", "app.queue:tasks2")) == 1 and len(_rows(rt, "nack", "app.queue:tasks2")) == 0
    assert len(_rows(rt, "publish", "app.queue:other")) == 1  # the free consumer's


def test_message_publish_after_the_handler_returned_is_refused():
    kept: list[wqnb.Delivery] = []

    async def handler(body: str, message: wqnb.Delivery) -> None:
        kept.append(message)

    rt = wqnb.Runtime(registry(app_yaml()))
    rt.register_function("app.queue:h", handler)

    async def main() -> None:
        await _run(rt, 1)
        with pytest.raises(wqnb.MessageReleased):
            await kept[0].publish("app.queue:results", "late")

    wqnb.run_virtual(main())


def _python_app(security: str = "", **kw: Any) -> tuple[wqnb.Runtime, list[str]]:
    refused: list[str] = []

    async def handler(body: str, message: wqnb.Delivery) -> None:
        try:
            await message.publish("app.queue:other", body)
        except wqnb.PermissionDenied as e:
            refused.append(str(e))
        await message.publish("app.queue:results", body, {"from": message.id})

    texts = [RESULTS_ONLY, app_yaml(security)] if security else [app_yaml()]
    rt = wqnb.Runtime(registry(*texts), **kw)
    rt.register_function("app.queue:h", handler)
    return rt, refused


def test_25_python_handler_message_publish_is_checked():
    rt, refused = _python_app(RESULTS_SECURITY)
    wqnb.run_virtual(_run(rt))
    assert refused == ["not allowed to publish to queue: app.queue:other"] * 3
    results = _rows(rt, "publish", "app.queue:results")
    assert len(results) == 3 and len(_rows(rt, "ack", "app.queue:tasks")) == 3
    assert len(_rows(rt, "publish", "app.queue:other")) == 0


def test_25_python_handler_strict_and_not_strict_without_security():
    rt, refused = _python_app()
    wqnb.run_virtual(_run(rt, 2))
    assert refused == [] and len(_rows(rt, "publish", "app.queue:other")) == 2
    rt, refused = _python_app(strict_security=True)
    wqnb.run_virtual(_run(rt, 2))
    assert refused == ["queue publishing not allowed"] * 2
    # the uncaught second refusal is the handler's failure: the nack carries Wippy's text
    assert list(_rows(rt, "nack", "app.queue:tasks").error) == ["queue publishing not allowed"] * 2
    assert len(_rows(rt, "dead_letter", "app.queue:dead")) == 2


def test_strict_mode_from_yaml_and_the_argument_wins():
    strict_file = "namespace: app.cfg\nsecurity: {strict_mode: true}\nentries: []\n"
    reg = registry(app_yaml(), strict_file)
    assert reg.strict_security is True
    assert wqnb.Runtime(reg).security.strict is True
    assert wqnb.Runtime(registry(app_yaml(), strict_file), strict_security=False).security.strict is False
    assert wqnb.Runtime(registry(app_yaml())).security.strict is False
    with pytest.raises(wqnb.ConfigError, match=r"^<yaml 0>: field 'security': expected security: "):
        registry("namespace: a\nsecurity: {strict_mode: yes please}\nentries: []\n")


def test_a_lifecycle_without_policies_has_no_scope():
    reg = registry(app_yaml('actor: {id: "service:worker"}\n'))
    entry = reg.entries["app.queue:worker"]
    assert PublishGate(reg.entries).denied(entry, "app.queue:other") is None
    assert PublishGate(reg.entries, strict=True).denied(entry, "app.queue:other") == "queue publishing not allowed"


def test_bare_group_and_policy_names_get_the_entry_namespace():
    pol = textwrap.dedent("""\
        - name: mine
          kind: security.policy
          policy: {actions: "*", resources: "*", effect: allow}
          groups: [local_group]
        """)
    text = app_yaml("actor: {id: w}\ngroups: [local_group]\npolicies: [mine]\n") + textwrap.indent(pol, "  ")
    reg = registry(text)
    spec: SecuritySpec = reg.entries["app.queue:worker"].lifecycle.security
    assert spec.groups == ("app.queue:local_group",) and spec.policies == ("app.queue:mine",)
    assert reg.entries["app.queue:mine"].groups == ("app.queue:local_group",)


# -- 26: load errors ------------------------------------------------------------------------------
def test_26_unknown_policy_or_group_is_a_load_error_naming_entry_field_and_id():
    with pytest.raises(wqnb.ConfigError, match=(
        r"^<yaml 1>: entry app.queue:worker: field 'lifecycle.security.policies': "
        r"policy not found: app.security:nope$")):
        registry(SECURITY_YAML, app_yaml("actor: {id: w}\npolicies: [app.security:nope]\n"))
    with pytest.raises(wqnb.ConfigError, match=(
        r"^<yaml 1>: entry app.queue:worker: field 'lifecycle.security.groups': "
        r"policy group not found: app.security:admins \(groups: app.security:workers\)$")):
        registry(SECURITY_YAML, app_yaml("actor: {id: w}\ngroups: [app.security:admins]\n"))
    with pytest.raises(wqnb.ConfigError, match=r"field 'lifecycle.security.policies': policy is not a "
                                              r"security.policy: app.queue:tasks$"):
        registry(app_yaml("policies: [tasks]\n"))


def test_26_effect_maybe_is_a_load_error_with_wippys_text():
    text = "namespace: s\nentries:\n  - name: p\n    kind: security.policy\n" \
           "    policy: {actions: '*', resources: '*', effect: maybe}\n"
    with pytest.raises(wqnb.ConfigError, match=r"^<yaml 0>: entry s:p: field 'policy.effect': "
                                              r"invalid policy effect: maybe$"):
        registry(text)
    with pytest.raises(wqnb.ConfigError, match=r"entry s:p: field 'policy.effect': invalid policy effect: maybe$"):
        registry(text.replace("kind: security.policy", "kind: security.policy.expr")
                 .replace("effect: maybe}", "effect: maybe, expression: 'true'}"))


@pytest.mark.parametrize("body,field,text", [
    ({"resources": "*", "effect": "allow"}, "policy.actions", "actions must be a string or list"),
    ({"actions": "", "resources": "*", "effect": "allow"}, "policy.actions", "actions string cannot be empty"),
    ({"actions": "*", "resources": [], "effect": "allow"}, "policy.resources", "resources list cannot be empty"),
    ({"actions": "*", "resources": "*", "effect": "allow", "conditions": [{"field": "actor.id", "operator": "like", "value": 1}]},
     "policy.conditions[0].operator", "condition 0: invalid operator: like"),
    ({"actions": "*", "resources": "*", "effect": "allow", "conditions": [{"field": "actor.id", "operator": "eq"}]},
     "policy.conditions[0]", "condition 0: value or value_from is required"),
    ({"actions": "*", "resources": "*", "effect": "allow", "conditions": [{"field": "actor.name", "operator": "eq", "value": 1}]},
     "policy.conditions[0].field", "condition 0: 'actor.name' is not a field path"),
    ({"actions": "*", "resources": "*", "effect": "allow", "conditions": [{"field": "resource", "operator": "matches", "value": "("}]},
     "policy.conditions[0].value", "condition 0: invalid regex pattern '('"),
    ({"actions": "*", "resources": "*", "effect": "allow", "conditions": [{"field": "resource", "operator": "exists", "value": "yes"}]},
     "policy.conditions[0].value", "condition 0: exists takes value: true or false"),
])
def test_bad_policies_are_load_errors_naming_the_field(body, field, text):
    with pytest.raises(wqnb.ConfigError) as e:
        parse_policy({"policy": body}, "s:p", "s", "f.yaml", "security.policy")
    assert e.value.entry == "s:p" and e.value.field == field and e.value.message.startswith(text)


# -- security.policy.expr ------------------------------------------------------------------------
ENV = {"actor": {"id": "service:worker", "meta": {"role": "admin", "level": 3, "tags": ["a", "b"]}},
       "action": "queue.publish.queue", "resource": "app.queue:results", "meta": {}}


@pytest.mark.parametrize("expression,expected", [
    ('actor.meta.role == "admin"', True),
    ("actor.meta.role == 'worker'", False),
    ('actor.meta.role != "worker" and actor.meta.level >= 3', True),
    ('actor.meta.level > 3 or resource == "app.queue:results"', True),
    ('not (actor.meta.level < 2)', True),
    ('not false == true', True),
    ('!true != false', False),
    ('actor.id not in ["x", "not"]', True),
    ('!(actor.meta.level <= 3) || action == "queue.publish.queue"', True),
    ('actor.meta.role in ["admin", "root"]', True),
    ('"b" in actor.meta.tags && "c" not in actor.meta.tags', True),
    ('"role" in actor.meta', True),
    ('actor.meta.missing == nil', True),
    ('actor.meta.level == 3.0 and -1 < 0', True),
    ('true', True),
    ('false or (actor.id == "service:worker" and (resource == "x" or true))', True),
    ('actor.meta.level == "3"', False),  # expr-lang: no conversions
])
def test_expr_subset_evaluates(expression, expected):
    assert compile_expression(expression)(ENV) is expected


@pytest.mark.parametrize("expression,text", [
    ("__import__('os').system('id')", "unknown name '__import__'"),
    ("actor.__class__", "field names may not start with '__'"),
    ("actor.id.__len__", "field names may not start with '__'"),
    ("'x'.upper()", "a string has no members"),
    ("actor.meta.role.lower()", "function calls are not supported"),
    ("len(actor.id) > 0", "unknown name 'len'"),
    ("open", "unknown name 'open'"),
    ("meta['x'] == 1", "indexing is not supported"),
    ("actor.meta.level + 1 > 2", "unexpected character '+'"),
    ("actor.name == 'x'", "actor has fields id and meta"),
    ("resource.x == 1", "resource is a string"),
    ("lambda: 1", "unexpected character ':' at position 7"),
    ("lambda x", "unknown name 'lambda'"),
    ("actor.meta.role == ", "unexpected end of expression at position 20"),
    ("(" * 40 + "true" + ")" * 40, "nested deeper than 32"),
    ("", "expression cannot be empty"),
    ("a" * 5000, "longer than 4096"),
])
def test_expr_refuses_what_is_outside_the_subset(expression, text):
    with pytest.raises(ExprError) as e:
        compile_expression(expression)
    assert text in str(e.value)


def test_expr_refusal_is_a_load_error_naming_entry_and_field():
    text = ("namespace: s\nentries:\n  - name: p\n    kind: security.policy.expr\n"
            "    policy: {actions: '*', resources: '*', effect: allow, expression: \"__import__('os')\"}\n")
    with pytest.raises(wqnb.ConfigError, match=r"^<yaml 0>: entry s:p: field 'policy.expression': "
                                              r"unknown name '__import__' at position 1"):
        registry(text)


def test_expr_errors_at_run_time_mean_the_policy_does_not_apply():
    for bad in ('actor.meta.role > 3', 'actor.meta.role and true', 'actor.meta.role',
                'not actor.meta.role == "admin"',  # (not role) == "admin", as expr-lang reads it
                'actor.meta.role.x == 1', '"a" in actor.id'):
        fn = compile_expression(bad)
        with pytest.raises(EvalError):
            fn(ENV)
    deny = policy("e", kind="security.policy.expr", actions="*", resources="*", effect="deny",
                  expression="actor.meta.role > 3")
    allow = policy("a", actions="*", resources="*", effect="allow")
    admin = Actor("service:worker", {"role": "admin"})
    assert check(admin, Scope([deny, allow]), "queue.publish", "", strict=False) is True


def test_expr_policy_in_a_scope():
    only_admins = policy("e", kind="security.policy.expr", actions="queue.publish*", resources="*",
                         effect="allow", expression='actor.meta.role == "admin"')
    scope = Scope([only_admins])
    assert allowed(scope, "app.queue:x", actor=Actor("a", {"role": "admin"}))
    assert not allowed(scope, "app.queue:x", actor=Actor("w", {"role": "worker"}))


# -- the CLI switch ------------------------------------------------------------------------------
CLI_HANDLER = """\
import wqnb

async def forward(body, message):
    await message.publish("app.queue:results", body)
"""


@pytest.mark.parametrize("strict", [False, True])
def test_cli_run_strict_security(tmp_path, monkeypatch, capsys, strict):
    import pandas as pd

    from wqnb import cli

    (tmp_path / "app.yaml").write_text(app_yaml())
    (tmp_path / "sechandlers.py").write_text(CLI_HANDLER)
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = ["run", str(tmp_path / "app.yaml"), "--virtual", "--publish", "app.queue:tasks", '{"i": 1}',
            "--handler", "app.queue:h=sechandlers:forward", "-o", str(tmp_path / "tl.csv")]
    assert cli.main(argv + (["--strict-security"] if strict else [])) == 0, capsys.readouterr().err
    df = pd.read_csv(tmp_path / "tl.csv")
    published = df[(df.event == "publish") & (df.queue == "app.queue:results")]
    nacks = df[df.event == "nack"]
    if strict:
        assert len(published) == 0 and list(nacks.error) == ["queue publishing not allowed"]
    else:
        assert len(published) == 1 and len(nacks) == 0


def test_worker_strict_security(tmp_path, monkeypatch):
    from wqnb.worker import WorkerOptions, run_worker

    (tmp_path / "app.yaml").write_text(app_yaml())
    (tmp_path / "sechandlers.py").write_text(CLI_HANDLER)
    monkeypatch.syspath_prepend(str(tmp_path))

    async def main() -> Any:
        import asyncio

        stop_ = asyncio.Event()

        async def started(rt: wqnb.Runtime, _line: str) -> None:
            await rt.publish("app.queue:tasks", {"i": 1})
            await rt.drain(timeout=10)
            stop_.set()

        opts = WorkerOptions(app=[tmp_path / "app.yaml"], handlers=["app.queue:h=sechandlers:forward"],
                             strict_security=True)
        return await run_worker(opts, stop=stop_, started=started, signals=False)

    result = wqnb.run_virtual(main())
    df = result.timeline.df
    assert list(df[df.event == "nack"].error) == ["queue publishing not allowed"]


# -- docs/security.md ---------------------------------------------------------------------------
def test_the_docs_example_runs_as_written():
    import re
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "security.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", doc, re.DOTALL)
    security_yaml, app = blocks[0], blocks[1]
    expr_entry = blocks[2]
    printed: list[str] = []

    async def handler(body: str, message: wqnb.Delivery) -> None:
        await message.publish("app.queue:results", body)
        try:
            await message.publish("app.queue:audit", body)
        except wqnb.PermissionDenied as e:
            printed.append(str(e))

    rt = wqnb.Runtime(registry(security_yaml, app))
    rt.register_function("app.queue:handler", handler)
    wqnb.run_virtual(_run(rt, 2))
    assert printed == ["not allowed to publish to queue: app.queue:audit"] * 2
    assert len(_rows(rt, "publish", "app.queue:results")) == 2
    assert len(_rows(rt, "publish", "app.queue:audit")) == 0
    reg = registry("namespace: app.security\nentries:\n" + expr_entry)
    admins = reg.entries["app.security:admins"]
    assert admins.evaluate(Actor("a", {"role": "admin"}), "x", "y", {}) == "allow"
    assert admins.evaluate(Actor("w", {"role": "worker"}), "queue.publish", "", {}) == "allow"
    assert admins.evaluate(Actor("w", {"role": "worker"}), "queue.publish.queue", "q", {}) is None
