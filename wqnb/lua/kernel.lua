-- The privileged core of one Lua runtime: the sandbox a handler sees, the instruction
-- budget, the bridge that lets a handler wait on asyncio, and the runners Python steps.
--
-- Runs once per LuaRuntime, in lupa's full global table, *before* anything is removed:
-- it keeps private references to debug.sethook, coroutine.* and load, then builds a
-- separate environment for handler code that never sees them.
--
-- Called as kernel(host, budget_ticks, tick, time_limit): host is a table of Python
-- callables (kept in upvalues, never reachable from handler code); budget_ticks * tick is
-- the instruction budget of one delivery, time_limit the CPU seconds it may spend in Lua
-- (0 disables either).

local host, budget_ticks, TICK, time_limit = ...
local clock = os.clock

local co_create, co_resume, co_yield = coroutine.create, coroutine.resume, coroutine.yield
local co_status, co_running, co_close = coroutine.status, coroutine.running, coroutine.close
local sethook, getinfo = debug.sethook, debug.getinfo
local raw_load, raw_pcall, raw_xpcall, raw_error = load, pcall, xpcall, error
local pack, unpack, sort, concat = table.pack, table.unpack, table.sort, table.concat
local type, tostring, pairs, next, select = type, tostring, pairs, next, select
local getmetatable, setmetatable, rawget = getmetatable, setmetatable, rawget
-- The string library is shared with handler code (env.string, and every ("x"):method):
-- kernel code calls its own copies as functions, never s:method(), so a handler that
-- replaces string.find cannot run inside the budget hook, where hooks are off.
local format, find, match, sub, gsub = string.format, string.find, string.match, string.sub, string.gsub
local utf8_len = utf8.len

-- Result codes of step(); ops are >= OP_SLEEP (kept in sync with wqnb/handlers/lua.py).
local OK, FAIL, ERR, DEAD = 0, 1, 2, 3
local OP_SLEEP, OP_PUBLISH, OP_ACK, OP_NACK = 4, 5, 6, 7

local K = {OP_SLEEP = OP_SLEEP, OP_PUBLISH = OP_PUBLISH, OP_ACK = OP_ACK, OP_NACK = OP_NACK}
K.host = host

-- ---------------------------------------------------------------------------------------
-- Per-delivery state, found from the running thread. A runner's state is reused from one
-- delivery to the next; coroutines a handler creates share the state of whoever resumes
-- them, so their instructions count against that delivery's budget.
local ctx = setmetatable({}, {__mode = "k"})   -- thread -> state
local is_runner = setmetatable({}, {__mode = "k"})

function K.current()
  return ctx[co_running()]
end

-- ---------------------------------------------------------------------------------------
-- Text bound for Python must be UTF-8 (lupa decodes Lua strings to str): other bytes
-- become "?" rather than an exception in the middle of a delivery.
local function to_utf8(s)
  if utf8_len(s) then return s end
  return (gsub(s, "[\128-\255]", "?"))
end
K.utf8 = to_utf8

-- ---------------------------------------------------------------------------------------
-- The instruction budget: a count hook every TICK instructions on every thread handler
-- code runs in. Once a delivery's budget is spent the hook raises on every tick, and the
-- sandbox's pcall / xpcall / coroutine.resume re-raise the kill, so nothing swallows it.
--
-- Instructions do not measure everything: C functions (an error storm from deep pcall
-- recursion, a big table.sort) cost time but few instructions. So the hook also adds up
-- the CPU time between ticks (st.mark is cleared when a delivery starts or resumes, so
-- time spent while the handler waits is not counted) and stops the delivery after
-- time_limit seconds.
local function handler_line()
  -- the innermost frame of handler code (not this kernel, not a module, not C)
  for level = 3, 60 do
    local info = getinfo(level, "Sl")
    if info == nil then break end
    if info.currentline and info.currentline > 0 and not find(info.source, "^@wqnb/lua/") then
      return to_utf8(info.short_src .. ":" .. info.currentline .. ": ")  -- load(src, name)
    end
  end
  return ""
end

local function kill(st, what)
  if not st.killed then
    st.kill_msg, st.killed = what, true
    local ok, at = raw_pcall(handler_line)  -- may fail at the C-stack limit
    if ok then st.kill_msg = at .. what end
  end
  raw_error(st.kill_msg, 0)
end

