"""Loading and running Lua handlers (issue 3 §1, §5): the seed handler, method tables,
require, syntax and runtime errors with file and line, `return nil, err`, error tables."""

from __future__ import annotations

import asyncio
import logging

import pytest
from test_lua_kit import (
    FakeConsumer,
    FakeServices,
    delivery,
    handler,
    lua_check,
    lua_nack,
    run,
    seed_source,
    spec,
)

from wqnb.errors import ConfigError, HandlerError
from wqnb.handlers.lua import (
    LuaError,
    LuaHandlerError,
    check_lua_function,
    engine,
    load_lua_function,
)


# -- the seed handler ----------------------------------------------------------------------------
def test_seed_handler_acks_a_json_body_and_logs_the_task_id(caplog):
    h = handler(seed_source(), modules=("json", "logger"))
    with caplog.at_level(logging.INFO, logger="wqnb.lua"):
        assert run(h, '{"id": "task-123", "action": "process"}') is None
    [rec] = [r for r in caplog.records if r.name == "wqnb.lua.app.queue:task_handler"]
    assert rec.levelno == logging.INFO and rec.getMessage() == "Procesando"
    assert rec.fields["task_id"] == "task-123"
    assert rec.fields["location"].startswith("task_handler.lua:")


def test_seed_handler_return_nil_err_nacks_with_err():
    h = handler(seed_source(), modules=("json", "logger"))
    outcome = run(h, '{"id": 7, "fail": true}')
    assert type(outcome) is HandlerError
    assert str(outcome) == "cannot process 7"


def test_seed_handler_accepts_bytes_bodies():
    h = handler(seed_source(), modules=("json", "logger"))
    assert run(h, b'{"id": 1}') is None


# -- what a chunk may return ---------------------------------------------------------------------
def test_method_picks_a_function_from_the_returned_table():
    src = "local M = {}\nfunction M.handle(body) return nil, 'handled ' .. body end\nreturn M\n"
    assert str(run(handler(src, method="handle"), "x")) == "handled x"


def test_method_may_name_a_global_when_the_chunk_returns_nothing():
    src = "function handle(body) return nil, 'global ' .. body end\n"
    assert str(run(handler(src, method="handle"), "y")) == "global y"


def test_missing_method_fails_loading_naming_entry_and_field():
    src = "return {other = function() end}\n"
    with pytest.raises(ConfigError) as e:
        handler(src, method="handle")
    assert e.value.entry == "app.queue:task_handler" and e.value.field == "method"
    assert "method 'handle' not found in the table task_handler.lua returns" in str(e.value)


def test_a_table_without_method_lists_its_functions():
    with pytest.raises(ConfigError, match=r"returns a table: set method: to the handler's name \(a, b\)"):
        handler("return {a = function() end, b = function() end}\n")


def test_a_chunk_returning_nothing_is_refused():
    with pytest.raises(ConfigError, match="must return the handler function"):
        handler("local x = 1\n")


def test_top_level_runtime_error_fails_loading_with_file_and_line():
    with pytest.raises(ConfigError, match=r"task_handler\.lua:2: boom"):
        handler("local x = 1\nerror('boom')\n")


def test_top_level_cannot_sleep():
    with pytest.raises(ConfigError, match=r"task_handler\.lua:2: cannot wait here: .* wait only inside a handler call"):
        handler('local time = require("time")\ntime.sleep("1ms")\nreturn function() end\n')


# -- syntax errors: file and line, at load time ------------------------------------------------------
def test_syntax_error_names_entry_file_and_line():
    bad = spec("local json = require('json')\nlocal x = = 1\nreturn function() end\n")
    with pytest.raises(ConfigError) as e:
        check_lua_function(bad)
    assert e.value.entry == "app.queue:task_handler" and e.value.field == "source"
    assert "task_handler.lua:2:" in str(e.value)
    assert "unexpected symbol near '='" in str(e.value)
    with pytest.raises(ConfigError, match=r"task_handler\.lua:2:"):
        load_lua_function(bad, FakeServices().services())


def test_inline_code_is_named_by_the_entry_id():
    with pytest.raises(ConfigError, match=r"app\.queue:task_handler:1:"):
        check_lua_function(spec("return function( end", file=None))


def test_check_accepts_the_seed_handler():
    check_lua_function(spec(seed_source(), modules=("json", "logger")))


def test_unknown_module_in_the_entry_is_a_config_error():
    with pytest.raises(ConfigError) as e:
        check_lua_function(spec("return function() end", modules=("json", "http")))
    assert e.value.field == "modules" and "unknown module 'http'" in str(e.value)


@pytest.mark.parametrize(("option", "value"), [("max_memory", "lots"), ("max_memory", -1),
                                                 ("instruction_limit", "many"), ("instruction_limit", -5)])
def test_bad_limits_are_config_errors(option, value):
    with pytest.raises(ConfigError) as e:
        check_lua_function(spec("return function() end", **{option: value}))
    assert e.value.field == option


