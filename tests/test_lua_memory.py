"""The Lua memory cap (issue 14 points 1-3): nothing a handler receives or asks the host
for can abort or freeze the process; a value the cap cannot hold is a nack naming it.

lupa converts Python values to Lua with unprotected API calls: a memory error in one
aborts the process (PANIC) outside a handler, and inside a host call it longjmps out of
lupa's callback wrapper without giving the GIL back, so the next call deadlocks at 0 %
CPU. Every probe therefore runs in a child process with a deadline: a regression fails
its test instead of killing (or freezing) the test run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

KIT = str(Path(__file__).parent)


def _child(script: str, timeout: float = 60.0) -> list[str]:
    """Run ``script`` (test_lua_kit's names imported) in a child; return its printed lines."""
    code = f"import sys\nsys.path.insert(0, {KIT!r})\nfrom test_lua_kit import *\n" + textwrap.dedent(script)
    try:
        r = subprocess.run([sys.executable, "-"], input=code, capture_output=True, text=True,
                           timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("the child hung (a deadlock in a host→Lua conversion?)")
    assert r.returncode == 0, f"the child died (rc {r.returncode}): {r.stderr[-2000:]}"
    return r.stdout.strip().splitlines()


# -- 1: the body ---------------------------------------------------------------------------------
def test_a_body_larger_than_the_cap_is_a_nack_naming_function_and_cap():
    out = _child("""
        h = handler("return function(body) return #body end", max_memory="1MB")
        print(run(h, "x" * 2_000_000))
        print(run(h, b"y" * 2_000_000))
        print(run(h, "small"))
    """)
    assert out[0].split(" (")[0] == out[1].split(" (")[0]
    assert out[0].startswith("body too large for the Lua memory cap: 2000000 bytes, and function "
                             "app.queue:task_handler has max_memory 1048576 bytes (")
    assert out[2] == "None"  # the next delivery runs as usual


def test_a_body_that_fits_the_cap_but_not_what_is_left_is_refused_too():
    out = _child("""
        h = handler("local keep\\nreturn function(body) if keep == nil then keep = body end end",
                    max_memory="2MB")
        print(run(h, "x" * 1_200_000))   # kept: 1.2 MB of the 2 MB now in use
        print(run(h, "z" * 1_200_000))   # fits the cap, not beside what is kept
        print(run(h, "small"))
    """)
    assert out[0] == "None"
    assert out[1].startswith("body too large for the Lua memory cap: 1200000 bytes")
    assert out[2] == "None"


def test_a_multibyte_body_is_measured_in_bytes():
    out = _child("""
        h = handler("return function(body) return #body end", max_memory="1MB")
        print(run(h, "é" * 600_000))  # 600k characters, 1.2 MB of UTF-8
    """)
    assert out[0].startswith("body too large for the Lua memory cap: 1200000 bytes")


def test_a_too_large_body_through_the_runtime_is_a_recorded_nack_and_the_runtime_goes_on(tmp_path):
    app = tmp_path / "app.yaml"
    app.write_text(textwrap.dedent("""\
        namespace: app
        entries:
          - {name: mem, kind: queue.driver.memory, lifecycle: {auto_start: true}}
          - {name: q, kind: queue.queue, driver: app:mem, dead_letter: {queue: app:dead, max_attempts: 1}}
          - {name: dead, kind: queue.queue, driver: app:mem}
          - name: h
            kind: function.lua
            max_memory: 1MB
            source: |
              return function(body) return #body end
          - {name: c, kind: queue.consumer, queue: app:q, func: app:h, lifecycle: {auto_start: true}}
    """))
    out = _child(f"""
        import asyncio, wqnb
        async def main():
            rt = wqnb.Runtime.from_yaml({str(app)!r})
            await rt.start()
            await rt.publish("app:q", "x" * 2_000_000)
            await rt.publish("app:q", "ok")
            await rt.drain(timeout=30)
            await rt.stop()
            df = rt.timeline.df
            for _, row in df[df.event.isin(["ack", "nack"])].iterrows():
                print(row.event, "|", row.error)
        asyncio.run(main())
    """)
    assert out[0].startswith("nack | body too large for the Lua memory cap: 2000000 bytes, and function app:h "
                             "has max_memory 1048576 bytes")
    assert out[1].startswith("ack |")


# -- 2: every host→Lua conversion ----------------------------------------------------------------------
def test_json_decode_of_a_table_over_the_cap_is_a_memory_error_and_the_handler_goes_on():
    """The issue's case: the seed handler, 300k numbers, a 4 MB cap (it deadlocked)."""
    body = json.dumps(list(range(300_000)))
    out = _child(f"""
        h = handler(seed_source(), max_memory="4MB")
        print(run(h, {body!r}))
        print(run(h, '{{"id": 1}}'))
    """)
    assert out[0].startswith("task_handler.lua:12: not enough memory (json.decode: the value needs at least")
    assert out[0].endswith("(the Lua runtime's max_memory is 4194304 bytes)")
    assert out[1] == "None"


def test_json_decode_that_the_estimate_lets_through_but_does_not_fit_is_dropped():
    """65,537 numbers take an array part of 131,072 slots: twice the estimate."""
    body = "[" + ",".join(["0"] * 65_537) + "]"
    out = _child(f"""
        h = handler("local json = require('json')\\nreturn function(b) local t = json.decode(b) end",
                    max_memory="1700KB")
        print(run(h, {body!r}))
        print(run(h, "[1, 2]"))
    """)
    assert out[0] == ("task_handler.lua:2: not enough memory (json.decode: the value did not fit) "
                      "(the Lua runtime's max_memory is 1740800 bytes)")
    assert out[1] == "None"


def test_json_decode_of_one_long_string_over_the_cap_is_a_memory_error():
    body = json.dumps("s" * 1_000_000)
    out = _child(f"""
        h = handler("local json = require('json')\\nreturn function(b) local s = json.decode(b) return #s end",
                    max_memory="2MB")
        print(run(h, {body!r}))
        print(run(h, {json.dumps("s" * 5000)!r}))  # a long string that fits comes through whole
        h2 = handler("local json = require('json')\\nreturn function(b) return nil, #json.decode(b) end")
        print(run(h2, {json.dumps("s" * 5000)!r}))
    """)
    assert out[0].startswith("task_handler.lua:2: not enough memory (json.decode: the value needs at least")
    assert out[1] == "None"
    assert out[2] == "5000"


def test_headers_over_the_cap_are_a_memory_error_and_the_handler_goes_on():
    """The issue's case: 100k headers under a 2 MB cap (it deadlocked)."""
    out = _child("""
        h = handler("local queue = require('queue')\\n"
                    "return function() local n = 0 for _ in pairs(queue.message():headers()) do n = n + 1 end "
                    "return nil, n end", max_memory="2MB")
        print(run(h, "{}", headers={f"h{i}": "v" * 10 for i in range(100_000)}))
        print(run(h, "{}", headers={"a": 1, "b": "x" * 5000}))
    """)
    assert out[0].startswith("task_handler.lua:2: not enough memory (queue.Message:headers(): the value needs")
    assert out[1] == "2"


def test_one_long_header_and_a_long_id_over_the_cap_are_memory_errors():
    out = _child("""
        src = ("local queue = require('queue')\\n"
               "return function(body) local m = queue.message()\\n"
               "  local v = body == 'id' and m:id() or m:header('big')\\n"
               "  return nil, #v end")
        h = handler(src, max_memory="2MB")
        print(run(h, "header", headers={"big": "x" * 3_000_000}))
        print(run(h, "id", msg_id="i" * 3_000_000))
        print(run(h, "header", headers={"big": "x" * 100_000}))  # long, but it fits
        print(run(h, "id", msg_id="i" * 100_000))
    """)
    assert out[0].startswith("task_handler.lua:3: not enough memory (queue.Message:header(): the value needs")
    assert out[1].startswith("task_handler.lua:3: not enough memory (queue.Message:id(): the value needs")
    assert out[2:] == ["100000", "100000"]


# A handler that fills the cap to within a few bytes, then tries one host call. What it
# keeps is local to the delivery, so a delivery that fails leaves nothing behind.
FILL = """\
local json, logger, queue, time = require('json'), require('logger'), require('queue'), require('time')
local function grow(keep)  -- 4 KB strings, then 72-byte tables: the last fails a few bytes short
  local n = 0
  while true do n = n + 1 keep[n] = string.rep('k', 4096) .. n end
end
local function chain(keep)
  while true do keep.tail = {keep.tail} end
end
return function(body)
  local keep = {}
  pcall(grow, keep)
  pcall(chain, keep)
  local ok, a = pcall(PROBES[body])
  return nil, body .. ': ' .. tostring(ok) .. ' ' .. tostring(a):sub(1, 60)
end
"""

PROBES = {
    "now": "function() return time.now():unix() end",
    "clock": "function() return os.clock() end",
    "os_time": "function() return os.time() end",
    "info": "function() return queue.info('app.queue:tasks') end",
    "header": "function() return queue.message():header('timestamp') end",
    "headers": "function() return queue.message():headers() end",
    "id": "function() return queue.message():id() end",
    "decode": "function() return json.decode('[1, 2, 3]') end",
    "decode_string": "function() return json.decode('\"' .. string.rep('d', 2000) .. '\"') end",
    "bad_duration": "function() return time.parse_duration(string.rep('9', 300) .. 'x') end",
    "log": "function() logger.info('hello', {n = 1}) return 'logged' end",
    "format": "function() return time.now():format(time.RFC3339) end",
    "print": "function() print('printed') return 'printed' end",
    "sleep": "function() time.sleep(0) return 'slept' end",
    "publish": "function() return queue.publish('app.queue:tasks', 'b') end",
    "publish_fails": "function() return queue.publish('nowhere:' .. string.rep('q', 900), 'b') end",
}


@pytest.mark.parametrize("probe", sorted(PROBES))
def test_every_host_call_at_the_very_edge_of_the_cap_fails_in_lua_or_succeeds(probe):
    """With the cap full to the last bytes, each host call (and each resume after a wait)
    either works or raises Lua's memory error in the handler; the process lives on."""
    src = "local PROBES = {" + ", ".join(f"[{k!r}] = {v}" for k, v in PROBES.items()) + "}\n" + FILL
    out = _child(f"""
        h = handler({src!r}, max_memory="1MB")
        print(run(h, {probe!r}))
        print(run(h, {probe!r}))
        h2 = handler("return function() end", max_memory="1MB")
        print(run(h2, "after"))
    """)
    outcomes = [line for line in out if line != "printed"]
    assert len(outcomes) == 3, out
    for line in outcomes[:2]:
        assert line.startswith(f"{probe}: ") or "not enough memory" in line, line
    assert outcomes[2] == "None"


def test_a_handler_resumed_with_no_room_left_fails_with_the_memory_error():
    out = _child("""
        src = ("local time = require('time')\\n"
               "local function grow(keep) local n = 0 while true do n = n + 1 keep[n] = string.rep('k', 4096) .. n end end\\n"
               "local function chain(keep) while true do keep.tail = {keep.tail} end end\\n"
               "return function(body)\\n"
               "  local keep = {}\\n"
               "  if body == 'fill' then pcall(grow, keep) pcall(chain, keep) keep[1] = nil collectgarbage() end\\n"
               "  time.sleep(0)\\nend")
        h = handler(src, max_memory="1MB")
        print(run(h, "fill"))
        print(run(h, "no fill"))
    """)
    assert out == [("not enough memory (no room left to resume the handler) "
                    "(the Lua runtime's max_memory is 1048576 bytes)"), "None"]


# -- 3: a cap too small to hold the runtime ----------------------------------------------------------
@pytest.mark.parametrize("cap", [1, 100, "1KB", "10KB", "50KB"])
def test_a_tiny_cap_is_a_config_error_naming_entry_field_and_the_smallest_cap(cap):
    out = _child(f"""
        try:
            handler("return function() end", max_memory={cap!r})
        except Exception as e:
            print(type(e).__name__, "|", e)
    """)
    assert out[0].startswith("ConfigError | entry app.queue:task_handler: field 'max_memory': "
                             f"max_memory {cap!r} (")
    assert "is too small for this function's Lua runtime: the smallest cap that works is" in out[0]


def test_the_smallest_cap_the_error_names_works_and_one_below_it_does_not():
    out = _child("""
        src = "return function(body) return #body end"
        try:
            handler(src, max_memory=1)
        except Exception as e:
            smallest = int(str(e).split("smallest cap that works is ")[1].split()[0])
            print(smallest)
            print(run(handler(src, max_memory=smallest), "hello"))
            try:
                handler(src, max_memory=smallest - 1024)
            except Exception as e:
                print(type(e).__name__, "|", e)
    """)
    assert len(out) == 3, out
    assert out[1] == "None"
    assert out[2].startswith("ConfigError |") and out[2].endswith(f"the smallest cap that works is {out[0]} bytes "
                                                                  f"({int(out[0]) // 1024}KB)")


def test_a_top_level_that_outgrows_the_cap_is_a_config_error_not_an_abort():
    out = _child("""
        try:
            handler("local big = string.rep('x', 4 * 1024 * 1024)\\nreturn function() end", max_memory="1MB")
        except Exception as e:
            print(type(e).__name__, "|", e)
    """)
    assert out[0].startswith("ConfigError | entry app.queue:task_handler: field 'source': not enough memory")
    assert out[0].endswith("(the Lua runtime's max_memory is 1048576 bytes)")