-- Charge `ticks` against the delivery's budget and add the CPU time since the last
-- charge; kill the delivery when either runs out.
local function charge(st, ticks)
  if budget_ticks > 0 then
    local left = st.left - ticks
    st.left = left
    if left < 0 then
      kill(st, "instruction budget exceeded (" .. budget_ticks * TICK .. " instructions)")
    end
  end
  if time_limit > 0 then
    local now = clock()
    local mark = st.mark
    st.mark = now
    if mark then
      local used = st.used + (now - mark)
      st.used = used
      if used > time_limit then
        kill(st, "time limit exceeded (" .. time_limit .. "s of CPU in Lua)")
      end
    end
  end
end

-- One tick: the count hook, and also every error a sandbox pcall / xpcall / resume
-- catches, so an error storm (pcall recursing at the C-stack limit, where even the hook
-- cannot be called) still runs out of budget. A kill is re-raised, so nothing swallows it.
local function tick()
  local st = ctx[co_running()]
  if st == nil or not st.active then return end
  if st.killed then raw_error(st.kill_msg, 0) end
  charge(st, 1)
end

local function arm(co)
  if budget_ticks > 0 or time_limit > 0 then sethook(co, tick, "", TICK) end
end

-- ---------------------------------------------------------------------------------------
-- Waiting on asyncio. K.op(code, ...) yields (OP, code, ...) from whatever coroutine the
-- handler is in; resume_fwd passes such yields up through the handler's own coroutines
-- to the runner, which hands them to Python; Python awaits, then resumes with the result.
local OP = setmetatable({}, {__name = "wqnb.op"})

local function resume_fwd(co, ...)
  local r = pack(co_resume(co, ...))
  while r[1] and r[2] == OP and co_status(co) == "suspended" do
    r = pack(co_resume(co, co_yield(OP, unpack(r, 3, r.n))))
  end
  return r
end

function K.op(code, ...)
  local st = ctx[co_running()]
  if st == nil or st.loading then
    raw_error("cannot wait here: time.sleep, queue.publish and msg:ack/nack wait only inside a handler call, not while the file loads", 3)
  end
  return co_yield(OP, code, ...)
end

-- ---------------------------------------------------------------------------------------
-- Rendering values for error texts and logs: readable, bounded, deterministic.
local render
local function render_key(k)
  if type(k) == "string" and match(k, "^[%a_][%w_]*$") then return k end
  return "[" .. render(k, 0, {}) .. "]"
end

render = function(v, depth, seen)
  local t = type(v)
  if t == "string" then return depth == 0 and v or format("%q", v) end
  if t ~= "table" then return tostring(v) end
  if getmetatable(v) ~= nil then
    -- an object (an error, a Time): its own __tostring, unless that is the default one
    local s = tostring(v)
    if not match(s, ": 0x%x+$") then return s end
  end
  if seen[v] then return "{...}" end
  if depth > 3 then return "{...}" end
  seen[v] = true
  local keys, n = {}, 0
  for k in next, v do n = n + 1; keys[n] = k end
  if n == 0 then seen[v] = nil; return "{}" end
  local seq = true
  for i = 1, n do if rawget(v, i) == nil then seq = false; break end end
  local parts = {}
  if seq then
    for i = 1, n do parts[i] = render(rawget(v, i), depth + 1, seen) end
  else
    sort(keys, function(a, b)
      local ta, tb = type(a), type(b)
      if ta ~= tb then return ta < tb end
      if ta == "number" or ta == "string" then return a < b end
      return tostring(a) < tostring(b)
    end)
    for i = 1, n do
      local k = keys[i]
      parts[i] = render_key(k) .. " = " .. render(rawget(v, k), depth + 1, seen)
      if i >= 20 and n > 21 then parts[i + 1] = "..."; break end
    end
  end
  seen[v] = nil
  local s = "{" .. concat(parts, ", ") .. "}"
  if #s > 2000 then s = sub(s, 1, 1997) .. "..." end
  return s
end

--- The text of an error value or of `return nil, err`: strings as they are, error
--- objects through tostring, other tables as a readable literal.
function K.render(v)
  local ok, s = raw_pcall(render, v, 0, {})
  if not ok then s = "(unprintable " .. type(v) .. " error value: " .. tostring(s) .. ")" end
  return to_utf8(s)
end

