-- Wippy's safe `os`: time, clock, date and difftime, and nothing else (no exit, execute,
-- getenv, remove, rename, tmpname or setlocale). A global, as in Wippy's sandbox.
--
-- All four follow the runtime's clock, so a simulation sees virtual time: os.time() is
-- the runtime's Unix time in whole seconds, os.clock() the seconds on that clock since
-- the Lua runtime was made. Dates are UTC whatever the format asks ("!" or not): a run
-- must not depend on the machine's time zone.
local K = ...

local type, error, tostring = type, error, tostring
local floor, tointeger = math.floor, math.tointeger
local sub = string.sub
local real_date = os.date  -- C strftime on a given time: safe, and it checks the format
local pycall = K.pycall
local py_now, py_clock = K.host.now, K.host.clock

local function now_seconds()
  return pycall(py_now) // 1000000000
end

-- Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's days_from_civil).
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = (y >= 0 and y or y - 399) // 400
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = (153 * mp + 2) // 5 + d - 1
  local doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
  return era * 146097 + doe - 719468
end

local function field(t, key, default)
  local v = t[key]
  if v == nil then
    if default == nil then error("field '" .. key .. "' missing in date table", 3) end
    return default
  end
  local n = tointeger(v)
  if n == nil then
    error("field '" .. key .. "' is not an integer", 3)
  end
  return n
end

local os_table = {}

--- os.time([table]) -> whole seconds: now on the runtime's clock, or the (UTC) date given.
function os_table.time(t)
  if t == nil then return now_seconds() end
  if type(t) ~= "table" then
    error("bad argument #1 to 'time' (table expected, got " .. type(t) .. ")", 2)
  end
  local year, month, day = field(t, "year"), field(t, "month"), field(t, "day")
  local hour, min, sec = field(t, "hour", 12), field(t, "min", 0), field(t, "sec", 0)
  year = year + (month - 1) // 12  -- Lua normalises out-of-range fields; so do we
  month = (month - 1) % 12 + 1
  return (days_from_civil(year, month, 1) + day - 1) * 86400 + hour * 3600 + min * 60 + sec
end

--- os.clock() -> seconds on the runtime's clock since this Lua runtime was made.
function os_table.clock()
  return (pycall(py_clock))
end

--- os.date([format[, time]]): Lua's os.date, in UTC, at `time` or now on the runtime's clock.
function os_table.date(format, t)
  if format == nil then format = "%c" end
  if type(format) ~= "string" then
    if type(format) == "number" then format = tostring(format)
    else error("bad argument #1 to 'date' (string expected, got " .. type(format) .. ")", 2) end
  end
  if t == nil then
    t = now_seconds()
  else
    local n = tointeger(t)
    if n == nil then
      if type(t) == "number" and t == t and t > -2^62 and t < 2^62 then n = floor(t)
      else error("bad argument #2 to 'date' (number has no integer representation)", 2) end
    end
    t = n
  end
  if sub(format, 1, 1) ~= "!" then format = "!" .. format end
  return real_date(format, t)
end

--- os.difftime(t2[, t1]) -> t2 - t1 in seconds, as a float.
function os_table.difftime(t2, t1)
  if type(t2) ~= "number" then
    error("bad argument #1 to 'difftime' (number expected, got " .. type(t2) .. ")", 2)
  end
  if t1 ~= nil and type(t1) ~= "number" then
    error("bad argument #2 to 'difftime' (number expected, got " .. type(t1) .. ")", 2)
  end
  return (t2 - (t1 or 0)) + 0.0
end

K.env.os = K.readonly(os_table, "os")
