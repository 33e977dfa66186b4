"""Wippy's Lua modules (spec §9, §10; issue 3 §2): shapes, return values and error texts."""

from __future__ import annotations

import asyncio
import logging

import pytest
from test_lua_kit import FakeConsumer, FakeServices, delivery, handler, lua_check, lua_nack, run


# -- json ---------------------------------------------------------------------------------------------
def test_json_decode_values_and_shapes():
    lua_check("""
local v = json.decode('{"id": 12345, "amount": 12.5, "tags": ["a", "b"], "ok": true, "none": null}')
assert(v.id == 12345 and math.type(v.id) == "integer")
assert(v.amount == 12.5 and v.ok == true and v.none == nil)
assert(#v.tags == 2 and v.tags[1] == "a")
assert(json.decode("null") == nil)
assert(json.decode("3") == 3 and json.decode('"x"') == "x")
local arr = json.decode("[1, null, 3]")
assert(arr[1] == 1 and arr[2] == nil and arr[3] == 3)
""")


@pytest.mark.parametrize(("arg", "kind", "text"), [
    ("{}", "Invalid", "string expected"),
    ("42", "Invalid", "string expected"),
    ("nil", "Invalid", "string expected"),
    ('""', "Invalid", "empty string is not valid JSON"),
])
def test_json_decode_argument_errors(arg, kind, text):
    lua_check(f"""
local v, err = json.decode({arg})
assert(v == nil and err ~= nil)
assert(err:kind() == "{kind}" and err:kind() == errors.{kind.upper()}, err:kind())
assert(tostring(err) == "{text}" and err:message() == "{text}", tostring(err))
assert(err:retryable() == false)
""")


def test_json_decode_malformed_is_internal_decode_failed():
    lua_check("""
local v, err = json.decode("{nope")
assert(v == nil and err:kind() == errors.INTERNAL and err:context() == "decode failed")
assert(tostring(err):find("line 1 column 2"), tostring(err))
local _, nan = json.decode("NaN")
assert(nan and tostring(nan):find("not JSON"), tostring(nan))
local _, bad = json.decode("\\255")
assert(bad ~= nil)
""")


def test_json_encode_shapes():
    lua_check(r"""
assert(json.encode(nil) == "null")
assert(json.encode({}) == "[]")
assert(json.encode({1, 2, 3}) == "[1,2,3]")
assert(json.encode({b = 1, a = {x = true}}) == '{"a":{"x":true},"b":1}')
assert(json.encode(1/0) == "null" and json.encode(0/0) == "null")
assert(json.encode(2.5) == "2.5" and json.encode(3.0) == "3" and json.encode(0.1) == "0.1")
assert(json.encode('q"\n\1') == '"q\\"\\n\\u0001"', json.encode('q"\n\1'))
assert(json.encode({e = errors.new("boom")}) == '{"e":"boom"}')
""")


@pytest.mark.parametrize(("value", "text"), [
    ("(function() local t = {} t.t = t return t end)()", "cannot encode recursively nested tables to JSON"),
    ("{[1] = 1, [3] = 3}", "cannot encode sparse array: non-contiguous numeric keys found"),
    ("{1, x = 2}", "cannot encode mixed-key table: table has both numeric and non-numeric keys"),
    ("(function() local t = {} local c = t for i = 1, 200 do c[1] = {} c = c[1] end return t end)()",
     "exceeded maximum nesting depth for JSON encoding"),
    ("{f = print}", "cannot encode value of type function to JSON"),
])
def test_json_encode_errors(value, text):
    lua_check(f"""
local s, err = json.encode({value})
assert(s == nil and err:kind() == errors.INTERNAL and err:context() == "encode failed")
assert(tostring(err) == "{text}", tostring(err))
""")


def test_json_round_trip_of_a_nested_value():
    lua_check("""
local t = {id = "task-123", data = {n = {1, 2, {deep = "x"}}, s = "ñ"}}
local back = json.decode(json.encode(t))
assert(back.id == "task-123" and back.data.n[3].deep == "x" and back.data.s == "ñ")
""")