-- ---------------------------------------------------------------------------------------
-- Read-only tables for modules (Wippy's module tables are immutable).
-- pairs() walks t through a closure: returning (next, t) would hand out the table itself.
-- (rawset on the wrapper cannot be refused: it only shadows a field for that runtime.)
function K.readonly(t, name)
  local function iter(_, k) return next(t, k) end
  return setmetatable({}, {
    __index = t,
    __newindex = function() raw_error("attempt to modify read-only table '" .. name .. "'", 2) end,
    __pairs = function(self) return iter, self, nil end,
    __metatable = false,
  })
end

--- Call a Python callable safely: a Lua string that is not UTF-8 cannot become a Python
--- str (lupa raises inside the call, before the host sees it), and a host bug may raise;
--- either way we get the exception as userdata. Return nil + a message instead of
--- letting it reach handler code.
---
--- The memory cap. lupa turns Python values into Lua ones with unprotected API calls, so
--- a memory error there escapes Lua's error handling (the process aborts or deadlocks).
--- The host builds big values with the cap lifted (Host.build) and hands back only small
--- strings directly: before each host call there must be `reserve` bytes free for them.
--- A host value that cannot fit comes back as (NOMEM, what) and raises Lua's own error.
local mem_limit, mem_reserve = 0, 0  -- lupa's limit in total bytes (0: none), headroom
local gc = collectgarbage
local NOMEM = "\0wqnb: not enough memory"

function K.set_memory_limit(total, reserve)
  mem_limit, mem_reserve = total, reserve
end

local function out_of_memory(what)
  local ok, at = raw_pcall(handler_line)
  raw_error((ok and at or "") .. "not enough memory (" .. what .. ")", 0)
end

function K.pycall(f, ...)
  if mem_limit > 0 and gc("count") * 1024 + mem_reserve > mem_limit then
    gc("collect")
    if gc("count") * 1024 + mem_reserve > mem_limit then
      out_of_memory("no room left for what a host call returns")
    end
  end
  local r = pack(raw_pcall(f, ...))
  if r[1] then
    if r[2] == NOMEM then out_of_memory(to_utf8(tostring(r[3]))) end
    return unpack(r, 2, r.n)
  end
  return nil, "host call failed: " .. to_utf8(tostring(r[2]))
end

-- ---------------------------------------------------------------------------------------
-- The sandbox environment: Lua's safe base library, wrapped where it could escape the
-- budget or reach the host. No io, debug, package, dofile, loadfile, string.dump, python;
-- of os only Wippy's safe subset, on the runtime's clock (wqnb/lua/os.lua); load() takes
-- text only and defaults to the sandbox.
string.dump = nil
local string_mt = getmetatable("")
string_mt.__metatable = false

local env = {}
K.env = env

-- pcall / xpcall / resume nest on the C stack (200 levels). A storm of errors at that
-- limit costs much CPU per instruction and starves the hook; capping the nesting well
-- below it keeps every level countable.
local MAX_NEST = 100
local TOO_DEEP = "too many nested pcall/xpcall/coroutine calls (limit " .. MAX_NEST .. ")"
local function enter()
  local st = ctx[co_running()]
  if st == nil then return nil end
  local nest = (st.nest or 0) + 1
  if nest > MAX_NEST then
    tick()
    return false
  end
  st.nest = nest
  return st
end
local function leave(st)
  if st then st.nest = st.nest - 1 end
end

local allowed_gc = {count = true, collect = true, step = true, isrunning = true}

local sandbox_coroutine = {
  create = function(f)
    local co = co_create(f)
    ctx[co] = ctx[co_running()]
    arm(co)
    return co
  end,
  resume = function(co, ...)
    if type(co) == "thread" then
      if is_runner[co] then return false, "cannot resume a handler's own coroutine" end
      ctx[co] = ctx[co_running()]
    end
    local st = enter()
    if st == false then return false, TOO_DEEP end
    local r = resume_fwd(co, ...)
    leave(st)
    if not r[1] then tick() end
    return unpack(r, 1, r.n)
  end,
  yield = function(...)
    if is_runner[co_running()] then
      raw_error("attempt to yield from outside a coroutine", 2)
    end
    return co_yield(...)
  end,
  status = co_status,
  running = co_running,
  isyieldable = function()
    return not is_runner[co_running()] and coroutine.isyieldable()
  end,
  close = function(co)
    if type(co) == "thread" and is_runner[co] then
      raw_error("cannot close a handler's own coroutine", 2)
    end
    return co_close(co)
  end,
}
sandbox_coroutine.wrap = function(f)
  local co = sandbox_coroutine.create(f)
  return function(...)
    ctx[co] = ctx[co_running()]
    local st = enter()
    if st == false then raw_error(TOO_DEEP, 2) end
    local r = resume_fwd(co, ...)
    leave(st)
    if r[1] then return unpack(r, 2, r.n) end
    tick()
    local e = r[2]
    if type(e) == "string" then raw_error(e, 2) end
    raw_error(e, 0)
  end
end

env.coroutine = sandbox_coroutine
env.pcall = function(f, ...)
  local st = enter()
  if st == false then return false, TOO_DEEP end
  local r = pack(raw_pcall(f, ...))
  leave(st)
  if not r[1] then tick() end
  return unpack(r, 1, r.n)
end
env.xpcall = function(f, handler, ...)
  -- The hook raises the budget kill from inside the hook, where Lua runs the message
  -- handler with hooks off: a looping handler would then never stop. Skip it for kills.
  local guarded = function(e)
    local st = ctx[co_running()]
    if st and st.killed then return e end
    return handler(e)
  end
  local st = enter()
  if st == false then return false, TOO_DEEP end
  local r = pack(raw_xpcall(f, guarded, ...))
  leave(st)
  if not r[1] then tick() end
  return unpack(r, 1, r.n)
end
env.load = function(chunk, name, mode, e)
  -- Text only, whatever mode asks for; the sandbox unless an env is given.
  return raw_load(chunk, name or "=(load)", "t", e == nil and env or e)
end
env.setmetatable = function(t, mt)
  -- A __gc finaliser runs with hooks off, outside any budget: refuse it.
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    raw_error("__gc metamethods are not allowed in handlers (finalisers run outside the instruction budget)", 2)
  end
  return setmetatable(t, mt)
end
env.collectgarbage = function(opt, ...)
  opt = opt or "collect"
  if not allowed_gc[opt] then
    raw_error("collectgarbage('" .. tostring(opt) .. "') is not allowed in handlers", 2)
  end
  return collectgarbage(opt, ...)
end
env.print = function(...)
  local n = select("#", ...)
  local parts = {}
  for i = 1, n do parts[i] = tostring((select(i, ...))) end
  K.pycall(host.print, concat(parts, "\t"))
end
for _, name in ipairs({"assert", "error", "getmetatable", "ipairs", "next", "pairs", "rawequal",
                       "rawget", "rawlen", "rawset", "select", "tonumber", "tostring", "type",
                       "_VERSION"}) do
  env[name] = _G[name]
end
env.unpack = table.unpack  -- Lua 5.1 spelling, as gopher-lua (Wippy) has it
env.string, env.table, env.math, env.utf8 = string, table, math, utf8
env._G = env
math.randomseed(0)  -- deterministic runs: same inputs, same timeline

-- ---------------------------------------------------------------------------------------
-- Modules: built by the Python side (only those the entry lists), then require()d.
local loaded = {}
function K.define(name, module)
  loaded[name] = module
end
env.require = function(name)
  local m = loaded[name]
  if m == nil then raw_error("module '" .. tostring(name) .. "' not found", 2) end
  return m
end

-- ---------------------------------------------------------------------------------------
-- Failures. Lua adds file:line only to string errors; for error(err_object), error({...})
-- or error() the message handler of the top-level xpcall notes where the handler raised.
-- It runs only when an error reaches that xpcall, so a delivery that succeeds pays nothing.
local function locate(e)
  if type(e) ~= "string" then
    local st = ctx[co_running()]
    if st and not st.killed then
      local ok, at = raw_pcall(handler_line)
      if ok then st.err_at = at end
    end
  end
  return e
end

-- The text of a failure (an uncaught error value, or the err of `return nil, err`), made
-- in the delivery's own budgeted thread: an object's __tostring is handler code and may loop.
local function failure_text(st, v)
  local at = st.err_at
  st.err_at = nil
  if not st.killed then
    local text = K.render(v)
    if not st.killed then return at and at .. text or text end
  end
  st.active = false  -- killed: the hook raises on every tick from now on
  return st.kill_msg
end

-- ---------------------------------------------------------------------------------------
-- Loading the handler: compile the source as text in the sandbox and run its top level
-- inside a budgeted coroutine (a runaway top level is stopped like a runaway handler).
-- K.op refuses to wait while loading and the top level cannot yield its coroutine, so
-- the coroutine ends in one resume.
local handler

local function run_top(fn)
  local st = {left = budget_ticks, active = true, loading = true, used = 0}
  local co = co_create(function()
    local r = pack(raw_xpcall(fn, locate))
    if r[1] and not st.killed then return r end
    return nil, failure_text(st, r[2])
  end)
  ctx[co] = st
  is_runner[co] = true
  arm(co)
  local ok, r, err = co_resume(co)
  if not ok then  -- killed outside the xpcall, or out of memory
    return nil, st.killed and st.kill_msg or type(r) == "string" and to_utf8(r) or "Lua error"
  end
  return r, err
end

--- Compile and run the chunk, then find the handler: the function it returns, or
--- `method` in the table it returns (or a global of that name). nil + message on failure.
local compiled

--- Compile the chunk (Python measures the memory this takes before it sets the cap).
function K.compile(src, chunkname)
  local fn, err = raw_load(src, "=" .. chunkname, "t", env)
  if not fn then return nil, err end
  compiled = fn
  return true
end

function K.load_handler(src, chunkname, method)
  if src ~= nil then
    local ok, err = K.compile(src, chunkname)
    if not ok then return nil, err end
  end
  local fn = compiled
  compiled = nil
  local r, rerr = run_top(fn)
  if not r then return nil, rerr end
  local ret = r[2]
  local found
  if method ~= nil then
    if type(ret) == "table" then
      found = rawget(ret, method)
    elseif ret == nil then
      found = rawget(env, method)
    end
    if type(found) ~= "function" then
      local what = type(ret) == "table" and "the table " .. chunkname .. " returns"
        or "the globals of " .. chunkname
      return nil, "method '" .. method .. "' not found in " .. what
        .. (found ~= nil and (" (it is a " .. type(found) .. ")") or "")
    end
  elseif type(ret) == "function" then
    found = ret
  elseif type(ret) == "table" then
    local names = {}
    for k, v in pairs(ret) do
      if type(v) == "function" then names[#names + 1] = tostring(k) end
    end
    sort(names)
    return nil, chunkname .. " returns a table: set method: to the handler's name ("
      .. (#names > 0 and concat(names, ", ") or "it holds no functions") .. ")"
  else
    return nil, chunkname .. " must return the handler function (or a table of functions, with method:)"
  end
  handler = found
  return true
end

-- ---------------------------------------------------------------------------------------
-- Runners: one coroutine per concurrently running delivery, reused across deliveries.
-- Python starts a delivery with K.step(slot, token, body[, log threshold]), resumes it after
-- a wait with K.resume(slot, outcome...), and gets back a code: OK / FAIL(text) /
-- ERR(text) when the delivery is done, DEAD(text) if the runner died, or an op to perform.
local runners = {}
local n_runners = 0

local function runner(token, body, threshold)
  local st = ctx[co_running()]
  while true do
    st.left, st.killed, st.kill_msg, st.used, st.mark, st.nest = budget_ticks, false, nil, 0, nil, 0
    st.token, st.msg, st.active = token, nil, true
    if threshold then K.log_threshold = threshold end
    local ok, r1, err = raw_xpcall(handler, locate, body)
    local code, text = OK, nil
    if not ok or st.killed then
      code, text = ERR, failure_text(st, r1)
    elseif err ~= nil then
      text = failure_text(st, err)
      code = st.killed and ERR or FAIL
    end
    st.active, st.token, st.msg = false, nil, nil
    token, body, threshold = co_yield(code, text)
  end
end

function K.new_runner()
  local co = co_create(runner)
  ctx[co] = {left = 0, active = false, used = 0}
  is_runner[co] = true
  arm(co)
  n_runners = n_runners + 1
  runners[n_runners] = co
  return n_runners
end

local function after(slot, ok, a, ...)
  if not ok then  -- the runner itself died (a kill or the memory cap outside the xpcall)
    local st = ctx[runners[slot]]
    runners[slot] = nil
    st.active = false
    if st.killed then return DEAD, st.kill_msg end
    local ok2, text = raw_pcall(K.render, a)
    return DEAD, ok2 and text or "Lua error (unprintable)"
  end
  if a == OP then return ... end
  return a, ...
end

--- Start a delivery on a runner: (slot, token, body[, threshold]).
function K.step(slot, ...)
  return after(slot, co_resume(runners[slot], ...))
end

--- Resume a runner after a wait with its outcome. The CPU time since the last charge
--- went to waiting, not to Lua: forget it here, before any of the handler's instructions
--- can run (a hook tick between the resume and a reset inside K.op would charge it).
function K.resume(slot, ...)
  local co = runners[slot]
  ctx[co].mark = nil
  return after(slot, co_resume(co, ...))
end

function K.drop(slot)
  runners[slot] = nil
end

return K
