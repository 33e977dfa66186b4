"""Wippy's YAML entries, parsed once into typed specs, with every reference checked.

A file has ``namespace:`` and ``entries:`` (or a single entry with ``name``/``kind`` at the
top). Each entry's id is ``<namespace>:<name>``; ids split at the *first* colon, so
namespaces and names may contain dots. References (``driver``, ``queue``, ``func``,
``dead_letter.queue``, ``lifecycle.depends_on``) may be fully qualified or bare; a bare
name gets the entry's own namespace. (Wippy's queue handlers do not add it and then fail
at run time; its supervisor does add it. wqnb always does, and says so in the docs.)

Errors are :class:`~wqnb.errors.ConfigError` naming the file, the entry and the field,
with Wippy's wording where Wippy has one (``concurrency 1001 exceeds maximum 1000``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .durations import parse_duration
from .errors import ConfigError, CycleError
from .handlers.base import FunctionSpec
from .security import (
    POLICY_KINDS,
    Policy,
    SecuritySpec,
    parse_policy,
    parse_security,
    validate_security,
)
from .yamlload import load_yaml

__all__ = [
    "DRIVER_KINDS",
    "ConfigEntry",
    "ConsumerEntry",
    "DriverEntry",
    "Lifecycle",
    "QueueEntry",
    "Registry",
    "split_id",
]

log = logging.getLogger("wqnb.registry")

CONCURRENCY_DEFAULT, CONCURRENCY_MAX = 1, 1000
PREFETCH_DEFAULT, PREFETCH_MAX = 10, 10000
MAX_LENGTH_DEFAULT = 1000
MAX_ATTEMPTS_DEFAULT = 3
STOP_TIMEOUT_DEFAULT = 10.0

DRIVER_KINDS = ("queue.driver.memory", "queue.driver.redis", "queue.driver.amqp", "queue.driver.sqs")
FUNCTION_KINDS = ("function.lua", "function.python")
#: Shared settings that a driver names in its ``config:`` field (Wippy's ``config.aws``).
CONFIG_KINDS = ("config.aws",)
KINDS = (*DRIVER_KINDS, "queue.queue", "queue.consumer", *FUNCTION_KINDS, *POLICY_KINDS, *CONFIG_KINDS)


def split_id(entry_id: str) -> tuple[str, str]:
    """``"app.queue:tasks"`` → ``("app.queue", "tasks")``; no colon → ``("", id)``."""
    ns, sep, name = entry_id.partition(":")
    return (ns, name) if sep else ("", entry_id)


@dataclass(frozen=True)
class Lifecycle:
    auto_start: bool = False
    depends_on: tuple[str, ...] = ()
    stop_timeout: float = STOP_TIMEOUT_DEFAULT
    #: ``lifecycle.security`` (actor, groups, policies): checked on a consumer's publishes.
    security: SecuritySpec | None = None


@dataclass(frozen=True)
class DriverEntry:
    id: str
    kind: str
    options: dict[str, Any]
    lifecycle: Lifecycle
    file: str


@dataclass(frozen=True)
class QueueEntry:
    """``max_length`` is ``None`` (no cap) on a broker queue whose entry sets none: the
    memory driver's default of 1000 is filled in by :meth:`Registry.check` for memory only.
    ``queue_name`` is the broker's name ("" = the entry's name part, as Wippy)."""

    id: str
    driver: str
    max_length: int | None
    dead_letter: str | None
    max_attempts: int | None
    options: dict[str, Any]
    file: str
    queue_name: str = ""
    driver_options: dict[str, Any] = field(default_factory=dict)

    @property
    def broker_name(self) -> str:
        return self.queue_name or split_id(self.id)[1]


@dataclass(frozen=True)
class ConsumerEntry:
    id: str
    queue: str
    func: str
    concurrency: int = CONCURRENCY_DEFAULT
    prefetch: int = PREFETCH_DEFAULT
    requeue_delay: float = 0.0
    timeout: float | None = None
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    file: str = "<code>"
    auto_ack: bool = False
    driver_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ConfigEntry:
    """Settings shared by drivers (``config.aws``: region and credential variables).

    A driver refers to one by id in its ``config:`` field; :meth:`Registry.check`
    resolves the reference and hands the driver the entry's fields (with ``id``)."""

    id: str
    kind: str
    options: dict[str, Any]
    file: str


