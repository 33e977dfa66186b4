"""Lua handler performance (issue 3): ratios from one run, in one process.

    python benchmarks/bench_lua.py [--quick]

1. pipeline (memory driver, concurrency 4, prefetch 100, recording on), runs interleaved:
   a no-op Python handler, a no-op Lua handler (goal ≥ 0.6× Python), and the seed page's
   handler (json.decode + logger.info at the default level; goal ≥ 80,000 msg/s);
2. where json.decode's time goes: Python's json.loads, lupa's table_from, the Lua→Python
   call, against a decoder written in Lua;
3. engines: lupa.lua54 / lua55 / luajit21: a runner step, a plain loop, and whether the
   count hook stops a loop at all (it does not under LuaJIT once the loop is compiled).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import wqnb

APP = """
namespace: bench
entries:
  - {name: memory, kind: queue.driver.memory, lifecycle: {auto_start: true}}
  - {name: tasks, kind: queue.queue, driver: bench:memory, options: {max_length: 100}}
  - name: worker
    kind: queue.consumer
    queue: bench:tasks
    func: bench:handler
    concurrency: 4
    prefetch: 100
    lifecycle: {auto_start: true}
"""
LUA_ENTRY = """
  - name: handler
    kind: function.lua
    modules: [json, logger]
    source: |
%s
"""
NOOP_LUA = "return function(body) end"
SEED_LUA = """\
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

function process_task(data)
    return true
end

return handler"""
BODY = '{"id":"task-123","action":"process","data":{"n":1}}'


async def _noop(body: object) -> None:
    return None


async def _pipeline(kind: str, n: int) -> float:
    if kind == "python":
        rt = wqnb.Runtime.from_yaml_string(APP)
        rt.register_function("bench:handler", _noop)
    else:
        src = NOOP_LUA if kind == "lua no-op" else SEED_LUA
        rt = wqnb.Runtime.from_yaml_string(APP + LUA_ENTRY % "\n".join("      " + line for line in src.splitlines()))
    await rt.start()
    publish = rt.publish
    t0 = time.perf_counter()
    for _ in range(n):
        await publish("bench:tasks", BODY)
    await rt.drain()
    elapsed = time.perf_counter() - t0
    await rt.stop()
    acks = int((rt.timeline.df.event == "ack").sum())
    assert acks == n, (kind, acks)
    return n / elapsed


def pipeline(n: int, rounds: int) -> None:
    kinds = ["python", "lua no-op", "seed"]
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(rounds):
        for k in kinds:
            rates[k].append(asyncio.run(_pipeline(k, n)))
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratios = [lua / py for lua, py in zip(rates["lua no-op"], rates["python"], strict=True)]
    print(f"\n1. pipeline, memory driver, concurrency 4, prefetch 100, {n} messages, {rounds} interleaved rounds")
    for k in kinds:
        print(f"   {k:10s} median {med[k]:>9,.0f} msg/s   runs {', '.join(f'{r:,.0f}' for r in rates[k])}")
    r = statistics.median(ratios)
    print(f"   Lua no-op / Python no-op (median of per-round ratios): {r:.2f}x   goal >= 0.6x  {'OK' if r >= 0.6 else 'MISSED'}")
    s = med["seed"]
    print(f"   seed handler: {s:,.0f} msg/s   goal >= 80,000  {'OK' if s >= 80_000 else 'MISSED'}")


def _per_call(f, n: int) -> float:
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            f()
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    return best


LUA_DECODER = r"""
local byte, sub, find = string.byte, string.sub, string.find
local value
local function skip(s, i) local _, e = find(s, "^[ \n\r\t]*", i) return e + 1 end
local function str(s, i)
  local _, e, plain = find(s, '^"([^"\\]*)"', i)
  if not e then error("escapes not handled in this benchmark decoder") end
  return plain, e + 1
end
local function arr(s, i)
  local t, n = {}, 0
  i = skip(s, i + 1)
  if byte(s, i) == 93 then return t, i + 1 end
  while true do
    local v; v, i = value(s, i); n = n + 1; t[n] = v; i = skip(s, i)
    local c = byte(s, i)
    if c == 93 then return t, i + 1 end
    i = skip(s, i + 1)
  end
