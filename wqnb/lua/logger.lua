-- Wippy's `logger`: logger:info(msg, fields) and friends, :with(fields), :named(name).
--
-- The seed page calls logger.info(msg, fields) with a dot, Wippy's docs with a colon: every
-- method of a logger is a closure bound to it, so both spellings work. Records go to
-- Python logging under wqnb.lua.<function id>[.<name>], fields attached. A disabled level
-- is decided here, in Lua, against a threshold Python refreshes at each delivery.
local K = ...

local type, tostring, next, select, rawequal, getinfo = type, tostring, next, select, rawequal, debug.getinfo
local error, setmetatable = error, setmetatable
local py_log, py_enabled, pycall = K.host.log, K.host.log_enabled, K.pycall
local is_error = K.is_error

local LEVELS = {debug = 10, info = 20, warn = 30, error = 40}
K.log_threshold = 0  -- refreshed by Python at each delivery; 0 means "ask Python"

-- Fields: string keys only; strings, numbers and booleans kept; error objects as their
-- text; nested tables passed on (Python turns them into dicts and lists).
local function clean_fields(fields, base)
  local out = {}
  if base then for k, v in next, base do out[k] = v end end
  if fields then
    for k, v in next, fields do
      if type(k) == "string" then
        local tv = type(v)
        if tv == "string" then v = K.utf8(v)
        elseif tv == "table" and is_error(v) then v = tostring(v)
        elseif tv == "function" or tv == "thread" or tv == "userdata" then v = tostring(v) end
        out[k] = v
      end
    end
  end
  return out
end

-- A copy of nested field tables with non-UTF-8 strings (keys too) as "?": Python cannot
-- take them. Used only when the host refused a record, so the common case walks nothing.
local function utf8_copy(v, depth, seen)
  local tv = type(v)
  if tv == "string" then return K.utf8(v) end
  if tv ~= "table" or is_error(v) then return v end
  if depth > 16 then return "{...}" end  -- as deep as Python's to_python goes
  if seen[v] then return seen[v] end
  local out = {}
  seen[v] = out
  for k, x in next, v do out[utf8_copy(k, depth + 1, seen)] = utf8_copy(x, depth + 1, seen) end
  return out
end

local function logger_tostring() return "logger.Logger" end
local function read_only() error("attempt to modify a logger (it is read-only)", 2) end

local make_logger

make_logger = function(name, base)
  local methods = {}
  local function iter(_, k) return next(methods, k) end  -- pairs() never hands out methods
  local self = setmetatable({}, {__index = methods, __newindex = read_only,
                                 __tostring = logger_tostring, __metatable = "logger.Logger",
                                 __pairs = function(t) return iter, t, nil end})

  -- (self, msg, fields) for a colon call, (msg, fields) for a dot call
  local function args(method, ...)
    local a = ...
    local first = 1
    if rawequal(a, self) then first = 2 end
    local n = select("#", ...) - first + 1
    local msg, fields = select(first, ...)
    if type(msg) ~= "string" then
      if type(msg) == "number" then msg = tostring(msg)
      else error("bad argument #1 to '" .. method .. "' (string expected, got " .. type(msg) .. ")", 3) end
    end
    if n >= 2 and type(fields) ~= "table" then
      error("bad argument #2 to '" .. method .. "' (table expected, got " .. type(fields) .. ")", 3)
    end
    return msg, fields
  end

  for method, level in next, LEVELS do
    methods[method] = function(...)
      local msg, fields = args(method, ...)
      local threshold = K.log_threshold
      if name == nil and threshold > 0 then
        if level < threshold then return end
      elseif not pycall(py_enabled, name, level) then
        return
      end
      local out = clean_fields(fields, base)
      local info = getinfo(2, "Sl")
      if info and info.currentline and info.currentline > 0 then
        out.location = info.short_src .. ":" .. info.currentline
      end
      msg = K.utf8(msg)
      local _, err = pycall(py_log, name, level, msg, out)
      if err ~= nil then pycall(py_log, name, level, msg, utf8_copy(out, 0, {})) end
    end
  end

  methods.with = function(a, b)
    local fields = b
    if not rawequal(a, self) then fields = a end
    if type(fields) ~= "table" then
      error("bad argument #1 to 'with' (table expected, got " .. type(fields) .. ")", 2)
    end
    return make_logger(name, clean_fields(fields, base))
  end

  methods.named = function(a, b)
    local n = b
    if not rawequal(a, self) then n = a end
    if type(n) ~= "string" then
      error("bad argument #1 to 'named' (string expected, got " .. type(n) .. ")", 2)
    end
    if n == "" then error("name cannot be empty", 2) end
    n = K.utf8(n)
    return make_logger(name and (name .. "." .. n) or n, base)
  end

  return self
end

return make_logger(nil, nil)