# -- logger -------------------------------------------------------------------------------------------
def _records(caplog, name="wqnb.lua.app.queue:task_handler"):
    return [r for r in caplog.records if r.name.startswith(name)]


def test_logger_dot_and_colon_calls_all_levels(caplog):
    with caplog.at_level(logging.DEBUG, logger="wqnb.lua"):
        lua_check("""
logger.debug("d", {a = 1})
logger:info("i", {b = "x"})
logger.warn("w")
logger:error("e", {err = errors.new("boom"), nested = {1, 2}, t = {k = true}})
""")
    recs = _records(caplog)
    assert [(r.levelno, r.getMessage()) for r in recs] == [(10, "d"), (20, "i"), (30, "w"), (40, "e")]
    assert recs[0].fields["a"] == 1 and recs[1].fields["b"] == "x"
    assert recs[3].fields["err"] == "boom" and recs[3].fields["nested"] == [1, 2] and recs[3].fields["t"] == {"k": True}
    assert recs[1].fields["location"] == "task_handler.lua:8"


def test_logger_keeps_a_record_with_invalid_utf8_deep_in_its_fields(caplog):
    with caplog.at_level(logging.INFO, logger="wqnb.lua"):
        lua_check(r'logger.info("bad \255", {data = {name = "\255x", ["k\255"] = {1, "\254"}}, n = 1})')
    [rec] = _records(caplog)
    assert rec.getMessage() == "bad ?" and rec.fields["n"] == 1
    assert rec.fields["data"] == {"name": "?x", "k?": [1, "?"]}


def test_logger_with_and_named(caplog):
    with caplog.at_level(logging.INFO, logger="wqnb.lua"):
        lua_check("""
local l = logger:with({request = "r1"})
l:info("one", {x = 1})
l.info("two")
local n = logger:named("db"):with({table = "t"})
n:warn("three")
local ok, err = pcall(logger.named, logger, "")
assert(not ok and err:find("name cannot be empty"))
""")
    recs = _records(caplog)
    assert [r.getMessage() for r in recs] == ["one", "two", "three"]
    assert recs[0].fields["request"] == "r1" and recs[0].fields["x"] == 1
    assert recs[1].fields["request"] == "r1"
    assert recs[2].name == "wqnb.lua.app.queue:task_handler.db" and recs[2].fields["table"] == "t"


def test_logger_named_makes_a_bounded_number_of_python_loggers(caplog):
    """Issue 14 point 15: Python keeps every logger it makes; 2,000 deliveries naming
    2,000 loggers must not make 2,000. Names past the bound log through the function's
    logger with the name in the ``logger`` field."""
    from wqnb.lua.host import MAX_NAMED_LOGGERS

    prefix = "wqnb.lua.app.queue:task_handler.bounded-"
    h = handler('local logger = require("logger")\n'
                'return function(b) logger:named("bounded-" .. b):info("hi", {n = b}) end')
    with caplog.at_level(logging.INFO, logger="wqnb.lua"):
        for i in range(2000):
            assert run(h, str(i)) is None
    made = [name for name in logging.Logger.manager.loggerDict if name.startswith(prefix)]
    assert len(made) == MAX_NAMED_LOGGERS == 64
    recs = _records(caplog)
    assert len(recs) == 2000
    assert recs[0].name == prefix + "0" and "logger" not in recs[0].fields
    assert recs[1999].name == "wqnb.lua.app.queue:task_handler"
    assert recs[1999].fields == {"n": "1999", "logger": "bounded-1999", "location": recs[1999].fields["location"]}
    assert run(h, "0") is None  # a name seen before keeps its own logger
    assert len([n for n in logging.Logger.manager.loggerDict if n.startswith(prefix)]) == 64


def test_logger_respects_python_levels_set_between_deliveries(caplog):
    h = handler('local logger = require("logger")\nreturn function(b) logger.info("hello", {n = b}) end')
    lg = logging.getLogger("wqnb.lua.app.queue:task_handler")
    caplog.set_level(logging.DEBUG)
    try:
        lg.setLevel(logging.WARNING)
        run(h, "1")
        lg.setLevel(logging.INFO)
        run(h, "2")
        logging.disable(logging.INFO)
        run(h, "3")
    finally:
        logging.disable(logging.NOTSET)
        lg.setLevel(logging.NOTSET)
    assert [r.fields["n"] for r in _records(caplog)] == ["2"]


