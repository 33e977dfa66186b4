"""Helpers for the Lua tests: the seed page's handler, fake services, fake deliveries.

(The name starts with ``test_lua_`` only to sit in the Lua tests' file set; the one test
here checks that the seed handler below is still a verbatim copy of the seed page's.)
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wqnb.errors import QueueNotFound
from wqnb.handlers.base import FunctionSpec, HandlerServices
from wqnb.handlers.lua import LuaHandler, load_lua_function
from wqnb.message import Delivery, Message

SPEC = Path(__file__).parent / "fixtures" / "seed-queue.es.md"  # the seed page, verbatim

# The seed page's handler, byte for byte (checked against the spec below).
SEED_HANDLER = """\
local json = require("json")
local logger = require("logger")

local function handler(body)
    local data = json.decode(body)

    logger.info("Procesando", {task_id = data.id})

    local result, err = process_task(data)
    if err then
        return nil, err  -- Nack: reencolar mensaje
    end

    return result  -- Ack: remover de cola
end

return handler
"""

# `process_task` is the seed's application code: a global the handler calls. Defined
# beside the handler, it fails tasks whose body says so.
PROCESS_TASK = """\
function process_task(data)
    if data.fail then
        return nil, "cannot process " .. tostring(data.id)
    end
    return {done = data.id}
end
"""


def seed_source() -> str:
    """The seed handler with ``process_task`` defined above it (before ``return handler``)."""
    return PROCESS_TASK + "\n" + SEED_HANDLER


@dataclass
class FakeServices:
    """HandlerServices with a recorded publish, fixed queues and a settable clock."""

    queues: dict[str, dict[str, Any]] = field(default_factory=lambda: {"app.queue:tasks": {"message_count": 2, "ready": 2}})
    published: list[tuple[str, Any, dict[str, Any] | None]] = field(default_factory=list)
    slept: list[float] = field(default_factory=list)
    clock: float = 1_767_225_600.25

    async def publish(self, queue_id: str, body: Any, headers: dict[str, Any] | None) -> str:
        if queue_id not in self.queues:
            raise QueueNotFound(f"queue not found: {queue_id}")
        self.published.append((queue_id, body, headers))
        return f"id-{len(self.published)}"

    def queue_info(self, queue_id: str) -> dict[str, Any]:
        if queue_id not in self.queues:
            raise QueueNotFound(f"queue not found: {queue_id}")
        return dict(self.queues[queue_id])

    def now(self) -> float:
        return self.clock

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await asyncio.sleep(0)

    def services(self) -> HandlerServices:
        return HandlerServices(publish=self.publish, queue_info=self.queue_info, now=self.now, sleep=self.sleep)


class FakeConsumer:
    """What a Delivery settles through: records ack / nack."""

    def __init__(self) -> None:
        self.settled: list[tuple[str, str, str | None]] = []

    async def _ack(self, d: Delivery) -> None:
        self.settled.append(("ack", d.message.id, None))

    async def _nack(self, d: Delivery, reason: str | None) -> None:
        self.settled.append(("nack", d.message.id, reason))


def delivery(body: str | bytes = "{}", headers: dict[str, Any] | None = None, msg_id: str = "m-1",
             consumer: FakeConsumer | None = None) -> Delivery:
    msg = Message(msg_id, 1, body, headers if headers is not None else {"timestamp": 1767225600})
    return Delivery(msg, "app.queue:tasks", "app.queue:c", 0, consumer or FakeConsumer())


def spec(source: str, *, modules: tuple[str, ...] = ("json", "logger", "queue", "time"),
         method: str | None = None, file: str | None = "task_handler.lua", **options: Any) -> FunctionSpec:
    return FunctionSpec(
        id="app.queue:task_handler", kind="function.lua", source=source,
        source_file=Path("/app") / file if file else None, method=method, modules=modules,
        options=options,
    )


def handler(source: str, services: FakeServices | None = None, **kw: Any) -> LuaHandler:
    h = load_lua_function(spec(source, **kw), (services or FakeServices()).services())
    assert isinstance(h, LuaHandler)
    return h


def run(h: LuaHandler, body: str | bytes = "{}", **kw: Any) -> Any:
    """Run one delivery to completion; return None (ack) or the exception (nack)."""
    async def go() -> Any:
        try:
            await h(delivery(body, **kw))
        except Exception as e:  # noqa: BLE001 - the test inspects it
            return e
        return None
    return asyncio.run(go())


PRELUDE = """\
local json = require("json")
local logger = require("logger")
local queue = require("queue")
local time = require("time")
"""


def lua_check(code: str, body: str | bytes = "{}", *, services: FakeServices | None = None,
              headers: dict[str, Any] | None = None, **kw: Any) -> None:
    """Run ``code`` as a handler body (the four modules in scope, ``body`` its argument);
    it must ack: Lua-side ``assert``s carry the checks, their text becomes the failure."""
    outcome = run(handler(PRELUDE + "return function(body)\n" + code + "\nend\n", services, **kw), body,
                  headers=headers)
    assert outcome is None, f"Lua check failed: {outcome}"


def lua_nack(code: str, body: str | bytes = "{}", *, services: FakeServices | None = None, **kw: Any) -> str:
    """Run ``code`` as a handler body; it must nack; return the nack text."""
    outcome = run(handler(PRELUDE + "return function(body)\n" + code + "\nend\n", services, **kw), body)
    assert outcome is not None, "expected a nack, got an ack"
    return str(outcome)


def test_seed_handler_is_a_verbatim_copy_of_the_seed_page():
    blocks = re.findall(r"```lua\n(.*?)```", SPEC.read_text(encoding="utf-8"), re.DOTALL)
    assert SEED_HANDLER in blocks
