-- Wippy's `time` module, the part a queue handler needs: sleep, now, durations.
--
-- Durations are Go's: a number is nanoseconds (50 * time.MILLISECOND), a string is
-- "50ms" / "1.5s" / "1m30s", or a Duration from time.parse_duration. time.sleep waits
-- on the runtime's clock (virtual time in simulate()) by yielding to the Python driver.
local K = ...

local type, tostring, error, setmetatable, tonumber = type, tostring, error, setmetatable, tonumber
local floor, math_type, huge = math.floor, math.type, math.huge
local format, gsub = string.format, string.gsub  -- as functions: handlers may replace string.*
local new_error, op, pycall = K.new_error, K.op, K.pycall
local OP_SLEEP = K.OP_SLEEP
local py_now, py_parse_duration, py_format_time = K.host.now, K.host.parse_duration, K.host.format_time

local NS, US, MS, S = 1, 1000, 1000000, 1000000000
local time = {
  NANOSECOND = NS, MICROSECOND = US, MILLISECOND = MS, SECOND = S,
  MINUTE = 60 * S, HOUR = 3600 * S,
  JANUARY = 1, FEBRUARY = 2, MARCH = 3, APRIL = 4, MAY = 5, JUNE = 6, JULY = 7,
  AUGUST = 8, SEPTEMBER = 9, OCTOBER = 10, NOVEMBER = 11, DECEMBER = 12,
  SUNDAY = 0, MONDAY = 1, TUESDAY = 2, WEDNESDAY = 3, THURSDAY = 4, FRIDAY = 5, SATURDAY = 6,
  RFC3339 = "2006-01-02T15:04:05Z07:00", RFC3339NANO = "2006-01-02T15:04:05.999999999Z07:00",
  DATE_TIME = "2006-01-02 15:04:05", DATE_ONLY = "2006-01-02", TIME_ONLY = "15:04:05",
}

-- Values live in private weak tables: methods cannot be shadowed, objects not forged.
local dur_ns = setmetatable({}, {__mode = "k"})
local time_ns = setmetatable({}, {__mode = "k"})

-- ---------------------------------------------------------------------------------------
-- Duration
local dmethods = {}
local DurationMT = {__index = dmethods, __metatable = "time.Duration"}

local function duration(ns)
  local d = setmetatable({}, DurationMT)
  dur_ns[d] = ns
  return d
end

local function trim(x)
  local s = gsub(gsub(format("%.9f", x), "0+$", ""), "%.$", "")
  return s
end

--- Go's Duration.String: "1h30m0s", "1.5s", "50ms", "0s".
local function duration_text(ns)
  if ns == 0 then return "0s" end
  local sign = ns < 0 and "-" or ""
  local a = ns < 0 and -ns or ns
  if a < US then return sign .. trim(a) .. "ns" end
  if a < MS then return sign .. trim(a / US) .. "µs" end
  if a < S then return sign .. trim(a / MS) .. "ms" end
  local h = floor(a / time.HOUR)
  local m = floor((a - h * time.HOUR) / time.MINUTE)
  local s = (a - h * time.HOUR - m * time.MINUTE) / S
  if h > 0 then return format("%s%dh%dm%ss", sign, h, m, trim(s)) end
  if m > 0 then return format("%s%dm%ss", sign, m, trim(s)) end
  return sign .. trim(s) .. "s"
end

DurationMT.__tostring = function(d) return duration_text(dur_ns[d]) end
DurationMT.__eq = function(a, b) return dur_ns[a] == dur_ns[b] end
DurationMT.__lt = function(a, b) return dur_ns[a] < dur_ns[b] end
DurationMT.__le = function(a, b) return dur_ns[a] <= dur_ns[b] end

local function d_of(d, method)
  local ns = dur_ns[d]
  if ns == nil then error("bad argument #1 to '" .. method .. "' (Duration expected)", 3) end
  return ns