def test_the_log_threshold_follows_every_kind_of_level_change():
    # it is cached between deliveries; each change below must still be seen at once
    host = handler('return function(b) end', modules=("logger",)).host
    lg = logging.getLogger("wqnb.lua.app.queue:task_handler")
    parent = logging.getLogger("wqnb.lua")
    try:
        seen = [host.log_threshold()]
        parent.setLevel(logging.ERROR)            # an ancestor's level
        seen.append(host.log_threshold())
        lg.setLevel(logging.DEBUG)                # the logger's own
        seen.append(host.log_threshold())
        logging.disable(logging.INFO)             # the global switch
        seen.append(host.log_threshold())
        logging.disable(logging.NOTSET)
        lg.disabled = True                        # what logging.config does to old loggers
        seen.append(host.log_threshold())
        lg.disabled = False
        seen.append(host.log_threshold())
    finally:
        logging.disable(logging.NOTSET)
        lg.disabled = False
        lg.setLevel(logging.NOTSET)
        parent.setLevel(logging.NOTSET)
    root = logging.getLogger().getEffectiveLevel()
    assert seen == [root, logging.ERROR, logging.DEBUG, logging.INFO + 1, 1000, logging.DEBUG]


def test_logger_argument_errors():
    assert lua_nack("logger.info({})") == "task_handler.lua:6: bad argument #1 to 'info' (string expected, got table)"
    assert lua_nack('logger:info("x", 5)') == "task_handler.lua:6: bad argument #2 to 'info' (table expected, got number)"
    assert "read-only" in lua_nack("logger.info = nil")


# -- queue.publish -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("call", "kind", "text"), [
    ("queue.publish()", "Invalid", "queue ID required"),
    ('queue.publish("")', "Invalid", "queue ID required"),
    ('queue.publish("app.queue:tasks")', "Invalid", "message data required"),
    ('queue.publish("app.queue:tasks", {})', "Invalid", "message data cannot be empty"),
    ('queue.publish("app.queue:nope", {id = 1})', "Internal", "queue not found"),
])
def test_publish_errors_with_wippys_texts(call, kind, text):
    lua_check(f"""
local ok, err = {call}
assert(ok == nil, "expected nil, err")
assert(err:kind() == "{kind}" and tostring(err) == "{text}", err:kind() .. ": " .. tostring(err))
assert(err:retryable() == false)
""")


def test_publish_a_non_string_queue_id_raises():
    assert lua_nack("queue.publish({}, 1)") == "task_handler.lua:6: bad argument #1 to 'publish' (string expected, got table)"


def test_publish_sends_json_text_strings_and_headers():
    svc = FakeServices()
    lua_check("""
assert(queue.publish("app.queue:tasks", {id = "task-123", action = "process", data = {1, 2}}) == true)
assert(queue.publish("app.queue:tasks", "plain text") == true)
assert(queue.publish("app.queue:tasks", 0) == true)
assert(queue.publish("app.queue:tasks", "h", {priority = 5, correlation_id = "c1", ok = true, bad = {}, [1] = "x"}) == true)
""", services=svc)
    bodies = [b for _, b, _ in svc.published]
    assert bodies == ['{"action":"process","data":[1,2],"id":"task-123"}', "plain text", 0, "h"]
    assert svc.published[3][2] == {"priority": 5, "correlation_id": "c1", "ok": True, "bad": None}
    assert svc.published[0][2] is None


