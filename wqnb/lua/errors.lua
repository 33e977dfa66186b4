-- Wippy's structured errors: the global `errors` table and the error objects the modules
-- return as the second value of `nil, err`. `tostring(err)` and `err:message()` give the
-- bare message, as Wippy's do; the kind, context and details sit behind methods.
local K = ...

local type, tostring, setmetatable = type, tostring, setmetatable
local error = error

-- Fields live in a private weak table, so `err.message` cannot shadow `err:message()`
-- and handler code cannot forge or edit an error's kind.
local data = setmetatable({}, {__mode = "k"})

local methods = {}
local ErrorMT = {__index = methods, __metatable = "errors.Error"}
ErrorMT.__tostring = function(e)
  local d = data[e]
  return d and d.message or "error"
end

local function new_error(kind, message, context, details, retryable)
  local e = setmetatable({}, ErrorMT)
  data[e] = {kind = kind or "Unknown", message = tostring(message), context = context,
             details = details, retryable = retryable or false}
  return e
end

local function self_data(e, name)
  local d = data[e]
  if d == nil then error("bad argument #1 to '" .. name .. "' (error expected; use err:" .. name .. "())", 3) end
  return d
end

function methods.kind(e) return self_data(e, "kind").kind end
function methods.message(e) return self_data(e, "message").message end
function methods.retryable(e) return self_data(e, "retryable").retryable end
function methods.details(e) return self_data(e, "details").details end
function methods.context(e) return self_data(e, "context").context end
function methods.stack(e) self_data(e, "stack"); return "" end

local function is_error(v)
  return data[v] ~= nil
end

local errors = {
  NOT_FOUND = "NotFound", ALREADY_EXISTS = "AlreadyExists", INVALID = "Invalid",
  PERMISSION_DENIED = "PermissionDenied", UNAVAILABLE = "Unavailable", INTERNAL = "Internal",
  CANCELED = "Canceled", CONFLICT = "Conflict", TIMEOUT = "Timeout",
  RATE_LIMITED = "RateLimited", UNKNOWN = "Unknown",
}

--- errors.new("text") or errors.new({message = ..., kind = ..., retryable = ..., details = ...})
function errors.new(spec)
  if type(spec) == "string" then return new_error("Unknown", spec) end
  if type(spec) == "table" and not is_error(spec) and spec.message ~= nil then
    return new_error(spec.kind or "Unknown", spec.message, nil, spec.details, spec.retryable)
  end
  error("bad argument #1 to 'new' (string or table with a message expected)", 2)
end

--- errors.wrap(err, "context"): same kind, retryable and details; message "context: inner".
function errors.wrap(err, context)
  if err == nil then return nil end
  local d = data[err]
  local inner = d and d.message or K.render(err)
  return new_error(d and d.kind or "Unknown", tostring(context) .. ": " .. inner, nil,
                   d and d.details, d and d.retryable)
end

function errors.is(err, kind)
  local d = data[err]
  return d ~= nil and d.kind == kind
end

K.new_error = new_error
K.is_error = is_error
K.env.errors = K.readonly(errors, "errors")
return errors