end
-- (d_of / t_of blame their caller's caller: in parentheses they are not tail-called)
function dmethods.nanoseconds(d) return (d_of(d, "nanoseconds")) end
function dmethods.microseconds(d) return d_of(d, "microseconds") / US end
function dmethods.milliseconds(d) return d_of(d, "milliseconds") / MS end
function dmethods.seconds(d) return d_of(d, "seconds") / S end
function dmethods.minutes(d) return d_of(d, "minutes") / time.MINUTE end
function dmethods.hours(d) return d_of(d, "hours") / time.HOUR end

--- Nanoseconds of a number / string / Duration, or nil and a message. NaN and infinities
--- are refused: Go's durations are integers, and the host's clock must not see them.
local function to_ns(v)
  local t = type(v)
  local ns
  if t == "number" then
    ns = v
  elseif t == "string" then
    local seconds, err = pycall(py_parse_duration, v)
    if seconds == nil then return nil, err end
    ns = seconds * S
    if math_type(ns) == "float" then ns = floor(ns + 0.5) end
  else
    ns = dur_ns[v]
    if ns == nil then
      return nil, "duration expected (a number of nanoseconds, a string like \"50ms\", or a Duration), got " .. t
    end
  end
  if ns ~= ns or ns == huge or ns == -huge then
    return nil, "duration must be finite, got " .. (ns ~= ns and "nan" or ns > 0 and "inf" or "-inf")
  end
  return ns
end

function time.parse_duration(v)
  local ns, err = to_ns(v)
  if ns == nil then return nil, new_error("Invalid", err) end
  return duration(ns)
end

-- ---------------------------------------------------------------------------------------
-- sleep: suspends only the calling handler, on the runtime's clock.
function time.sleep(d)
  local ns, err = to_ns(d)
  if ns == nil then error("bad argument #1 to 'sleep' (" .. err .. ")", 2) end
  if ns < 0 then ns = 0 end
  op(OP_SLEEP, ns / S)
end

-- ---------------------------------------------------------------------------------------
-- Time
local tmethods = {}
local TimeMT = {__index = tmethods, __metatable = "time.Time"}

local function new_time(ns)
  local t = setmetatable({}, TimeMT)
  time_ns[t] = ns
  return t
end

local function t_of(t, method)
  local ns = time_ns[t]
  if ns == nil then error("bad argument #1 to '" .. method .. "' (Time expected)", 3) end
  return ns
end

function time.now()
  return new_time(pycall(py_now))
end

function time.unix(sec, nsec)
  if type(sec) ~= "number" then error("bad argument #1 to 'unix' (number expected, got " .. type(sec) .. ")", 2) end
  return new_time(floor(sec) * S + floor(tonumber(nsec) or 0))
end

function tmethods.unix(t) return t_of(t, "unix") // S end
function tmethods.unix_nano(t) return (t_of(t, "unix_nano")) end
function tmethods.sub(t, other)
  return duration(t_of(t, "sub") - t_of(other, "sub"))
end
function tmethods.add(t, d)
  local ns, err = to_ns(d)
  if ns == nil then error("bad argument #1 to 'add' (" .. err .. ")", 2) end
  return new_time(t_of(t, "add") + floor(ns))
end
function tmethods.before(t, o) return t_of(t, "before") < t_of(o, "before") end
function tmethods.after(t, o) return t_of(t, "after") > t_of(o, "after") end
function tmethods.equal(t, o) return t_of(t, "equal") == t_of(o, "equal") end
-- (called, not tail-called, by the methods: its error blames their caller's line)
local function format_time(ns, method, layout)
  local text, err = pycall(py_format_time, ns, layout)
  if text == nil then error("bad argument #1 to '" .. method .. "' (" .. err .. ")", 3) end
  return text
end
function tmethods.format_rfc3339(t)
  local text = format_time(t_of(t, "format_rfc3339"), "format_rfc3339", time.RFC3339)
  return text
end
function tmethods.format(t, layout)
  if type(layout) ~= "string" then
    error("bad argument #1 to 'format' (string expected, got " .. type(layout) .. ")", 2)
  end
  local text = format_time(t_of(t, "format"), "format", layout)
  return text
end

-- Never fails: tostring() of a value must give a string (error texts and logs use it).
TimeMT.__tostring = function(t)
  local text = pycall(py_format_time, time_ns[t], time.RFC3339NANO)
  return text or "time.Time{unix_nano=" .. tostring(time_ns[t]) .. "}"
end
TimeMT.__eq = function(a, b) return time_ns[a] == time_ns[b] end
TimeMT.__lt = function(a, b) return time_ns[a] < time_ns[b] end
TimeMT.__le = function(a, b) return time_ns[a] <= time_ns[b] end

return time