Entry = DriverEntry | QueueEntry | ConsumerEntry | FunctionSpec | Policy | ConfigEntry


class _EntryReader:
    """Reads one raw entry mapping; every error it raises names file, entry and field."""

    def __init__(self, raw: dict[str, Any], entry_id: str, namespace: str, file: str) -> None:
        self.raw = raw
        self.id = entry_id
        self.ns = namespace
        self.file = file

    def error(self, message: str, field_name: str | None = None) -> ConfigError:
        if len(message) > 600:  # it quotes a value from the file: keep the text readable
            message = f"{message[:400]}... ({len(message):,} characters)"
        return ConfigError(message, file=self.file, entry=self.id, field=field_name)

    def ref(self, key: str, required_text: str, raw: Any = None) -> str:
        value = self.raw.get(key) if raw is None else raw
        if value is None or (isinstance(value, str) and not split_id(value)[1].strip()):
            raise self.error(required_text, key)
        if not isinstance(value, str):
            raise self.error(f"expected a registry id like 'app:name', got {value!r}", key)
        return qualify(value, self.ns)

    def integer(self, key: str, default: int, maximum: int | None, raw: Any = None) -> int:
        value = self.raw.get(key) if raw is None else raw
        if value is None:
            return default
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or value != int(value)):
            raise self.error(f"{key} must be an integer, got {value!r}", key)
        value = int(value)
        if value <= 0:
            return default  # Wippy: 0 or less takes the default
        if maximum is not None and value > maximum:
            raise self.error(f"{key} {value} exceeds maximum {maximum}", key)
        return value

    def duration(self, key: str, value: Any, default: float | None) -> float | None:
        if value is None:
            return default
        try:
            return parse_duration(value, what=key)
        except ValueError as e:
            raise self.error(str(e), key) from None

    def mapping(self, key: str, value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(f"expected a mapping, got {type(value).__name__}", key)
        return value

    def lifecycle(self) -> Lifecycle:
        lc = self.mapping("lifecycle", self.raw.get("lifecycle"))
        deps = []
        for key in ("depends_on", "requires"):
            value = lc.get(key) or []
            if isinstance(value, str):
                value = [value]  # one id written without the list
            if not isinstance(value, list) or not all(isinstance(d, str) for d in value):
                raise self.error(f"{key} must be a list of registry ids, got {value!r}", f"lifecycle.{key}")
            deps += value
        auto = lc.get("auto_start", False)
        if not isinstance(auto, bool):
            raise self.error(f"auto_start must be true or false, got {auto!r}", "lifecycle.auto_start")
        return Lifecycle(
            auto_start=auto,
            depends_on=tuple(qualify(d, self.ns) for d in deps),
            stop_timeout=self.duration(
                "lifecycle.stop_timeout", lc.get("stop_timeout"), STOP_TIMEOUT_DEFAULT
            )
            or 0.0,
            security=parse_security(lc.get("security"), self.id, self.ns, self.file),
        )


#: Keys of a driver entry that are not driver options.
_DRIVER_RESERVED = frozenset({"name", "kind", "lifecycle", "meta", "options"})

#: Per-driver-kind validators ("module:function"), imported by :meth:`Registry.check` only
#: when an app uses that kind. Each is called as ``fn(entry, driver)`` for the driver
#: entry itself and for every queue and consumer on it, and raises ConfigError.
ENTRY_VALIDATORS: dict[str, str] = {
    "queue.driver.amqp": "wqnb.drivers.amqp_config:validate_amqp_entry",
    "queue.driver.redis": "wqnb.drivers.redis_config:validate_redis_entry",
    "queue.driver.sqs": "wqnb.drivers.sqs_config:validate_sqs_entry",
}


def qualify(ref: str, namespace: str) -> str:
    """A bare name gets the referring entry's namespace."""
    return ref if ":" in ref else f"{namespace}:{ref}"


def _parse_entry(r: _EntryReader, kind: str, base_dir: Path) -> Entry:
    raw = r.raw
    if kind in DRIVER_KINDS:
        # Wippy writes broker fields (url, vhost, tls, ...) at the entry's top level; wqnb
        # also accepts them under options:. The top level wins where both are given.
        top = {k: v for k, v in raw.items() if k not in _DRIVER_RESERVED}
        return DriverEntry(r.id, kind, {**r.mapping("options", raw.get("options")), **top}, r.lifecycle(), r.file)
    if kind == "queue.queue":
        driver = r.ref("driver", "driver ID is required")
        options = r.mapping("options", raw.get("options"))
        driver_options = r.mapping("driver_options", raw.get("driver_options"))
        memory_opts = r.mapping("driver_options.memory", driver_options.get("memory"))
        raw_len = options.get("max_length", memory_opts.get("max_length"))
        key = "options.max_length" if "max_length" in options else "driver_options.memory.max_length"
        # None until check() knows the driver: memory then takes its default of 1000.
        max_length = r.integer(key, MAX_LENGTH_DEFAULT, None, raw=raw_len) if raw_len is not None else None
        queue_name = raw.get("queue_name") or ""
        if not isinstance(queue_name, str):
            raise r.error(f"queue_name must be a string, got {queue_name!r}", "queue_name")
        dl = r.mapping("dead_letter", raw.get("dead_letter"))
        dead_letter = max_attempts = None
        if dl:
            dead_letter = r.ref("dead_letter.queue", "dead_letter.queue is required", raw=dl.get("queue") or "")
            max_attempts = r.integer("dead_letter.max_attempts", MAX_ATTEMPTS_DEFAULT, None, raw=dl.get("max_attempts"))
            if dead_letter == r.id:
                raise r.error("a queue cannot dead-letter into itself", "dead_letter.queue")
        return QueueEntry(r.id, driver, max_length, dead_letter, max_attempts, options, r.file,
                          queue_name.strip(), driver_options)
    if kind == "queue.consumer":
        queue = r.ref("queue", "queue ID is required")
        func = r.ref("func", "function ID is required")
        auto_ack = raw.get("auto_ack", False)
        if not isinstance(auto_ack, bool):
            raise r.error(f"auto_ack must be true or false, got {auto_ack!r}", "auto_ack")
        return ConsumerEntry(
            id=r.id,
            queue=queue,
            func=func,
            concurrency=r.integer("concurrency", CONCURRENCY_DEFAULT, CONCURRENCY_MAX),
            prefetch=r.integer("prefetch", PREFETCH_DEFAULT, PREFETCH_MAX),
            requeue_delay=r.duration("requeue_delay", raw.get("requeue_delay"), 0.0) or 0.0,
            timeout=r.duration("timeout", raw.get("timeout"), None) or None,
            lifecycle=r.lifecycle(),
            file=r.file,
            auto_ack=auto_ack,
            driver_options=r.mapping("driver_options", raw.get("driver_options")),
        )
    if kind in FUNCTION_KINDS:
        return _parse_function(r, kind, base_dir)
    if kind in POLICY_KINDS:
        return parse_policy(raw, r.id, r.ns, r.file, kind)
    if kind in CONFIG_KINDS:
        return ConfigEntry(r.id, kind, {k: v for k, v in raw.items() if k not in ("name", "kind", "meta")}, r.file)
    raise r.error(f"unknown entry kind {kind!r} (wqnb knows: {', '.join(KINDS)})", "kind")


def _parse_function(r: _EntryReader, kind: str, base_dir: Path) -> FunctionSpec:
    source = r.raw.get("source")
    if not isinstance(source, str) or not source.strip():
        raise r.error("source is required (file://name.lua, inline code, or module:attr)", "source")
    source_file = None
    if kind == "function.lua" and source.startswith("file://"):
        source_file = (base_dir / source[len("file://"):]).resolve()
        try:
            source = source_file.read_text(encoding="utf-8")
        except OSError as e:
            raise r.error(f"cannot read {source_file}: {e.strerror or e}", "source") from None
    modules = r.raw.get("modules") or []
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise r.error("modules must be a list of module names", "modules")
    method = r.raw.get("method")
    if method is not None and not isinstance(method, str):
        raise r.error(f"method must be a string, got {method!r}", "method")
    options = {k: v for k, v in r.raw.items() if k not in ("name", "kind", "source", "method", "modules", "meta")}
    offload = options.get("offload")
    if offload is not None and not isinstance(offload, bool):
        raise r.error(f"offload must be true or false, got {offload!r}", "offload")
    return FunctionSpec(
        id=r.id,
        kind=kind,
        source=source,
        source_file=source_file,
        yaml_file=None if r.file.startswith("<") else Path(r.file),
        method=method,
        modules=tuple(modules),
        options=options,
    )


class Registry:
    """Every entry of an app, by id, in load order; :meth:`check` validates references."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        #: A file's top-level ``security: {strict_mode: true}`` (Wippy's boot option):
        #: handlers without an actor and a scope may not publish. Any file may turn it on.
        self.strict_security = False

    # -- loading ---------------------------------------------------------------------
    def load(self, paths: str | Path | Iterable[str | Path]) -> Registry:
        if isinstance(paths, (str, Path)):
            paths = [paths]
        for p in paths:
            p = Path(p)
            if p.is_dir():
                files = sorted(f for f in p.rglob("*") if f.suffix in (".yaml", ".yml", ".json"))
                if not files:
                    raise ConfigError(f"no .yaml, .yml or .json files in folder {p}")
                for f in files:
                    self._load_file(f, skip_without_namespace=True)
            elif p.is_file():
                self._load_file(p, skip_without_namespace=False)
            else:
                raise ConfigError(f"no such file or folder: {p}")
        return self

    def _load_file(self, path: Path, *, skip_without_namespace: bool) -> None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read: {e.strerror or e}", file=str(path)) from None
        self.load_string(text, base_dir=path.parent, name=str(path), skip_without_namespace=skip_without_namespace)

    def load_string(
        self,
        text: str,
        *,
        base_dir: str | Path = ".",
        name: str = "<string>",
        skip_without_namespace: bool = False,
    ) -> Registry:
        try:
            doc = load_yaml(text, name=name)  # (alias bombs and deep nesting refused)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(e, "problem", None) or str(e)
            raise ConfigError(f"invalid YAML{where}: {problem}", file=name) from None
        if not isinstance(doc, dict):
            raise ConfigError("expected a mapping with 'namespace' and 'entries'", file=name)
        ns = doc.get("namespace")
        if not isinstance(ns, str) or not ns.strip():
            if skip_without_namespace:
                log.warning("%s: no 'namespace', file skipped (as Wippy does)", name)
                return self
            raise ConfigError("namespace is required", file=name, field="namespace")
        if "entries" in doc:
            items = doc["entries"]
            if not isinstance(items, list):
                raise ConfigError("entries must be a list", file=name, field="entries")
            self._read_security_settings(doc.get("security"), name)
        elif "name" in doc and "kind" in doc:
            items = [{k: v for k, v in doc.items() if k not in ("namespace", "version")}]
        else:
            raise ConfigError(
                "entry[0].entries: either entries array or single entry (name/kind) must be provided",
                file=name,
            )
        for i, raw in enumerate(items):
            self._add(raw, i, ns.strip(), name, Path(base_dir))
        return self

    def _read_security_settings(self, raw: Any, file: str) -> None:
        if raw is None:
            return
        strict = raw.get("strict_mode", False) if isinstance(raw, dict) else None
        if not isinstance(strict, bool) or set(raw) - {"strict_mode"}:
            raise ConfigError(f"expected security: {{strict_mode: true|false}}, got {raw!r}", file=file,
                              field="security")
        self.strict_security = self.strict_security or strict

    def _add(self, raw: Any, i: int, ns: str, file: str, base_dir: Path) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(f"entry[{i}]: expected a mapping, got {type(raw).__name__}", file=file)
        name, kind = raw.get("name"), raw.get("kind")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"entry[{i}].name: name is required and must be a non-empty string", file=file)
        if not isinstance(kind, str) or not kind.strip():
            raise ConfigError(f"entry[{i}].kind: kind is required and must be a non-empty string", file=file)
        if "data" in raw and isinstance(raw["data"], dict):
            raw = {**raw["data"], "name": name, "kind": kind, "lifecycle": raw.get("lifecycle", raw["data"].get("lifecycle"))}
        entry_id = f"{ns}:{name}"
        if entry_id in self.entries:
            first = self.file_of(entry_id) or "?"
            raise ConfigError(f"entry defined twice (first in {first})", file=file, entry=entry_id)
        reader = _EntryReader(raw, entry_id, ns, file)
        self.entries[entry_id] = _parse_entry(reader, kind.strip(), base_dir)

    # -- views -------------------------------------------------------------------------
    def of_type(self, cls: type) -> Iterator[Any]:
        return (e for e in self.entries.values() if isinstance(e, cls))

    @property
    def drivers(self) -> list[DriverEntry]:
        return list(self.of_type(DriverEntry))

    @property
    def queues(self) -> list[QueueEntry]:
        return list(self.of_type(QueueEntry))

    @property
    def consumers(self) -> list[ConsumerEntry]:
        return list(self.of_type(ConsumerEntry))

    @property
    def functions(self) -> list[FunctionSpec]:
        return list(self.of_type(FunctionSpec))

    def file_of(self, entry_id: str) -> str | None:
        e = self.entries.get(entry_id)
        return getattr(e, "file", None)

    # -- validation --------------------------------------------------------------------
    def check(self) -> None:
        """Every reference resolves to an entry of the right kind; no dependency cycle."""
        for q in self.queues:
            self._expect(q.id, q.file, "driver", q.driver, DriverEntry, "driver not found")
            if q.dead_letter:
                self._expect(q.id, q.file, "dead_letter.queue", q.dead_letter, QueueEntry, "queue not found")
        self._fill_queue_defaults()
        for c in self.consumers:
            self._expect(c.id, c.file, "queue", c.queue, QueueEntry, "queue not found")
            target = self.entries.get(c.func)
            if target is not None and not isinstance(target, FunctionSpec):
                raise ConfigError(
                    f"{c.func} is a {_kind(target)}, not a function", file=c.file, entry=c.id, field="func"
                )
        for e in self.entries.values():
            lc = getattr(e, "lifecycle", None)
            for dep in lc.depends_on if lc else ():
                if dep not in self.entries:
                    raise ConfigError(
                        f"depends on {dep}, which is not defined", file=e.file, entry=e.id, field="lifecycle.depends_on"
                    )
        validate_security(self.entries)
        self._resolve_configs()
        self._run_validators()
        self.start_order()

    def _fill_queue_defaults(self) -> None:
        """Memory queues without ``max_length`` get 1000; two queues naming one broker
        queue on one (non-memory) driver are an error naming both."""
        seen: dict[tuple[str, str], QueueEntry] = {}
        for q in self.queues:
            driver = self.entries[q.driver]
            is_memory = getattr(driver, "kind", "") == "queue.driver.memory"
            if q.max_length is None and is_memory:
                q = self.entries[q.id] = replace(q, max_length=MAX_LENGTH_DEFAULT)
            if is_memory:
                continue
            key = (q.driver, q.broker_name)
            other = seen.setdefault(key, q)
            if other is not q:
                raise ConfigError(
                    f"queues {other.id} and {q.id} both map to broker queue {q.broker_name!r} on driver {q.driver}",
                    file=q.file, entry=q.id, field="queue_name",
                )

    def _resolve_configs(self) -> None:
        """A driver's ``config: <id>`` names a ``config.*`` entry (a bare name gets the
        driver's namespace); the driver gets that entry's fields, with its ``id``."""
        for d in self.drivers:
            ref = d.options.get("config")
            if not isinstance(ref, str):
                continue
            target_id = qualify(ref, split_id(d.id)[0])
            target = self.entries.get(target_id)
            if target is None:
                raise ConfigError(f"config entry not found: {target_id}", file=d.file, entry=d.id, field="config")
            if not isinstance(target, ConfigEntry):
                raise ConfigError(f"{target_id} is a {_kind(target)}, not a config.aws entry", file=d.file,
                                  entry=d.id, field="config")
            resolved = {**target.options, "id": target.id, "file": target.file, "kind": target.kind}
            self.entries[d.id] = replace(d, options={**d.options, "config": resolved})

    def _run_validators(self) -> None:
        """The per-kind validators of :data:`ENTRY_VALIDATORS` (imported on demand)."""
        import importlib

        cache: dict[str, Any] = {}

        def validator(driver_id: str) -> tuple[Any, DriverEntry] | None:
            d = self.entries.get(driver_id)
            target = ENTRY_VALIDATORS.get(getattr(d, "kind", ""))
            if target is None or not isinstance(d, DriverEntry):
                return None
            if target not in cache:
                module, _, attr = target.partition(":")
                cache[target] = getattr(importlib.import_module(module), attr)
            return cache[target], d

        for e in self.entries.values():
            if isinstance(e, DriverEntry):
                found = validator(e.id)
            elif isinstance(e, QueueEntry):
                found = validator(e.driver)
            elif isinstance(e, ConsumerEntry):
                q = self.entries.get(e.queue)
                found = validator(q.driver) if isinstance(q, QueueEntry) else None
            else:
                found = None
            if found is not None:
                fn, d = found
                fn(e, d)

    def _expect(self, entry_id: str, file: str, field_name: str, ref: str, cls: type, text: str) -> None:
        target = self.entries.get(ref)
        if target is None:
            raise ConfigError(f"{text}: {ref}", file=file, entry=entry_id, field=field_name)
        if not isinstance(target, cls):
            raise ConfigError(f"{ref} is a {_kind(target)}", file=file, entry=entry_id, field=field_name)

    def dependencies(self, entry_id: str) -> list[str]:
        """Explicit ``depends_on`` plus the references an entry makes (Wippy's patterns)."""
        e = self.entries[entry_id]
        deps: list[str] = list(getattr(getattr(e, "lifecycle", None), "depends_on", ()))
        if isinstance(e, QueueEntry):
            deps.append(e.driver)
        elif isinstance(e, DriverEntry) and isinstance(e.options.get("config"), dict):
            deps.append(e.options["config"]["id"])
        elif isinstance(e, ConsumerEntry):
            deps += [e.queue, e.func]
        return [d for d in deps if d in self.entries]

    def start_order(self) -> list[str]:
        """All entries, dependencies first (depth-first topological sort); cycles raise."""
        order: list[str] = []
        state: dict[str, int] = {}  # 1 visiting, 2 done
        path: list[str] = []

        def visit(eid: str) -> None:
            s = state.get(eid)
            if s == 2:
                return
            if s == 1:
                cycle = path[path.index(eid):] + [eid]
                e = self.entries[eid]
                raise CycleError(
                    "dependency cycle: " + " -> ".join(cycle),
                    file=getattr(e, "file", None),
                    entry=eid,
                    field="lifecycle.depends_on",
                )
            state[eid] = 1
            path.append(eid)
            for dep in self.dependencies(eid):
                visit(dep)
            path.pop()
            state[eid] = 2
            order.append(eid)

        for eid in self.entries:
            visit(eid)
        return order


def _kind(e: Entry) -> str:
    return getattr(e, "kind", None) or {
        QueueEntry: "queue.queue",
        ConsumerEntry: "queue.consumer",
    }.get(type(e), type(e).__name__)