# -- queue.message ------------------------------------------------------------------------------------
def test_message_methods():
    lua_check("""
local msg, err = queue.message()
assert(msg and err == nil)
assert(msg:id() == "m-1")
assert(msg:header("priority") == 5 and msg:header("correlation_id") == "c1")
assert(msg:header("missing") == nil)
assert(msg:header("none") == "<nil>")
local h = msg:headers()
assert(h.priority == 5 and h.timestamp == 1767225600)
assert(tostring(msg) == "queue.Message{id=m-1}")
assert(queue.message() == msg)
local ok, e = pcall(msg.id)
assert(not ok and e:find("call it as msg:id"), e)
""", headers={"priority": 5, "correlation_id": "c1", "timestamp": 1767225600, "none": None})


def test_ack_and_nack_are_single_shot_with_wippys_texts():
    consumer = FakeConsumer()
    h = handler("""local queue = require("queue")
return function()
  local msg = queue.message()
  assert(msg:ack() == true)
  local ok, err = msg:ack()
  assert(ok == nil and err:kind() == "Invalid" and tostring(err) == "queue.Message already settled")
  ok, err = msg:nack()
  assert(ok == nil and tostring(err) == "queue.Message already settled")
end""")
    asyncio.run(h(delivery(consumer=consumer)))
    assert consumer.settled == [("ack", "m-1", None)]


def test_nack_passes_a_reason():
    consumer = FakeConsumer()
    h = handler('local queue = require("queue")\nreturn function() queue.message():nack("try later") end')
    asyncio.run(h(delivery(consumer=consumer)))
    assert consumer.settled == [("nack", "m-1", "try later")]


def test_a_stashed_message_is_released_after_its_handler_returns():
    h = handler("""local queue = require("queue")
local stash
return function(body)
  if body == "first" then stash = queue.message() return end
  local id, err = stash:id()
  assert(id == nil and tostring(err) == "queue.Message released", tostring(err))
  local ok, e2 = stash:ack()
  assert(ok == nil and tostring(e2) == "queue.Message released")
  assert(tostring(stash) == "queue.Message{released}")
end""")
    assert run(h, "first") is None
    assert run(h, "second") is None


def test_message_outside_a_delivery():
    with pytest.raises(Exception, match="no delivery found in context"):
        handler('local queue = require("queue")\nlocal m, err = queue.message()\nerror(tostring(err), 0)')


# -- queue.info ---------------------------------------------------------------------------------------
def test_info():
    lua_check("""
local info = queue.info("app.queue:tasks")
assert(info.message_count == 2 and info.ready == 2)
local none, err = queue.info("app.queue:nope")
assert(none == nil and err:kind() == errors.INTERNAL and tostring(err) == "queue not found")
local _, e2 = queue.info("")
assert(tostring(e2) == "queue ID required" and e2:kind() == errors.INVALID)
""")


# -- time ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("arg", "seconds"), [
    ('"50ms"', 0.05), ('"1.5s"', 1.5), ("50 * time.MILLISECOND", 0.05), ("2000000", 0.002),
    ('"1m30s"', 90.0), ('time.parse_duration("250ms")', 0.25), ("time.SECOND", 1.0), ("-5", 0.0),
])
def test_sleep_duration_forms(arg, seconds):
    svc = FakeServices()
    lua_check(f"time.sleep({arg})", services=svc)
    assert svc.slept == [pytest.approx(seconds)]


@pytest.mark.parametrize("arg", ['"soon"', '"1.5"', "{}"])
def test_sleep_rejects_bad_durations(arg):
    assert "bad argument #1 to 'sleep'" in lua_nack(f"time.sleep({arg})")


def test_durations_too_long_for_go_are_refused_with_their_text_cut_short():
    """A string of 400 nines and an h is infinite; 2,562,048 hours is past Go's int64 of ns."""
    text = lua_nack('time.sleep("' + "9" * 400 + 'h")')
    assert text == ("task_handler.lua:6: bad argument #1 to 'sleep' (duration: must be a finite number of seconds, "
                    "got '" + "9" * 39 + "..." + "9" * 8 + "h' (403 characters))")
    lua_check('local d, err = time.parse_duration("2562048h")\n'
              'assert(d == nil and tostring(err) == "duration: longer than Go\'s longest duration (about 292 years), '
              'got \'2562048h\'", tostring(err))\n'
              'assert(time.parse_duration("2562047h"):hours() == 2562047)')


