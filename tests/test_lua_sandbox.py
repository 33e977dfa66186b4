"""The sandbox (DESIGN §3b, issue 3 §4): every escape tried, every one refused clearly.

What handler code can reach is enumerated, not guessed: one test walks everything
reachable from the handler's globals and compares it with an allow-list, so a new
function that could touch the filesystem or the host shows up as a failure."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_lua_kit import PRELUDE, FakeServices, handler, lua_check, lua_nack, run, spec

from wqnb.handlers.lua import DEFAULT_INSTRUCTION_LIMIT, _new_lua, load_lua_function

BUDGET = "instruction budget exceeded (1000000 instructions)"


def _in_child(call: str, timeout: float = 60.0) -> str:
    """Evaluate ``call`` (test_lua_kit's names in scope) in a child process and return
    what it printed: a handler that hangs the process fails the test instead of the run."""
    code = (f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            "from test_lua_kit import handler, run\n"
            f"try:\n    print({call})\nexcept Exception as e:\n    print(e)\n")
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                           check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung: nothing stopped {call}")
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


# -- what is (not) there ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["io", "debug", "package", "dofile", "loadfile", "python",
                                  "module", "setfenv", "getfenv", "newproxy", "warn"])
def test_dangerous_globals_are_absent(name):
    lua_check(f'assert({name} == nil, "{name} is reachable")')


# -- Wippy's safe os (issue 12 §2) -----------------------------------------------------------------
def test_os_is_wippys_safe_subset_and_nothing_else():
    lua_check('local names = {}\nfor k in pairs(os) do names[#names + 1] = k end\ntable.sort(names)\n'
              'assert(table.concat(names, " ") == "clock date difftime time", table.concat(names, " "))')


@pytest.mark.parametrize("name", ["exit", "execute", "getenv", "remove", "rename", "tmpname", "setlocale"])
def test_os_has_no_dangerous_function(name):
    lua_check(f'assert(os.{name} == nil, "os.{name} is reachable")\n'
              f'assert(load("return os.{name}")() == nil)')


def test_os_cannot_be_extended_or_reached_through_its_metatable():
    assert lua_nack("os.execute = function() end") == (
        "task_handler.lua:6: attempt to modify read-only table 'os'")
    lua_check("assert(getmetatable(os) == false)")


def test_os_follows_the_runtimes_clock():
    """FakeServices' clock is 2026-01-01T00:00:00.25Z; os.clock counts from the runtime's making."""
    services = FakeServices()
    lua_check('assert(os.time() == 1767225600, os.time())\n'
              'assert(math.type(os.time()) == "integer")\n'
              'assert(os.date("%Y-%m-%d %H:%M:%S") == "2026-01-01 00:00:00", os.date("%Y-%m-%d %H:%M:%S"))\n'
              'assert(os.date("!%H", 3600) == "01")\n'
              'local t = os.date("*t", 86400 * 365)\n'
              'assert(t.year == 1971 and t.month == 1 and t.day == 1 and t.hour == 0, t.year)\n'
              'assert(os.time({year = 2026, month = 1, day = 1, hour = 0}) == 1767225600)\n'
              'assert(os.time({year = 2025, month = 13, day = 1, hour = 0}) == 1767225600)\n'
              'assert(os.time({year = 2026, month = 1, day = 1}) == 1767225600 + 12 * 3600)\n'
              'assert(os.difftime(10, 4) == 6.0 and math.type(os.difftime(10)) == "float")\n'
              'assert(os.clock() == 0.0, os.clock())', services=services)
    h = handler(PRELUDE + "return function() return nil, string.format('%d %.2f', os.time(), os.clock()) end",
                services)
    services.clock += 90.5
    assert str(run(h)) == "1767225690 90.50"


def test_os_clock_reads_the_runtimes_timeline_clock_when_it_lends_one():
    services = FakeServices()
    lent = services.services()
    lent.clock = lambda: 42.25
    h = load_lua_function(spec(PRELUDE + "return function() return nil, tostring(os.clock()) end"), lent)
    assert str(run(h)) == "42.25"


def test_os_date_and_time_refuse_bad_arguments_as_lua_does():
    assert lua_nack("os.time({year = 2026})") == "task_handler.lua:6: field 'month' missing in date table"
    assert lua_nack("os.time({year = 2026, month = 1.5, day = 1})") == (
        "task_handler.lua:6: field 'month' is not an integer")
    assert "invalid conversion specifier" in lua_nack("os.date('%Ez')")


def test_string_dump_is_gone_from_the_library_and_from_string_methods():
    lua_check('assert(string.dump == nil)\nassert(("x").dump == nil)')


def test_the_string_metatable_is_hidden():
    lua_check('assert(getmetatable("") == false)')


def test_load_refuses_bytecode_whatever_mode_is_asked():
    text = lua_nack('local f, err = load("\\27LuaT\\0", "x", "b")\nerror(err, 0)')
    assert text == "attempt to load a binary chunk (mode is 't')"


def test_load_defaults_to_the_sandbox_not_the_real_globals():
    lua_check('assert(load("return io")() == nil)\nassert(load("return require")() == require)\n'
              'assert(load("return os")() == os and load("return os.execute")() == nil)')


def test_load_with_an_explicit_env_uses_it():
    lua_check('assert(load("return x", "c", "t", {x = 5})() == 5)')


def test_gc_finalisers_are_refused():
    text = lua_nack("setmetatable({}, {__gc = function() while true do end end})")
    assert text == ("task_handler.lua:6: __gc metamethods are not allowed in handlers "
                    "(finalisers run outside the instruction budget)")


def test_collectgarbage_is_limited_to_harmless_options():
    lua_check('assert(type(collectgarbage("count")) == "number")')
    assert lua_nack('collectgarbage("stop")') == "task_handler.lua:6: collectgarbage('stop') is not allowed in handlers"


def test_yield_from_the_handler_itself_is_an_error_not_a_protocol_break():
    assert lua_nack("coroutine.yield(1)") == "task_handler.lua:6: attempt to yield from outside a coroutine"


def test_the_handlers_own_coroutine_cannot_be_resumed_or_closed():
    text = lua_nack('local me = coroutine.running()\nlocal ok, e = coroutine.resume(me)\nerror(e, 0)')
    assert text == "cannot resume a handler's own coroutine"
    text = lua_nack("coroutine.close(coroutine.running())")
    assert text == "task_handler.lua:6: cannot close a handler's own coroutine"


# -- no Python object reachable --------------------------------------------------------------------
ALLOWED_FUNCTIONS = {
    *(f"_G.{n}" for n in ["assert", "collectgarbage", "error", "getmetatable", "ipairs", "load", "next",
                          "pairs", "pcall", "print", "rawequal", "rawget", "rawlen", "rawset", "require",
                          "select", "setmetatable", "tonumber", "tostring", "type", "unpack", "xpcall"]),
    *(f"coroutine.{n}" for n in ["close", "create", "isyieldable", "resume", "running", "status", "wrap", "yield"]),
    *(f"errors.{n}" for n in ["is", "new", "wrap"]),
    *(f"json.{n}" for n in ["decode", "encode"]),
    *(f"logger.{n}" for n in ["debug", "error", "info", "named", "warn", "with"]),
    *(f"queue.{n}" for n in ["info", "message", "publish"]),
    *(f"time.{n}" for n in ["now", "parse_duration", "sleep", "unix"]),
    *(f"os.{n}" for n in ["clock", "date", "difftime", "time"]),
}
WALK = """
local found, seen, fns = {}, {}, {}
local function walk(v, path)
  local t = type(v)
  if t == "userdata" then error("userdata reachable at " .. path, 0) end
  if t == "function" then found[#found + 1] = path; fns[path] = v end
  if t ~= "table" or seen[v] then return end
  seen[v] = true
  local mt = getmetatable(v)
  if type(mt) == "table" then walk(mt, path .. "<mt>") end
  for k, x in pairs(v) do walk(x, (path == "_G" and type(x) == "table" and k) or (path .. "." .. tostring(k))) end
end
walk(_G, "_G")
for _, m in ipairs({"json", "logger", "queue", "time"}) do walk(require(m), m) end
-- objects the modules hand out: their methods, by name (their metatables are hidden)
local objects = {
  msg = {queue.message(), {"id", "header", "headers", "ack", "nack"}},
  time_value = {time.now(), {"unix", "unix_nano", "sub", "add", "before", "after", "equal", "format", "format_rfc3339"}},
  duration = {time.parse_duration("1s"), {"hours", "minutes", "seconds", "milliseconds", "microseconds", "nanoseconds"}},
  error_value = {errors.new("x"), {"kind", "message", "retryable", "details", "context", "stack"}},
}
local methods = {}
for name, spec in pairs(objects) do
  for _, m in ipairs(spec[2]) do methods[#methods + 1] = {name .. ":" .. m, spec[1], spec[1][m]} end
end
"""


def _reachable_functions(prefix_filter: tuple[str, ...] = ()) -> set[str]:
    text = lua_nack(WALK + 'table.sort(found)\nreturn nil, table.concat(found, "\\n")')
    return set(text.splitlines())


def test_everything_reachable_from_the_handler_is_on_the_allow_list():
    found = _reachable_functions()
    lib = {f for f in found if f.split(".")[0] in ("string", "table", "math", "utf8")}
    assert found - lib == ALLOWED_FUNCTIONS
    # the pure-Lua libraries, minus what could escape
    assert "string.dump" not in lib and {"string.format", "table.concat", "math.floor", "utf8.char"} <= lib


def test_every_reachable_function_returns_and_raises_only_lua_values():
    """Call everything with a few argument shapes: no Python object (an exception from a
    failed call, a wrapped dict) may come back."""
    code = WALK + """
local bad = {}
local skip = {["_G.error"] = true, ["coroutine.yield"] = true, ["_G.print"] = true}
for _, path in ipairs(found) do
  if not skip[path] then
    local f = fns[path]
    for _, args in ipairs({{}, {"x"}, {{}}, {1, 2}, {"app.queue:tasks", "\\255"}}) do
      local r = table.pack(pcall(f, table.unpack(args)))
      for i = 1, r.n do
        if type(r[i]) == "userdata" then bad[#bad + 1] = path end
      end
    end
  end
end
for _, m in ipairs(methods) do
  for _, args in ipairs({{}, {"x"}, {{}}, {1}, {"\\255"}}) do
    local r = table.pack(pcall(m[3], m[2], table.unpack(args)))
    for i = 1, r.n do
      if type(r[i]) == "userdata" then bad[#bad + 1] = m[1] end
    end
  end
end
assert(#bad == 0, "userdata from: " .. table.concat(bad, ", "))
"""
    lua_check(code)


def test_python_attributes_are_refused_by_the_attribute_filter():
    """Belt and braces: even a Python callable handed to Lua exposes no attribute."""
    lua = _new_lua(None)
    probe = lua.eval("function(f) local ok, e = pcall(function() return f.__globals__ end) return ok, tostring(e) end")
    ok, err = probe(len)
    assert ok is False and "may not touch attributes of Python objects" in err
    setter = lua.eval("function(f) local ok, e = pcall(function() f.x = 1 end) return ok end")
    assert setter(len) is False


def test_no_python_bridge_in_the_runtime_at_all():
    lua = _new_lua(None)
    assert lua.eval("python.eval") is None and lua.eval("python.builtins") is None


# -- memory ---------------------------------------------------------------------------------------
def test_the_memory_cap_stops_a_growing_table_and_the_runtime_survives():
    h = handler("local keep = {}\nreturn function(body)\n"
                "  if body == 'grow' then for i = 1, 1e9 do keep[i] = string.rep('x', 64) .. i end end\n"
                "  keep = {}\nend\n", max_memory="8MB")
    assert str(run(h, "grow")) == "not enough memory (the Lua runtime's max_memory is 8388608 bytes)"
    assert run(h, "grow") is not None
    assert run(h, "ok") is None  # the handler still works once the memory is freed


def test_the_memory_cap_stops_one_huge_string():
    text = str(run(handler("return function() local s = string.rep('x', 1e9) end", max_memory="8MB")))
    assert text.startswith("not enough memory")


# -- the instruction budget -----------------------------------------------------------------------
def test_default_budget_is_about_a_tenth_of_a_second():
    assert DEFAULT_INSTRUCTION_LIMIT == 20_000_000
    t0 = time.perf_counter()
    text = lua_nack("while true do end")
    assert text == "task_handler.lua:6: instruction budget exceeded (20000000 instructions)"
    assert time.perf_counter() - t0 < 5.0  # generous: about 0.1 s here


@pytest.mark.parametrize(("name", "code"), [
    ("loop", "while true do end"),
    ("pcall", "while true do pcall(function() while true do end end) end"),
    ("pcall, ignoring the result", "for i = 1, 1e9 do pcall(function() for j = 1, 1e9 do end end) end return"),
    ("xpcall with a looping handler", "xpcall(function() while true do end end, function() while true do end end)"),
    ("coroutine.resume", ("local co = coroutine.create(function() while true do end end)\n"
                         "local ok, e = coroutine.resume(co)\nreturn nil, 'swallowed ' .. tostring(e)")),
    ("coroutine.wrap in pcall", "local f = coroutine.wrap(function() while true do end end)\npcall(f)"),
    ("nested coroutines", ("local co = coroutine.create(function()\n"
                          "  local inner = coroutine.create(function() while true do end end)\n"
                          "  coroutine.resume(inner) while true do end end)\ncoroutine.resume(co)")),
    ("a coroutine made at load time", None),
    ("recursion in pcall", "local function f() pcall(f) pcall(f) end\nf()"),
    ("load()ed code", 'load("while true do end")()'),
    ("string.gsub callback", 'string.gsub(string.rep("x", 100), ".", function() while true do end end)'),
    ("__close", "do local x <close> = setmetatable({}, {__close = function() while true do end end})\nerror('e') end"),
])
def test_the_budget_cannot_be_swallowed_or_escaped(name, code):
    if code is None:
        src = ("local co = coroutine.create(function() coroutine.yield() while true do end end)\n"
               "coroutine.resume(co)\n"
               "return function() local ok, e = coroutine.resume(co) return nil, 'swallowed ' .. tostring(e) end\n")
        outcome = run(handler(src, instruction_limit=1_000_000))
    else:
        outcome = run(handler("return function(body)\n" + code + "\nend\n", instruction_limit=1_000_000))
    assert outcome is not None, f"{name}: acked"
    assert str(outcome).endswith(BUDGET), f"{name}: {outcome}"


def test_replacing_a_string_function_cannot_hang_the_budget_hook():
    """The string library is the handler's too (env.string, ("x"):find): the hook, which
    runs with hooks off, must not call what the handler put there."""
    src = "return function() string.find = function() while true do end end; while true do end end"
    text = _in_child(f"run(handler({src!r}, instruction_limit=1_000_000, time_limit=0))")
    assert text == "task_handler.lua:1: " + BUDGET


def test_an_error_object_raised_at_load_is_rendered_inside_the_budget():
    """Its __tostring is handler code: a loop there is stopped, not run on the host's thread."""
    src = "error(setmetatable({}, {__tostring = function() while true do end end}))\nreturn function() end"
    text = _in_child(f"handler({src!r}, instruction_limit=1_000_000)")
    assert text.endswith("task_handler.lua:1: " + BUDGET), text


def test_replaced_string_functions_do_not_change_the_kernels_or_modules_texts():
    text = lua_nack("string.match = function() error('hijacked') end\n"
                    "string.sub, string.gsub = string.match, string.match\n"
                    "local d = tostring(time.parse_duration('1.5s'))\n"
                    "error(setmetatable({}, {__tostring = function() return 'custom ' .. d end}))")
    assert text == "task_handler.lua:9: custom 1.5s"


def test_module_tables_do_not_hand_out_their_raw_table_through_pairs():
    lua_check("""
for _, m in ipairs({time, json, queue, errors, logger}) do
  local _, state = pairs(m)
  assert(state == m, "pairs handed out another table")
  assert(not pcall(function() state.sleep = nil; state.info = nil end))
  local n = 0
  for k, v in pairs(m) do n = n + 1 end
  assert(n > 0)
end
assert(type(time.sleep) == "function" and type(logger.info) == "function")
""")


def test_the_budget_is_per_delivery_and_the_runner_survives():
    h = handler("return function(body) local n = tonumber(body) for i = 1, n do end end", instruction_limit=1_000_000)
    assert run(h, "100000") is None
    assert str(run(h, "100000000")).endswith(BUDGET)
    for _ in range(20):  # 20 × 100k loops: each delivery gets a fresh budget
        assert run(h, "100000") is None


def test_a_runaway_top_level_fails_loading():
    from wqnb.errors import ConfigError

    with pytest.raises(ConfigError, match=r"task_handler\.lua:1: instruction budget exceeded"):
        handler("while true do end\nreturn function() end", instruction_limit=1_000_000)


def test_the_budget_can_be_disabled_explicitly():
    h = handler("return function() for i = 1, 3e6 do end end", instruction_limit=0)
    assert run(h) is None


def test_a_time_limit_catches_work_that_instructions_do_not_count():
    """string.rep of 1 MB is a few instructions but real CPU: the CPU-time guard stops it."""
    h = handler("return function() while true do local s = string.rep('x', 1e6) end end", time_limit="200ms")
    t0 = time.perf_counter()
    assert str(run(h)) == "task_handler.lua:1: time limit exceeded (0.2s of CPU in Lua)"
    assert time.perf_counter() - t0 < 5.0


@pytest.mark.parametrize("where", ["handler", "coroutine"])
def test_time_spent_waiting_does_not_count_against_the_time_limit(where):
    """The limit counts process CPU between hook ticks: the CPU the loop (other handlers,
    Python) burns while this handler waits must not be charged to it, also when the wait
    is made from inside a coroutine of the handler."""
    from test_lua_kit import FakeServices

    class BusySleep(FakeServices):
        async def sleep(self, seconds):
            t0 = time.process_time()
            while time.process_time() - t0 < 0.03:  # CPU the process spends while Lua waits
                pass

    body = 'for i = 1, 10 do time.sleep("1ms") for j = 1, 5000 do end end'  # ticks between waits
    if where == "coroutine":
        body = f"coroutine.wrap(function() {body} end)()"
    h = handler(f'local time = require("time")\nreturn function() {body} end', BusySleep(), time_limit="100ms")
    assert run(h) is None


def test_pcall_nesting_is_capped_below_the_c_stack():
    text = lua_nack("local depth = 0\nlocal function f() depth = depth + 1 local ok, e = pcall(f) if not ok then error(e, 0) end end\nf()")
    assert text == "too many nested pcall/xpcall/coroutine calls (limit 100)"
