-- Wippy's `json` module: encode / decode returning `value` or `nil, err`.
--
-- decode hands the text to Python's json (C speed) and gets back a Lua table built by
-- lupa's table_from: measured faster than a decoder written in Lua (docs/lua.md).
-- encode walks the table in Lua, with Wippy's rules for arrays, objects and errors.
local K = ...

local type, tostring, next, rawget, tonumber = type, tostring, next, rawget, tonumber
local math_type, floor, huge = math.type, math.floor, math.huge
local format, gsub, byte = string.format, string.gsub, string.byte
local concat, sort = table.concat, table.sort
local new_error, is_error, pycall = K.new_error, K.is_error, K.pycall
local py_decode = K.host.json_decode

local json = {}

-- ---------------------------------------------------------------------------------------
-- decode
function json.decode(s)
  if type(s) ~= "string" then
    return nil, new_error("Invalid", "string expected")
  end
  if s == "" then
    return nil, new_error("Invalid", "empty string is not valid JSON")
  end
  local v, err, boxed = pycall(py_decode, s)
  if boxed then return boxed[1] end  -- a long string comes in a table (host.py: SMALL)
  if err ~= nil then
    return nil, new_error("Internal", err, "decode failed")
  end
  return v
end

-- ---------------------------------------------------------------------------------------
-- encode
local MAX_DEPTH = 128
local escapes = {['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f',
                 ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t'}
local function escape_char(c)
  return escapes[c] or format("\\u%04x", byte(c))
end
local function quote(s)
  return '"' .. gsub(s, '[%z\1-\31"\\]', escape_char) .. '"'
end

local function number_text(v)
  if math_type(v) == "integer" then return format("%d", v) end
  if v ~= v or v == huge or v == -huge then return "null" end
  if v == floor(v) and v > -1e15 and v < 1e15 then return format("%d", v) end
  -- the shortest of these that reads back as v
  local t = format("%.15g", v)
  if tonumber(t) == v then return t end
  t = format("%.16g", v)
  if tonumber(t) == v then return t end
  return format("%.17g", v)
end

local EncodeError = {}  -- raised inside the walk, caught by encode()

local encode_value
local function fail(msg) error({[EncodeError] = msg}, 0) end

local function encode_table(t, out, n, depth, visiting)
  if visiting[t] then fail("cannot encode recursively nested tables to JSON") end
  if depth > MAX_DEPTH then fail("exceeded maximum nesting depth for JSON encoding") end
  if next(t) == nil then n = n + 1; out[n] = "[]"; return n end
  visiting[t] = true
  local count, max_int, has_other = 0, 0, false
  for k in next, t do
    count = count + 1
    if math_type(k) == "integer" and k > 0 then
      if k > max_int then max_int = k end
    elseif type(k) == "string" then
      has_other = true
    elseif type(k) == "number" then
      max_int = huge  -- a float key: not an array index
    else
      fail("cannot encode table key of type " .. type(k))
    end
  end
  local has_int = max_int > 0
  if has_int and has_other then
    fail("cannot encode mixed-key table: table has both numeric and non-numeric keys")
  end
  if has_int then
    if max_int ~= count then fail("cannot encode sparse array: non-contiguous numeric keys found") end
    n = n + 1; out[n] = "["
    for i = 1, count do
      if i > 1 then n = n + 1; out[n] = "," end
      n = encode_value(rawget(t, i), out, n, depth + 1, visiting)
    end
    n = n + 1; out[n] = "]"
  else
    local keys, m = {}, 0
    for k in next, t do m = m + 1; keys[m] = k end
    sort(keys)  -- Go sorts map keys: deterministic output
    n = n + 1; out[n] = "{"
    for i = 1, m do
      local k = keys[i]
      if i > 1 then n = n + 1; out[n] = "," end
      n = n + 1; out[n] = quote(k) .. ":"
      n = encode_value(rawget(t, k), out, n, depth + 1, visiting)
    end
    n = n + 1; out[n] = "}"
  end
  visiting[t] = nil
  return n
end

encode_value = function(v, out, n, depth, visiting)
  local tv = type(v)
  if tv == "string" then n = n + 1; out[n] = quote(v); return n end
  if tv == "number" then n = n + 1; out[n] = number_text(v); return n end
  if tv == "boolean" then n = n + 1; out[n] = v and "true" or "false"; return n end
  if v == nil then n = n + 1; out[n] = "null"; return n end
  if tv == "table" then
    if is_error(v) then n = n + 1; out[n] = quote(tostring(v)); return n end
    return encode_table(v, out, n, depth, visiting)
  end
  fail("cannot encode value of type " .. tv .. " to JSON")
end

--- Encode without the module's error wrapping: returns text, or nil and the message.
function K.json_encode(v)
  local out = {}
  local ok, n = pcall(encode_value, v, out, 0, 1, {})
  if ok then return concat(out, "", 1, n) end
  if type(n) == "table" and n[EncodeError] then return nil, n[EncodeError] end
  error(n, 0)  -- not ours (the instruction budget, memory): let it through
end

function json.encode(v)
  local s, err = K.json_encode(v)
  if s == nil then return nil, new_error("Internal", err, "encode failed") end
  return s
end

return json
