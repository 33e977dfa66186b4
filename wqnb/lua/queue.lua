-- Wippy's `queue` module: publish, message, info, with Wippy's checks, order and texts.
--
-- publish and msg:ack()/nack() wait on asyncio (a full queue, the broker): they yield to
-- the Python driver through K.op, so only the calling handler waits.
local K = ...

local type, tostring, next, select, error, setmetatable = type, tostring, next, select, error, setmetatable
local utf8_len = utf8.len
local new_error, op, pycall = K.new_error, K.op, K.pycall
local OP_PUBLISH, OP_ACK, OP_NACK = K.OP_PUBLISH, K.OP_ACK, K.OP_NACK
local py_info, py_msg = K.host.queue_info, K.host.msg
local py_denied = K.host.publish_denied

-- The consumer's lifecycle.security, where Wippy checks it: queue.publish on "" before the
-- arguments are read, queue.publish.queue once the id is known (RT runtime/lua/modules/
-- queue/module.go). (Python checks again when the publish is made, on its own delivery.)
local function denied(qid)
  local st = K.current()
  local refusal, failure = pycall(py_denied, st and st.token or 0, qid)
  if refusal == false then return nil end
  return new_error("Invalid", refusal or failure)
end

local function invalid(text) return nil, new_error("Invalid", text) end

local function queue_id(method, qid)
  local t = type(qid)
  if t == "number" then return tostring(qid) end
  if t ~= "string" then
    error("bad argument #1 to '" .. method .. "' (string expected, got " .. t .. ")", 3)
  end
  return qid
end

local queue = {}

--- queue.publish(queue_id, data, headers?) -> true | nil, err
function queue.publish(...)
  local refused = denied(nil)
  if refused then return nil, refused end
  local n = select("#", ...)
  if n == 0 then return invalid("queue ID required") end
  local qid, data, headers = ...
  qid = queue_id("publish", qid)
  if qid == "" then return invalid("queue ID required") end
  if not utf8_len(qid) then return invalid("queue ID must be UTF-8 text") end
  refused = denied(qid)
  if refused then return nil, refused end
  if n < 2 then return invalid("message data required") end
  local td = type(data)
  local body = data
  if td == "table" then
    if next(data) == nil then return invalid("message data cannot be empty") end
    local text, err = K.json_encode(data)  -- bodies travel as text (DESIGN §3)
    if text == nil then return nil, new_error("Internal", err, "publish failed") end
    body = text
  elseif td == "string" then
    if not utf8_len(data) then
      return invalid("message data must be UTF-8 text (wqnb hands Lua strings to Python as str)")
    end
  elseif td ~= "number" and td ~= "boolean" and td ~= "nil" then
    body = nil  -- Wippy turns functions and other userdata into nil
  end
  if type(headers) ~= "table" then headers = nil end
  local ok, kind, message, context = op(OP_PUBLISH, qid, body, headers)
  if ok then return true end
  return nil, new_error(kind, message, context)
end

-- ---------------------------------------------------------------------------------------
-- queue.Message: a handle on the current delivery, valid while its handler runs.
local tokens = setmetatable({}, {__mode = "k"})
local methods = {}
local MessageMT = {__index = methods, __metatable = "queue.Message"}

MessageMT.__tostring = function(m)
  local ok, id, boxed = pycall(py_msg, tokens[m], "id")
  if boxed then id = boxed[1] end
  if ok then return "queue.Message{id=" .. tostring(id) .. "}" end
  return "queue.Message{released}"
end

local function token_of(m, method)
  local tok = tokens[m]
  if tok == nil then
    error("bad argument #1 to '" .. method .. "' (queue.Message expected; call it as msg:" .. method .. "())", 3)
  end
  return tok
end

local function read(m, method, key)
  local ok, value, boxed = pycall(py_msg, token_of(m, method), method, key)
  if ok then
    if boxed then return boxed[1] end  -- a long string comes in a table (host.py: SMALL)
    return value
  end
  return nil, new_error("Invalid", value or "queue.Message released")
end

function methods.id(m) return read(m, "id") end
function methods.headers(m) return read(m, "headers") end
function methods.header(m, key)
  local t = type(key)
  if t == "number" then key = tostring(key)
  elseif t ~= "string" then
    error("bad argument #1 to 'header' (string expected, got " .. t .. ")", 2)
  end
  return read(m, "header", key)
end

local function settle(m, method, code, reason)
  local tok = token_of(m, method)
  local ok, kind, message, context = op(code, tok, reason)
  if ok then return true end
  return nil, new_error(kind, message, context)
end

function methods.ack(m) return settle(m, "ack", OP_ACK) end
function methods.nack(m, reason)
  if reason ~= nil then reason = K.utf8(tostring(reason)) end
  return settle(m, "nack", OP_NACK, reason)
end

--- queue.message() -> Message | nil, err: the delivery the calling handler is running.
function queue.message()
  local st = K.current()
  if st == nil or st.token == nil then return invalid("no delivery found in context") end
  local m = st.msg
  if m == nil then
    m = setmetatable({}, MessageMT)
    tokens[m] = st.token
    st.msg = m
  end
  return m
end

--- queue.info(queue_id) -> {message_count = n, ready = n, ...} | nil, err
function queue.info(qid)
  if qid == nil then return invalid("queue ID required") end
  qid = queue_id("info", qid)
  if qid == "" then return invalid("queue ID required") end
  local ok, value, kind, context = pycall(py_info, qid)
  if ok then return value end
  return nil, new_error(kind or "Internal", value or "queue info failed", context)
end

return queue