@pytest.mark.parametrize(("arg", "what"), [("0/0", "nan"), ("math.huge", "inf"), ("-math.huge", "-inf")])
def test_sleep_refuses_non_finite_durations(arg, what):
    svc = FakeServices()
    text = lua_nack(f"time.sleep({arg})", services=svc)
    assert text == f"task_handler.lua:6: bad argument #1 to 'sleep' (duration must be finite, got {what})"
    assert svc.slept == []
    lua_check(f"""
local d, err = time.parse_duration({arg})
assert(d == nil and err:kind() == errors.INVALID and tostring(err) == "duration must be finite, got {what}", tostring(err))
assert(not pcall(time.now().add, time.now(), {arg}))
""")


def test_a_time_out_of_the_calendars_range_fails_clearly():
    lua_check("""
local far = time.now():add(1e30)
local ok, err = pcall(far.format, far, time.DATE_ONLY)
assert(not ok and err:find("bad argument #1 to 'format' (time out of range (", 1, true), err)
assert(not err:find("UTF-8"), err)
ok, err = pcall(far.format_rfc3339, far)
assert(not ok and err:find("time out of range", 1, true), err)
assert(tostring(far):find("time.Time{unix_nano=1.0", 1, true) == 1, tostring(far))
""")


def test_a_time_format_error_names_the_handlers_line():
    assert lua_nack("local x = 1\nlocal s = time.now():add(1e30):format(time.DATE_ONLY)").startswith(
        "task_handler.lua:7: bad argument #1 to 'format' (time out of range (")
    assert lua_nack("local x = 1\nlocal s = time.unix(0 / 0):format_rfc3339()").startswith(
        "task_handler.lua:7: bad argument #1 to 'format_rfc3339' (time out of range (")


def test_time_methods_called_on_the_wrong_value_name_the_handlers_line():
    assert lua_nack('local x = 1\nlocal s = time.parse_duration("1s").nanoseconds({})') == \
        "task_handler.lua:7: bad argument #1 to 'nanoseconds' (Duration expected)"
    assert lua_nack("local x = 1\nlocal s = time.now().unix_nano({})") == \
        "task_handler.lua:7: bad argument #1 to 'unix_nano' (Time expected)"


def test_a_failed_host_call_is_not_blamed_on_utf8_unless_it_is():
    lua_check(r"""
local _, err = time.parse_duration("\255")
assert(tostring(err):find("^host call failed: 'utf%-8' codec can't decode"), tostring(err))
""")


def test_now_and_durations():
    lua_check("""
local t = time.now()
assert(t:unix() == 1767225600 and t:unix_nano() == 1767225600250000000)
assert(t:format_rfc3339() == "2026-01-01T00:00:00Z", t:format_rfc3339())
assert(tostring(t) == "2026-01-01T00:00:00.25Z", tostring(t))
local later = t:add("1h30m")
assert(later:after(t) and t:before(later) and later > t)
local d = later:sub(t)
assert(d:hours() == 1.5 and d:minutes() == 90 and tostring(d) == "1h30m0s", tostring(d))
assert(tostring(time.parse_duration("1.5s")) == "1.5s" and tostring(time.parse_duration(50 * time.MILLISECOND)) == "50ms")
local _, err = time.parse_duration("soon")
assert(err:kind() == errors.INVALID)
assert(time.unix(0, 0):format(time.DATE_ONLY) == "1970-01-01")
assert(time.MINUTE == 60 * time.SECOND and time.HOUR == 60 * time.MINUTE)
""")


# -- errors -------------------------------------------------------------------------------------------
def test_errors_global():
    lua_check("""
local e = errors.new({message = "not here", kind = errors.NOT_FOUND, details = {id = 1}})
assert(e:kind() == "NotFound" and e:message() == "not here" and e:details().id == 1)
assert(errors.is(e, errors.NOT_FOUND) and not errors.is(e, errors.INVALID))
local w = errors.wrap(e, "loading user")
assert(tostring(w) == "loading user: not here" and w:kind() == "NotFound")
assert(errors.new("plain"):kind() == errors.UNKNOWN)
""")