def test_max_memory_takes_sizes():
    h = handler("return function() end", max_memory="8MB")
    assert h.max_memory == 8 * 1024 * 1024
    assert h.lua.get_max_memory() == 8 * 1024 * 1024


# -- require ------------------------------------------------------------------------------------------
def test_require_returns_only_listed_modules():
    src = 'local json = require("json")\nreturn function() local q = require("queue") end'
    assert str(run(handler(src, modules=("json",)))) == "task_handler.lua:2: module 'queue' not found"


@pytest.mark.parametrize("name", ["os", "io", "debug", "package", "string", "lupa", "python", "wqnb"])
def test_require_of_anything_else_fails_with_wippys_text(name):
    text = lua_nack(f'require("{name}")')
    assert text == f"task_handler.lua:6: module '{name}' not found"


def test_listed_modules_are_the_same_object_each_time_and_read_only():
    lua_check('assert(require("json") == require("json"))')
    text = lua_nack('local json = require("json")\njson.decode = nil')
    assert "attempt to modify read-only table 'json'" in text


# -- runtime errors, return values ---------------------------------------------------------------------
def test_runtime_error_nacks_with_the_lua_text_and_line():
    text = lua_nack("local data = nil\nreturn data.id")
    assert text == "task_handler.lua:7: attempt to index a nil value (local 'data')"


def test_runtime_error_is_the_engines_error_class_caught_and_reraised_as_handler_error():
    outcome = run(handler("return function() error('x') end"))
    assert isinstance(outcome, LuaHandlerError) and isinstance(outcome, HandlerError)
    assert LuaError is engine.LuaError and engine.__name__ == "lupa.lua54"


def test_error_tables_are_rendered_readably_with_the_line_that_raised_them():
    text = lua_nack('error({code = "E42", message = "boom", retry = false, ids = {1, 2}})')
    assert text == 'task_handler.lua:6: {code = "E42", ids = {1, 2}, message = "boom", retry = false}'


def test_an_error_object_raised_gets_its_message_and_line():
    assert lua_nack('local err = errors.new("out of stock")\nerror(err)') == "task_handler.lua:7: out of stock"
    # raised inside a function of the handler, rethrown through pcall and coroutine.wrap
    assert lua_nack("local function f() error({code = 'E1'}) end\n"
                    "local ok, e = pcall(f)\ncoroutine.wrap(function() error(e) end)()") == \
        'task_handler.lua:8: {code = "E1"}'


def test_an_error_object_raised_at_load_gets_its_line():
    with pytest.raises(ConfigError, match=r'task_handler\.lua:2: \{code = "E42"\}'):
        handler("local x = 1\nerror({code = 'E42'})\nreturn function() end")


def test_a_string_error_keeps_lua_s_own_position_or_none():
    assert lua_nack('error("no position", 0)') == "no position"


def test_return_nil_with_a_table_renders_it():
    assert lua_nack('return nil, {reason = "bad input"}') == '{reason = "bad input"}'


def test_return_nil_with_an_error_object_gives_its_message():
    assert lua_nack('return nil, errors.new("out of stock")') == "out of stock"


def test_error_with_a_non_string_value():
    assert lua_nack("error(42)") == "task_handler.lua:6: 42"
    assert lua_nack("error()") == "task_handler.lua:6: nil"


@pytest.mark.parametrize("ret", ["return false", "return nil", "return", "return {1, 2}", "return true, nil"])
def test_any_plain_return_acks(ret):
    assert run(handler(f"return function() {ret} end")) is None


def test_a_recursive_error_table_is_rendered_without_looping():
    assert lua_nack("local t = {name = 'loop'}\nt.self = t\nerror(t)") == 'task_handler.lua:8: {name = "loop", self = {...}}'


def test_invalid_utf8_in_an_error_text_becomes_question_marks():
    assert lua_nack('error("bad \\255 byte", 0)') == "bad ? byte"


# -- handler state -------------------------------------------------------------------------------------
def test_globals_persist_across_deliveries_of_one_function():
    h = handler("count = 0\nreturn function() count = count + 1\nreturn nil, tostring(count) end")
    assert [str(run(h)) for _ in range(3)] == ["1", "2", "3"]


def test_each_function_has_its_own_runtime():
    a = handler("x = 'a'\nreturn function() return nil, x end")
    b = handler("return function() return nil, tostring(x) end")
    assert str(run(a)) == "a" and str(run(b)) == "nil"


def test_runners_are_reused_after_errors():
    h = handler("return function(body) if body == 'bad' then error('no', 0) end end")
    for body in ["ok", "bad", "ok", "bad", "ok"]:
        run(h, body)
    assert len(h._idle) == 1


def test_a_delivery_settled_by_the_handler_is_recorded_once():
    consumer = FakeConsumer()
    h = handler('local queue = require("queue")\nreturn function() queue.message():ack() end')
    asyncio.run(h(delivery(consumer=consumer)))
    assert consumer.settled == [("ack", "m-1", None)]
