"""Lua handlers (``function.lua``) on lupa's Lua 5.4: load, sandbox, budget, and the bridge
between a Lua coroutine and asyncio.

How a delivery runs: each Lua runtime (one per consumer: the runtime builds a handler for
each consumer it starts, see docs/lua.md) keeps a pool of *runner*
coroutines. Python resumes a runner with the message body; the handler runs until it
returns (ack), returns ``nil, err`` (nack), raises (nack), or calls something that must
wait (``time.sleep``, ``queue.publish``, ``msg:ack()``). Waiting is a ``yield`` to this
module, which awaits the runtime's service and resumes the runner with the result, so
only that handler waits: the loop and the other workers keep running.

Why Lua 5.4 (``lupa.lua54``) rather than lupa's default 5.5 or LuaJIT: see docs/lua.md.
In short, LuaJIT's debug hooks do not fire inside compiled loops (no instruction budget)
and 5.5 rejects 5.1-style code that assigns to a loop variable; speed is within noise.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Coroutine
from typing import Any

import lupa.lua54 as engine

from ..durations import parse_duration
from ..errors import AlreadySettled, ConfigError, HandlerError, MessageReleased, QueueNotFound
from ..lua import MODULES, lua_source
from ..lua.host import SLACK, SMALL, Host, clip
from ..message import Delivery
from .base import FunctionSpec, Handler, HandlerServices

__all__ = [
    "DEFAULT_INSTRUCTION_LIMIT",
    "DEFAULT_MAX_MEMORY",
    "DEFAULT_TIME_LIMIT",
    "LuaError",
    "LuaHandler",
    "LuaHandlerError",
    "check_lua_function",
    "load_lua_function",
]

#: The engine's own error class (lupa's exception classes are per Lua version).
LuaError = engine.LuaError

#: Instructions one delivery may run (about 0.1 s of pure Lua here); option ``instruction_limit``.
DEFAULT_INSTRUCTION_LIMIT = 20_000_000
#: CPU seconds one delivery may spend in Lua (catches C-heavy work that instructions miss);
#: option ``time_limit``.
DEFAULT_TIME_LIMIT = 1.0
#: Bytes one function's Lua runtime may allocate; option ``max_memory``.
DEFAULT_MAX_MEMORY = 64 * 1024 * 1024
#: The budget hook runs every TICK instructions; the budget is counted in ticks.
TICK = 1000
#: Bytes kept free under the memory cap for what a host call hands back directly
#: (strings up to SMALL bytes, and lupa's own small allocations).
RESERVE = 2 * SLACK + SMALL

# Result codes of K.step (kept in sync with wqnb/lua/kernel.lua).
OK, FAIL, ERR, DEAD = 0, 1, 2, 3
OP_SLEEP, OP_PUBLISH, OP_ACK, OP_NACK = 4, 5, 6, 7


class LuaHandlerError(HandlerError):
    """A Lua handler raised an error (the text carries the file and line)."""


# -- options ---------------------------------------------------------------------------------
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_UNIT = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def _config_error(spec: FunctionSpec, message: str, field: str) -> ConfigError:
    return ConfigError(
        message, file=spec.file, entry=spec.id, field=field
    )


def _max_memory(spec: FunctionSpec) -> int:
    raw = spec.options.get("max_memory", DEFAULT_MAX_MEMORY)
    if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0:
        return raw
    m = _SIZE.match(str(raw)) if isinstance(raw, str) else None
    if m is None or float(m.group(1)) <= 0:
        raise _config_error(spec, f"max_memory must be a size like 67108864, '64MB' or '512KB', got {raw!r}", "max_memory")
    return int(float(m.group(1)) * _UNIT[(m.group(2) or "").lower()[:1]])


def _instruction_limit(spec: FunctionSpec) -> int:
    raw = spec.options.get("instruction_limit", DEFAULT_INSTRUCTION_LIMIT)
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 0:
        raise _config_error(
            spec, f"instruction_limit must be a whole number of instructions (0: no limit), got {raw!r}",
            "instruction_limit",
        )
    return raw


def _time_limit(spec: FunctionSpec) -> float:
    raw = spec.options.get("time_limit", DEFAULT_TIME_LIMIT)
    try:
        return parse_duration(raw, what="time_limit")
    except ValueError as e:
        raise _config_error(spec, f"{e} (0: no limit)", "time_limit") from None


def _check_modules(spec: FunctionSpec) -> None:
    unknown = [m for m in spec.modules if m not in MODULES]
    if unknown:
        raise _config_error(
            spec, f"unknown module {unknown[0]!r} (wqnb provides: {', '.join(MODULES)})", "modules"
        )


# -- the Lua runtime -------------------------------------------------------------------------
def _deny_attributes(obj: object, name: object, is_setting: bool) -> str:
    raise AttributeError(f"Lua code may not touch attributes of Python objects ({name!r})")


def _new_lua(max_memory: int | None) -> Any:
    """A bare runtime; ``max_memory=0`` counts allocations without a cap yet (the handler
    sets its cap once built: lupa's own set-up calls must not meet it)."""
    return engine.LuaRuntime(
        register_eval=False,
        register_builtins=False,
        unpack_returned_tuples=True,
        attribute_filter=_deny_attributes,
        overflow_handler=float,
        max_memory=max_memory,
    )


def check_lua_function(spec: FunctionSpec) -> None:
    """Compile-only check at load time: modules, options, syntax (``file.lua:LINE: ...``)."""
    _check_modules(spec)
    _max_memory(spec)
    _instruction_limit(spec)
    _time_limit(spec)
    lua = _new_lua(None)
    result = lua.globals().load(spec.source, "=" + spec.chunk_name, "t")
    if isinstance(result, tuple):
        raise _config_error(spec, f"syntax error: {result[1]}", "source")


def load_lua_function(spec: FunctionSpec, services: HandlerServices) -> Handler:
    """Build the runnable handler: a sandboxed runtime, its modules, the loaded chunk."""
    return LuaHandler(spec, services)


class LuaHandler:
    """One ``function.lua`` entry, ready to handle deliveries (``await handler(delivery)``)."""

    def __init__(self, spec: FunctionSpec, services: HandlerServices | None) -> None:
        _check_modules(spec)
        self.spec = spec
        self.max_memory = _max_memory(spec)
        self.instruction_limit = _instruction_limit(spec)
        self.time_limit = _time_limit(spec)
        self.services = services
        self._live: dict[int, Delivery] = {}
        self._token = 0
        self._idle: list[int] = []

        # Built without a cap (lupa's pushes are unprotected: a memory error in them
        # aborts the process), measured, then capped before the handler's own top level runs.
        lua = self.lua = _new_lua(0)
        self.host = Host(lua, engine.lua_type, spec, services, self._live)
        ticks = -(-self.instruction_limit // TICK)
        try:
            K = lua.execute(
                lua_source("kernel"),
                lua.table_from({**self.host.callables(), "publish_denied": self._check_publish}),
                ticks, TICK, self.time_limit,
                name="@wqnb/lua/kernel.lua", mode="t",
            )
            lua.execute(lua_source("errors"), K, name="@wqnb/lua/errors.lua", mode="t")
            lua.execute(lua_source("os"), K, name="@wqnb/lua/os.lua", mode="t")
            built = {"json": lua.execute(lua_source("json"), K, name="@wqnb/lua/json.lua", mode="t")}
            for name in spec.modules:
                module = built.get(name)
                if module is None:
                    module = lua.execute(lua_source(name), K, name=f"@wqnb/lua/{name}.lua", mode="t")
                K.define(name, module if name == "logger" else K.readonly(module, name))
            result = K.compile(spec.source, spec.chunk_name)
            if result is True:
                self._idle.append(K.new_runner())
                self._apply_cap(K)
                result = K.load_handler(None, spec.chunk_name, spec.method)
        except LuaError as e:  # a bug of ours
            raise _config_error(spec, f"cannot set up the Lua runtime: {e}", "source") from None
        if isinstance(result, tuple):
            message = self._explain(result[1])
            field = "method" if message.startswith("method '") else "source"
            raise _config_error(spec, message, field)
        self._K = K
        self._step = K.step
        self._resume = K.resume
        self._new_runner = K.new_runner
        self._drop = K.drop
        self._used = lua.get_memory_used
        self._threshold = self.host.log_threshold if "logger" in spec.modules else None
        if "queue" not in spec.modules:
            # Without the queue module the handler cannot reach its delivery: the consumer
            # may call body_fn(body) and make no Delivery (see handlers/base.py). It is
            # _run(0, body) (token 0: no delivery to look up), bound in C.
            self.body_fn = functools.partial(self._run, 0)

    def _apply_cap(self, K: Any) -> None:
        """Set the memory cap, or refuse one too small to hold the runtime as built
        (kernel, modules, the compiled handler, one runner) plus the RESERVE."""
        lua = self.lua
        lua.gccollect()
        smallest = -(-(lua.get_memory_used() + RESERVE) // 1024) * 1024
        if self.max_memory < smallest:
            raise _config_error(
                self.spec,
                f"max_memory {self.spec.options.get('max_memory')!r} ({self.max_memory} bytes) is too small for "
                f"this function's Lua runtime: the smallest cap that works is {smallest} bytes "
                f"({smallest // 1024}KB)",
                "max_memory",
            )
        lua.set_max_memory(self.max_memory)
        self.host.cap = self.max_memory
        K.set_memory_limit(lua.get_max_memory(total=True), RESERVE)

    def _room(self, nbytes: int) -> bool:
        """Whether ``nbytes`` more (a body, a result) fit under the cap with SLACK to
        spare: lupa pushes them outside Lua's error handling, so they must not meet it."""
        if self.max_memory - self._used() >= nbytes + SLACK:
            return True
        self.lua.gccollect()
        return self.max_memory - self._used() >= nbytes + SLACK

    def _too_large(self, body: str | bytes) -> LuaHandlerError | None:
        n = len(body)
        if type(body) is str:
            n = len(body.encode("utf-8", "surrogatepass"))
        if self._room(n):
            return None
        return LuaHandlerError(
            f"body too large for the Lua memory cap: {n} bytes, and function {self.spec.id} has "
            f"max_memory {self.max_memory} bytes ({self._used()} in use)"
        )

    def __repr__(self) -> str:
        return f"<LuaHandler {self.spec.id} ({engine.LUA_VERSION if hasattr(engine, 'LUA_VERSION') else 'Lua'})>"

    async def __call__(self, delivery: Delivery) -> None:
        pending = self.begin(delivery)
        if pending is not None:
            await pending

    def begin(self, delivery: Delivery) -> Coroutine[Any, Any, None] | None:
        """Run the handler until it first waits (sleep, publish, ack, nack) or ends.

        Returns None when it ended well (ack), raises when it failed (nack), or returns a
        coroutine that performs the waits and finishes. Most handlers never wait, so the
        consumer calls this instead of ``await handler(delivery)``: no coroutine for them."""
        self._token = token = self._token + 1
        self._live[token] = delivery
        try:
            pending = self._run(token, delivery.message.body)
        except BaseException:
            del self._live[token]
            raise
        if pending is None:
            del self._live[token]
        return pending

    def _run(self, token: int, body: str | bytes) -> Coroutine[Any, Any, None] | None:
        if self.max_memory - self._used() < 4 * len(body) + SLACK:  # (rare: then measure exactly)
            too_large = self._too_large(body)
            if too_large is not None:
                raise too_large
        idle = self._idle
        slot = idle.pop() if idle else self._new_runner()
        try:
            if self._threshold is None:
                r = self._step(slot, token, body)
            else:
                r = self._step(slot, token, body, self._threshold())
        except LuaError as e:  # could not even pass the body in (memory cap)
            self._drop(slot)
            raise LuaHandlerError(self._explain(str(e))) from None
        code = r[0]
        if code >= OP_SLEEP:
            return self._waits(slot, token, r)
        if code == OK:  # the common case, inline
            idle.append(slot)
            return None
        self._end(slot, r)
        return None

    async def _waits(self, slot: int, token: int, r: tuple[Any, ...]) -> None:
        try:
            code = r[0]
            while code >= OP_SLEEP:
                r = await self._op(slot, r, token)
                code = r[0]
        finally:
            self._live.pop(token, None)
        self._end(slot, r)

    def _end(self, slot: int, r: tuple[Any, ...]) -> None:
        """The handler returned (ack) or failed (raise: the consumer nacks)."""
        code = r[0]
        if code == OK:
            self._idle.append(slot)
            return
        if code == FAIL:
            self._idle.append(slot)
            raise HandlerError(r[1])
        if code == ERR:
            self._idle.append(slot)
        raise LuaHandlerError(self._explain(r[1]))

    def _explain(self, text: object) -> str:
        if not isinstance(text, str):
            return "Lua error (no message)"
        if "not enough memory" in text:
            return f"{text} (the Lua runtime's max_memory is {self.max_memory} bytes)"
        return text

    async def _op(self, slot: int, r: tuple[Any, ...], token: int = 0) -> tuple[Any, ...]:
        """Perform one wait the handler asked for; resume it with the outcome."""
        code = r[0]
        try:
            if code == OP_SLEEP:
                await self.services.sleep(r[1])
                result: tuple[Any, ...] = (True,)
            elif code == OP_PUBLISH:
                result = await self._publish(r[1], r[2], r[3], token)
            else:
                result = await self._settle(code, r[1], r[2] if len(r) > 2 else None)
        except BaseException:  # cancelled (stop timeout): this runner never resumes
            self._drop(slot)
            raise
        if not self._room(sum(len(x) for x in result if type(x) is str) * 4):
            self._drop(slot)  # (resuming would push the outcome past the cap)
            return (DEAD, "not enough memory (no room left to resume the handler)")
        try:
            return self._resume(slot, *result)
        except LuaError as e:
            self._drop(slot)
            return (DEAD, str(e))

    def _check_publish(self, token: int, queue_id: str | None) -> str | bool:
        """``queue.publish``'s security checks, called from Lua in Wippy's order (None: only
        the general one): False when allowed, else the refusal. Must not raise into Lua."""
        fn = getattr(self.services, "publish_denied", None)
        d = self._live.get(token)
        if fn is None or d is None:
            return False  # (unknown delivery: the check at the publish itself, in _publish, decides)
        try:
            return fn(d, queue_id) or False
        except Exception as e:  # noqa: BLE001 - must not raise into Lua
            return clip(f"security check failed: {e}", SMALL // 4)

    async def _publish(self, queue_id: str, body: Any, headers: Any, token: int = 0) -> tuple[Any, ...]:
        if self.services is None:
            return (None, "Invalid", "queue manager not found in context", None)
        denied_fn = getattr(self.services, "publish_denied", None)
        if denied_fn is not None:  # the consumer's lifecycle.security (wqnb.security), as Wippy
            denied = denied_fn(self._live.get(token), queue_id)
            if denied is not None:
                return (None, "Invalid", denied, None)
        h = None
        if headers is not None:
            try:
                h = {
                    k: (v if isinstance(v, (str, int, float, bool)) else None)
                    for k, v in headers.items()
                    if isinstance(k, str)
                }
            except UnicodeDecodeError:
                return (None, "Invalid", "message headers must be UTF-8 text", None)
        try:
            await self.services.publish(queue_id, body, h)
        except QueueNotFound:
            return (None, "Internal", "queue not found", "publish failed")
        except Exception as e:  # noqa: BLE001 - any broker failure becomes Lua's nil, err
            return (None, "Internal", clip(e, SMALL // 4), "publish failed")
        return (True,)

    async def _settle(self, code: int, token: int, reason: str | None) -> tuple[Any, ...]:
        d = self._live.get(token)
        if d is None:
            return (None, "Invalid", "queue.Message released", None)
        try:
            if code == OP_ACK:
                await d.ack()
            else:
                await d.nack(reason or "nacked by handler")
        except (AlreadySettled, MessageReleased) as e:
            return (None, "Invalid", clip(e, SMALL // 4), None)
        except Exception as e:  # noqa: BLE001 - any broker failure becomes Lua's nil, err
            return (None, "Internal", clip(e, SMALL // 4), "ack failed" if code == OP_ACK else "nack failed")
        return (True,)