end
local function obj(s, i)
  local t = {}
  i = skip(s, i + 1)
  if byte(s, i) == 125 then return t, i + 1 end
  while true do
    local k, v; k, i = str(s, i); i = skip(s, i); v, i = value(s, skip(s, i + 1)); t[k] = v; i = skip(s, i)
    local c = byte(s, i)
    if c == 125 then return t, i + 1 end
    i = skip(s, i + 1)
  end
end
value = function(s, i)
  local c = byte(s, i)
  if c == 123 then return obj(s, i) elseif c == 91 then return arr(s, i)
  elseif c == 34 then return str(s, i)
  elseif c == 116 then return true, i + 4 elseif c == 102 then return false, i + 5
  elseif c == 110 then return nil, i + 4 end
  local a, b = find(s, "^-?%d+%.?%d*[eE]?[-+]?%d*", i)
  return tonumber(sub(s, a, b)), b + 1
end
return function(s) return (value(s, skip(s, 1))) end
"""


def json_costs(n: int) -> None:
    from lupa import lua54

    from wqnb.handlers.base import FunctionSpec, HandlerServices
    from wqnb.handlers.lua import LuaHandler

    payloads = {"seed body (52 B)": BODY,
                "order (105 B)": '{"id":12345,"kind":"order.created","amount":12.5,"currency":"EUR","tags":["a","b"],"ok":true}'}
    lua = lua54.LuaRuntime(register_eval=False, register_builtins=False)
    lua_decode = lua.execute(LUA_DECODER)
    call = lua.eval("function(f, s) local t = f(s) return 1 end")
    noop = lua.eval("function(s) return s end")
    svc = HandlerServices(publish=None, queue_info=None, now=time.time, sleep=asyncio.sleep)  # type: ignore[arg-type]
    h = LuaHandler(FunctionSpec("b:h", "function.lua", 'local json = require("json")\n'
                                "return function(s) return json.decode(s) end", modules=("json",)), svc)
    module_decode = h.lua.eval("function(json, s) local t = json.decode(s) return 1 end")
    json_mod = h._K.env.require("json")
    print("\n2. where json.decode's time goes (µs per call, best of 5)")
    for name, p in payloads.items():
        d = json.loads(p)
        loads = _per_call(lambda p=p: json.loads(p), n)
        table_from = _per_call(lambda d=d: lua.table_from(d, recursive=True), n)
        crossing = _per_call(lambda p=p: call(noop, p), n)
        lua_only = _per_call(lambda p=p: call(lua_decode, p), n)
        module = _per_call(lambda p=p: module_decode(json_mod, p), n)
        print(f"   {name}: json.loads {loads:.2f} + table_from {table_from:.2f} + Lua->Python call {crossing:.2f}"
              f"  | wqnb's json.decode {module:.2f}  | pure-Lua decoder {lua_only:.2f}")


def engines(n: int) -> None:
    print("\n3. engines (µs per runner step; s for 20M loop iterations; does a count hook stop a loop?)")
    for name in ("lua54", "lua55", "luajit21"):
        mod = importlib.import_module(f"lupa.{name}")
        lua = mod.LuaRuntime(register_eval=False, register_builtins=False)
        step, loop, hooked = lua.execute("""
            local function runner() while true do coroutine.yield(0) end end
            local co = coroutine.create(runner)
            local function step(a, b) return select(2, coroutine.resume(co, a, b)) end
            local function loop(n) local t0 = os.clock() local x = 0 for i = 1, n do x = x + i % 7 end return os.clock() - t0 end
            local function hooked(n)
              local ticks = 0
              local c = coroutine.create(function() local x = 0 for i = 1, n do x = x + i % 7 end return x end)
              debug.sethook(c, function() ticks = ticks + 1 if ticks > 100 then error("stopped", 0) end end, "", 1000)
              local ok, e = coroutine.resume(c)
              return not ok
            end
            return step, loop, hooked""")
        s = _per_call(lambda step=step: step(1, BODY), n)
        print(f"   {name:9s} step {s:.2f} µs   loop {loop(20_000_000):.3f} s   hook stops a loop: {hooked(5_000_000)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n, rounds, calls = (10_000, 3, 20_000) if args.quick else (50_000, 5, 100_000)
    pipeline(n, rounds)
    json_costs(calls)
    engines(calls)


if __name__ == "__main__":
    main()
