"""Entries (DESIGN §2): the seed page's YAML, Wippy's validation texts, references, cycles."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from _helpers import SEED_APP, SEED_CONSUMER, SEED_DRIVER, SEED_QUEUE, app

import wqnb
from wqnb.registry import ConsumerEntry, DriverEntry, QueueEntry, Registry, split_id

# The seed page, vendored verbatim (see tests/fixtures/README.md) so this check never skips.
SPEC = Path(__file__).parent / "fixtures" / "seed-queue.es.md"


def load(text: str, name: str = "<string>") -> Registry:
    reg = Registry().load_string(textwrap.dedent(text), name=name)
    reg.check()
    return reg


def consumer_yaml(**fields: object) -> str:
    """A valid app whose consumer ``t:c`` has the given raw fields (None: field left out)."""
    base = {"queue": "t:tasks", "func": "t:h"}
    base.update(fields)
    body = "".join(f"    {k}: {v}\n" for k, v in base.items() if v is not None)
    return (
        "namespace: t\nentries:\n"
        "  - {name: mem, kind: queue.driver.memory}\n"
        "  - {name: tasks, kind: queue.queue, driver: t:mem}\n"
        "  - name: c\n    kind: queue.consumer\n" + body
    )


def where(entry: str, field: str, text: str, file: str = "<string>") -> str:
    """The anchored regex of a ConfigError's full text."""
    return "^" + re.escape(f"{file}: entry {entry}: field '{field}': {text}") + "$"


# -- the seed page -------------------------------------------------------------------------------
def test_seed_blocks_are_verbatim_copies_of_the_spec():
    blocks = re.findall(r"```yaml\n(.*?)```", SPEC.read_text(encoding="utf-8"), re.DOTALL)
    for block in (SEED_DRIVER, SEED_QUEUE, SEED_CONSUMER):
        assert block in blocks


def test_seed_yaml_loads_with_its_values():
    reg = load(SEED_APP)
    drv = reg.entries["app.queue:memory_driver"]
    q = reg.entries["app.queue:tasks"]
    c = reg.entries["app.queue:task_consumer"]
    assert isinstance(drv, DriverEntry) and drv.kind == "queue.driver.memory"
    assert drv.lifecycle.auto_start is True
    assert isinstance(q, QueueEntry)
    assert (q.driver, q.max_length, q.dead_letter, q.max_attempts) == ("app.queue:memory_driver", 1000, None, None)
    assert isinstance(c, ConsumerEntry)
    assert (c.queue, c.func, c.concurrency, c.prefetch) == ("app.queue:tasks", "app.queue:task_handler", 4, 20)
    assert c.lifecycle.auto_start is True
    assert c.lifecycle.depends_on == ("app.queue:tasks",)
    assert c.lifecycle.stop_timeout == 10.0
    assert c.requeue_delay == 0.0 and c.timeout is None
    order = reg.start_order()
    assert order.index("app.queue:memory_driver") < order.index("app.queue:tasks") < order.index(
        "app.queue:task_consumer"
    )


@pytest.mark.parametrize(
    "entry_id,expected",
    [
        ("app.queue:tasks", ("app.queue", "tasks")),
        ("app:create_task.endpoint", ("app", "create_task.endpoint")),
        ("a:b:c", ("a", "b:c")),
        ("plain", ("", "plain")),
    ],
)
def test_ids_split_at_the_first_colon(entry_id, expected):
    assert split_id(entry_id) == expected


def test_bare_references_take_the_entry_namespace():
    reg = load(
        """\
        namespace: app.queue
        entries:
          - {name: drv, kind: queue.driver.memory}
          - {name: tasks, kind: queue.queue, driver: drv}
          - {name: c, kind: queue.consumer, queue: tasks, func: h, lifecycle: {depends_on: [tasks]}}
        """
    )
    c = reg.entries["app.queue:c"]
    assert (c.queue, c.func, c.lifecycle.depends_on) == ("app.queue:tasks", "app.queue:h", ("app.queue:tasks",))
    assert reg.entries["app.queue:tasks"].driver == "app.queue:drv"


def test_single_entry_form_and_data_key():
    reg = Registry().load_string("namespace: n\nname: drv\nkind: queue.driver.memory\n")
    assert list(reg.entries) == ["n:drv"]
    reg = load(
        """\
        namespace: n
        entries:
          - {name: drv, kind: queue.driver.memory}
          - {name: q, kind: queue.queue, data: {driver: n:drv, options: {max_length: 7}}}
        """
    )
    assert reg.entries["n:q"].max_length == 7


@pytest.mark.parametrize(
    "opts,expected",
    [
        ("", 1000),
        ("    options: {max_length: 5}\n", 5),
        ("    driver_options: {memory: {max_length: 9}}\n", 9),
        ("    driver_options: {memory: {max_length: 9.0}}\n", 9),  # Wippy's bags arrive as floats
    ],
)
def test_queue_max_length_from_options_or_driver_options(opts, expected):
    reg = load(
        "namespace: n\nentries:\n  - {name: d, kind: queue.driver.memory}\n"
        "  - name: q\n    kind: queue.queue\n    driver: n:d\n" + opts
    )
    assert reg.entries["n:q"].max_length == expected


# -- Wippy's validation texts (spec §2.3) -----------------------------------------------------------------
@pytest.mark.parametrize(
    "fields,field,text",
    [
        ({"concurrency": 1001}, "concurrency", "concurrency 1001 exceeds maximum 1000"),
        ({"prefetch": 10001}, "prefetch", "prefetch 10001 exceeds maximum 10000"),
        ({"queue": None}, "queue", "queue ID is required"),
        ({"queue": '""'}, "queue", "queue ID is required"),
        ({"queue": '"t:"'}, "queue", "queue ID is required"),  # the name part must be non-empty
        ({"func": None}, "func", "function ID is required"),
        ({"func": '""'}, "func", "function ID is required"),
        # Wippy's order: queue, func, concurrency, prefetch
        ({"queue": None, "func": None}, "queue", "queue ID is required"),
        ({"func": None, "concurrency": 5000}, "func", "function ID is required"),
        ({"concurrency": 1001, "prefetch": 10001}, "concurrency", "concurrency 1001 exceeds maximum 1000"),
    ],
)
def test_consumer_validation_texts(fields, field, text):
    with pytest.raises(wqnb.ConfigError, match=where("t:c", field, text)) as ei:
        load(consumer_yaml(**fields))
    assert (ei.value.entry, ei.value.field, ei.value.message) == ("t:c", field, text)


@pytest.mark.parametrize("driver", [None, '""', '"t:"'])
def test_queue_without_driver(driver):
    extra = f", driver: {driver}" if driver is not None else ""
    text = "namespace: t\nentries:\n  - {name: tasks, kind: queue.queue" + extra + "}\n"
    with pytest.raises(wqnb.ConfigError, match=where("t:tasks", "driver", "driver ID is required")):
        load(text)


@pytest.mark.parametrize(
    "concurrency,prefetch,expected",
    [
        (1000, 10000, (1000, 10000)),  # the maxima themselves are accepted
        (0, 0, (1, 10)),
        (-1, -1, (1, 10)),
        (None, None, (1, 10)),
        (3, 1, (3, 1)),  # prefetch below concurrency is allowed
    ],
)
def test_consumer_defaults_and_maxima(concurrency, prefetch, expected):
    reg = load(consumer_yaml(concurrency=concurrency, prefetch=prefetch))
    c = reg.entries["t:c"]
    assert (c.concurrency, c.prefetch) == expected


@pytest.mark.parametrize("value", ['"four"', "2.5", "true", "[1]"])
def test_concurrency_must_be_an_integer(value):
    with pytest.raises(wqnb.ConfigError, match=r"^<string>: entry t:c: field 'concurrency': concurrency must be an integer"):
        load(consumer_yaml(concurrency=value))


def test_unknown_kind_names_entry_and_field():
    text = "namespace: t\nentries:\n  - {name: x, kind: queue.bogus}\n"
    with pytest.raises(wqnb.ConfigError, match=r"^<string>: entry t:x: field 'kind': unknown entry kind 'queue.bogus'") as ei:
        load(text)
    assert "queue.consumer" in str(ei.value)  # it lists what it knows


def test_function_lua_entries_load_in_shape():
    reg = load(
        """\
        namespace: app.queue
        entries:
          - name: task_handler
            kind: function.lua
            source: |
              return function(body) return body end
            method: handler
            modules: [json, logger]
        """
    )
    f = reg.entries["app.queue:task_handler"]
    assert (f.kind, f.method, f.modules) == ("function.lua", "handler", ("json", "logger"))


def test_function_lua_missing_source_file_names_it(tmp_path):
    (tmp_path / "app.yaml").write_text(
        "namespace: n\nentries:\n  - {name: h, kind: function.lua, source: file://nope.lua}\n"
    )
    with pytest.raises(wqnb.ConfigError, match=r"entry n:h: field 'source': cannot read .*nope\.lua"):
        Registry().load(tmp_path / "app.yaml")


# -- references -------------------------------------------------------------------------------------
def test_unknown_driver_fails_at_load():
    text = "namespace: t\nentries:\n  - {name: tasks, kind: queue.queue, driver: t:nope}\n"
    with pytest.raises(wqnb.ConfigError, match=where("t:tasks", "driver", "driver not found: t:nope")):
        wqnb.Runtime.from_yaml_string(text)


def test_unknown_queue_fails_at_load():
    text = consumer_yaml(queue="t:nope")
    with pytest.raises(wqnb.ConfigError, match=where("t:c", "queue", "queue not found: t:nope")):
        wqnb.Runtime.from_yaml_string(text)


def test_unknown_dead_letter_queue_fails_at_load():
    text = (
        "namespace: t\nentries:\n  - {name: mem, kind: queue.driver.memory}\n"
        "  - {name: tasks, kind: queue.queue, driver: t:mem, dead_letter: {queue: t:nope, max_attempts: 2}}\n"
    )
    with pytest.raises(wqnb.ConfigError, match=where("t:tasks", "dead_letter.queue", "queue not found: t:nope")):
        wqnb.Runtime.from_yaml_string(text)


def test_reference_to_the_wrong_kind():
    text = consumer_yaml(queue="t:mem")
    with pytest.raises(wqnb.ConfigError, match=where("t:c", "queue", "t:mem is a queue.driver.memory")):
        wqnb.Runtime.from_yaml_string(text)
    text = consumer_yaml(func="t:tasks")
    with pytest.raises(wqnb.ConfigError, match=where("t:c", "func", "t:tasks is a queue.queue, not a function")):
        wqnb.Runtime.from_yaml_string(text)


def test_unknown_func_loads_then_fails_start_naming_consumer_and_field():
    rt = wqnb.Runtime.from_yaml_string(app())  # t:h is never registered

    async def main():
        with pytest.raises(
            wqnb.ConfigError,
            match=r"^<string>: entry t:c: field 'func': function not found: t:h \(neither a function entry",
        ):
            await rt.start()
        # nothing ran: no consumer was created, nothing recorded, not running
        assert rt.consumers == {} and rt.state != "running" and len(rt.timeline.df) == 0

    wqnb.run_virtual(main())


def test_depends_on_an_undefined_entry():
    text = consumer_yaml(lifecycle="{depends_on: [t:ghost]}")
    with pytest.raises(
        wqnb.ConfigError, match=where("t:c", "lifecycle.depends_on", "depends on t:ghost, which is not defined")
    ):
        wqnb.Runtime.from_yaml_string(text)


def test_depends_on_cycle_names_the_entries():
    text = textwrap.dedent(
        """\
        namespace: t
        entries:
          - {name: mem, kind: queue.driver.memory}
          - {name: tasks, kind: queue.queue, driver: t:mem}
          - {name: a, kind: queue.consumer, queue: t:tasks, func: t:h, lifecycle: {depends_on: [t:b]}}
          - {name: b, kind: queue.consumer, queue: t:tasks, func: t:h, lifecycle: {depends_on: [t:a]}}
        """
    )
    with pytest.raises(wqnb.CycleError, match=r"dependency cycle: t:a -> t:b -> t:a$") as ei:
        wqnb.Runtime.from_yaml_string(text)
    assert isinstance(ei.value, wqnb.ConfigError) and ei.value.field == "lifecycle.depends_on"


def test_cycle_through_references():
    # the driver depends on the consumer, which (through its queue) depends on the driver
    text = textwrap.dedent(
        """\
        namespace: t
        entries:
          - {name: mem, kind: queue.driver.memory, lifecycle: {depends_on: [t:c]}}
          - {name: tasks, kind: queue.queue, driver: t:mem}
          - {name: c, kind: queue.consumer, queue: t:tasks, func: t:h}
        """
    )
    with pytest.raises(wqnb.CycleError, match=r"dependency cycle: .*t:mem.*t:c"):
        wqnb.Runtime.from_yaml_string(text)


def test_start_order_follows_depends_on():
    text = textwrap.dedent(
        """\
        namespace: t
        entries:
          - {name: b, kind: queue.consumer, queue: t:tasks, func: t:h, lifecycle: {depends_on: [t:a]}}
          - {name: a, kind: queue.consumer, queue: t:tasks, func: t:h}
          - {name: tasks, kind: queue.queue, driver: t:mem}
          - {name: mem, kind: queue.driver.memory}
        """
    )
    order = load(text).start_order()
    assert order.index("t:mem") < order.index("t:tasks") < order.index("t:a") < order.index("t:b")


# -- durations -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw,seconds",
    [('"200ms"', 0.2), ('"1.5s"', 1.5), ('"1m30s"', 90.0), ("2", 2.0), ("0.25", 0.25), ('"3"', 3.0), ('"500us"', 0.0005)],
)
def test_durations(raw, seconds):
    c = load(consumer_yaml(requeue_delay=raw, timeout=raw, lifecycle=f"{{stop_timeout: {raw}}}")).entries["t:c"]
    assert c.requeue_delay == pytest.approx(seconds, rel=1e-12)
    assert c.timeout == pytest.approx(seconds, rel=1e-12)
    assert c.lifecycle.stop_timeout == pytest.approx(seconds, rel=1e-12)


@pytest.mark.parametrize(
    "key,raw,text",
    [
        ("requeue_delay", '"fast"', "requeue_delay: invalid duration 'fast'"),
        ("timeout", '"10 parsecs"', "timeout: invalid duration '10 parsecs'"),
        ("timeout", "-1", "timeout: must not be negative, got -1"),
        ("requeue_delay", '"-2s"', "requeue_delay: invalid duration '-2s'"),
        ("timeout", "true", "timeout: expected a duration like '200ms' or seconds, got True"),
    ],
)
def test_bad_durations_name_the_field(key, raw, text):
    with pytest.raises(wqnb.ConfigError, match="^" + re.escape(f"<string>: entry t:c: field '{key}': {text}")):
        load(consumer_yaml(**{key: raw}))


def test_bad_stop_timeout_names_the_lifecycle_field():
    with pytest.raises(
        wqnb.ConfigError,
        match=re.escape("entry t:c: field 'lifecycle.stop_timeout': lifecycle.stop_timeout: invalid duration 'soon'"),
    ):
        load(consumer_yaml(lifecycle='{stop_timeout: "soon"}'))


# -- file-level errors (spec §1.4) -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "entries,text",
    [
        ("  - {kind: queue.driver.memory}\n", "entry[0].name: name is required and must be a non-empty string"),
        ("  - {name: '', kind: queue.driver.memory}\n", "entry[0].name: name is required and must be a non-empty string"),
        (
            "  - {name: a, kind: queue.driver.memory}\n  - {name: b}\n",
            "entry[1].kind: kind is required and must be a non-empty string",
        ),
        ("  - {name: b, kind: ''}\n", "entry[0].kind: kind is required and must be a non-empty string"),
    ],
)
def test_entry_name_and_kind_required(entries, text):
    with pytest.raises(wqnb.ConfigError, match="^" + re.escape(f"<string>: {text}") + "$"):
        Registry().load_string("namespace: n\nentries:\n" + entries)


def test_file_without_entries_or_single_entry():
    with pytest.raises(
        wqnb.ConfigError,
        match=r"^<string>: entry\[0\]\.entries: either entries array or single entry \(name/kind\) must be provided$",
    ):
        Registry().load_string("namespace: n\nversion: '1.0'\n")


def test_namespace_required_in_a_string_and_skipped_in_a_folder(tmp_path, caplog):
    with pytest.raises(wqnb.ConfigError, match=r"^<string>: field 'namespace': namespace is required$"):
        Registry().load_string("entries: []\n")
    (tmp_path / "a.yaml").write_text("entries: [{name: x, kind: nonsense}]\n")
    (tmp_path / "b.yml").write_text("namespace: n\nentries: [{name: d, kind: queue.driver.memory}]\n")
    reg = Registry().load(tmp_path)
    assert list(reg.entries) == ["n:d"]
    assert "no 'namespace', file skipped" in caplog.text


def test_duplicate_entry():
    with pytest.raises(wqnb.ConfigError, match=r"^<string>: entry n:d: entry defined twice"):
        Registry().load_string(
            "namespace: n\nentries:\n  - {name: d, kind: queue.driver.memory}\n  - {name: d, kind: queue.driver.memory}\n"
        )


def test_invalid_yaml_gives_line_and_column():
    with pytest.raises(wqnb.ConfigError, match=r"^<string>: invalid YAML \(line 3, column 12\): ") as ei:
        Registry().load_string("namespace: n\nentries:\n  - name: x: y\n")
    assert "mapping values are not allowed here" in str(ei.value)


def _alias_bomb(levels: int) -> str:
    """1 KB of YAML whose ``concurrency`` expands to 10**(levels+1) strings."""
    lines = ["namespace: t", 'a0: &a0 [' + ",".join(['"lol"'] * 10) + "]"]
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n" + consumer_yaml(concurrency=f"*a{levels}").split("\n", 1)[1]


def test_a_yaml_alias_bomb_is_refused_at_load_in_a_short_text(tmp_path):
    """Issue 14 point 10: `concurrency: *a6` made a 52 MB error text (the whole bomb ~5 GB)."""
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(8))
    assert len(path.read_text()) < 1500
    with pytest.raises(wqnb.ConfigError) as ei:
        wqnb.Runtime.from_yaml(path)
    text = str(ei.value)
    assert text == f"{path}: YAML aliases expand to more than 100,000 values (line 6): an alias bomb? wqnb refuses files that large"
    # a few aliases, as real files use them, still load
    small = "namespace: t\nx: &opts {concurrency: 2}\n" + consumer_yaml(concurrency="2").split("\n", 1)[1]
    assert load(small).entries["t:c"].concurrency == 2


def test_a_recursive_alias_is_refused_naming_the_file():
    with pytest.raises(wqnb.ConfigError, match=r"^f.yaml: recursive YAML alias \(line 2\)"):
        Registry().load_string("namespace: t\nentries: &a [*a]\n", name="f.yaml")


def test_an_error_quoting_a_huge_value_is_cut_short():
    with pytest.raises(wqnb.ConfigError) as ei:
        load(consumer_yaml(concurrency="[" + ",".join(["12345"] * 50_000) + "]"))
    text = str(ei.value)
    assert text.startswith("<string>: entry t:c: field 'concurrency': concurrency must be an integer, got [12345, ")
    assert text.endswith("... (350,036 characters)") and len(text) < 500


@pytest.mark.parametrize("opener", ["[", "{a: "])
def test_deeply_nested_yaml_is_a_config_error_naming_the_file(tmp_path, opener):
    """Issue 14 point 17: 5,000 nested [ raised RecursionError ("internal error" in the CLI)."""
    path = tmp_path / "deep.yaml"
    path.write_text("namespace: t\nentries: " + opener * 5000 + "\n")
    with pytest.raises(wqnb.ConfigError, match="^" + re.escape(f"{path}: YAML nested too deeply to read")):
        wqnb.Runtime.from_yaml(path)
    path.write_text("namespace: t\nentries: " + "[" * 150 + "]" * 150 + "\n")  # readable, still refused
    with pytest.raises(wqnb.ConfigError, match="^" + re.escape(f"{path}: YAML nested deeper than 100 levels")):
        wqnb.Runtime.from_yaml(path)


_HUGE = "'1" + "0" * 38 + "..." + "0" * 8  # how the error quotes "1<400 zeros>s" and "1<400 zeros>"


@pytest.mark.parametrize(("value", "text"), [
    ('"1' + "0" * 400 + 's"', f"requeue_delay: must be a finite number of seconds, got {_HUGE}s' (404 characters)"),
    ('"1' + "0" * 400 + '"', f"requeue_delay: must be a finite number of seconds, got {_HUGE}0' (403 characters)"),
    ('"2562048h"', "requeue_delay: longer than Go's longest duration (about 292 years), got '2562048h'"),
    ("1.0e+300", "requeue_delay: longer than Go's longest duration (about 292 years), got 1e+300"),
])
def test_infinite_and_absurd_durations_are_refused_with_units_or_without(value, text):
    """Issue 14 point 18: "1<400 zeros>s" was accepted (infinite seconds)."""
    with pytest.raises(wqnb.ConfigError, match=where("t:c", "requeue_delay", text)):
        load(consumer_yaml(requeue_delay=value))
    assert load(consumer_yaml(requeue_delay='"2562047h"')).entries["t:c"].requeue_delay == 2562047 * 3600.0


def test_from_yaml_path_errors_name_the_file(tmp_path):
    path = tmp_path / "app.yaml"
    path.write_text(consumer_yaml(concurrency=1001))
    with pytest.raises(
        wqnb.ConfigError, match=where("t:c", "concurrency", "concurrency 1001 exceeds maximum 1000", file=str(path))
    ) as ei:
        wqnb.Runtime.from_yaml(path)
    assert ei.value.file == str(path)
    # a folder: the error names the file inside it
    with pytest.raises(wqnb.ConfigError, match="^" + re.escape(str(path) + ": entry t:c")):
        wqnb.Runtime.from_yaml(tmp_path)


def test_reference_errors_name_the_file_of_the_referring_entry(tmp_path):
    (tmp_path / "queues.yaml").write_text(
        "namespace: t\nentries:\n  - {name: tasks, kind: queue.queue, driver: t:nope}\n"
    )
    with pytest.raises(wqnb.ConfigError, match="^" + re.escape(f"{tmp_path / 'queues.yaml'}: entry t:tasks: field 'driver'")):
        wqnb.Runtime.from_yaml(tmp_path)


def test_from_yaml_missing_path():
    with pytest.raises(wqnb.ConfigError, match=r"^no such file or folder: .*missing\.yaml$"):
        wqnb.Runtime.from_yaml("/nonexistent/missing.yaml")


def test_entries_split_across_files_of_a_folder(tmp_path):
    (tmp_path / "drivers.yaml").write_text("namespace: app.queue\nentries:\n" + "".join(
        "  " + line + "\n" for line in SEED_DRIVER.splitlines()
    ))
    (tmp_path / "queues.yaml").write_text("namespace: app.queue\nentries:\n" + "".join(
        "  " + line + "\n" for line in (SEED_QUEUE + SEED_CONSUMER).splitlines()
    ))
    rt = wqnb.Runtime.from_yaml(tmp_path)
    assert set(rt.registry.entries) == {"app.queue:memory_driver", "app.queue:tasks", "app.queue:task_consumer"}
    assert rt.registry.file_of("app.queue:tasks") == str(tmp_path / "queues.yaml")


# -- function.python ------------------------------------------------------------------------------------------
def test_function_python_entry_imports_beside_the_yaml(tmp_path):
    (tmp_path / "wqnb_test_handlers_mod.py").write_text(
        "SEEN = []\n\ndef handle(body):\n    SEEN.append(body)\n"
    )
    (tmp_path / "app.yaml").write_text(
        app().replace("func: t:h", "func: t:py")
        + "  - {name: py, kind: function.python, source: 'wqnb_test_handlers_mod:handle'}\n"
    )
    rt = wqnb.Runtime.from_yaml(tmp_path / "app.yaml")

    async def main():
        await rt.start()
        await rt.publish("t:tasks", {"id": 1})
        await rt.drain()
        await rt.stop()

    wqnb.run_virtual(main())
    import wqnb_test_handlers_mod

    assert wqnb_test_handlers_mod.SEEN == ['{"id":1}']


@pytest.mark.parametrize(
    "source,text",
    [
        ("no_colon_here", "source must be 'module:attr', got 'no_colon_here'"),
        ("wqnb_no_such_module_xyz:f", "cannot import module 'wqnb_no_such_module_xyz'"),
        ("json:no_such_attr", "module 'json' has no attribute 'no_such_attr'"),
    ],
)
def test_function_python_bad_source_fails_start(source, text):
    rt = wqnb.Runtime.from_yaml_string(
        app().replace("func: t:h", "func: t:py") + f"  - {{name: py, kind: function.python, source: '{source}'}}\n"
    )

    async def main():
        with pytest.raises(wqnb.ConfigError, match=r"entry t:py: field 'source': " + re.escape(text)):
            await rt.start()

    wqnb.run_virtual(main())


# -- values YAML can hold that are not what they look like --------------------------------------------
@pytest.mark.parametrize("field,raw,text", [
    ("concurrency", ".inf", "concurrency must be an integer, got inf"),
    ("concurrency", ".nan", "concurrency must be an integer, got nan"),
    ("requeue_delay", ".nan", "requeue_delay: must be a finite number of seconds, got nan"),
    ("timeout", '"inf"', "timeout: must be a finite number of seconds, got 'inf'"),
])
def test_non_finite_numbers_are_refused_naming_the_field(field, raw, text):
    with pytest.raises(wqnb.ConfigError, match=where("t:c", field, text)):
        load(consumer_yaml(**{field: raw}))


def test_depends_on_must_be_a_list_of_ids_and_one_id_alone_is_one():
    with pytest.raises(wqnb.ConfigError, match=where("t:c", "lifecycle.depends_on",
                                                     "depends_on must be a list of registry ids, got 5")):
        load(consumer_yaml(lifecycle="{depends_on: 5}"))
    c = load(consumer_yaml(lifecycle="{depends_on: t:tasks}")).entries["t:c"]
    assert c.lifecycle.depends_on == ("t:tasks",)  # not the characters of "t:tasks"


def test_offload_must_be_a_boolean():
    text = "namespace: t\nentries:\n  - {name: f, kind: function.python, source: 'os:getcwd', offload: 'false'}\n"
    with pytest.raises(wqnb.ConfigError, match=where("t:f", "offload", "offload must be true or false, got 'false'")):
        load(text)


def test_a_function_defined_twice_names_the_file_of_the_first(tmp_path):
    f = "  - {name: h, kind: function.python, source: 'os:getcwd'}\n"
    (tmp_path / "a.yaml").write_text("namespace: t\nentries:\n" + f)
    (tmp_path / "b.yaml").write_text("namespace: t\nentries:\n" + f)
    with pytest.raises(wqnb.ConfigError, match=re.escape(f"entry defined twice (first in {tmp_path / 'a.yaml'})")):
        wqnb.Runtime.from_yaml(tmp_path / "a.yaml", tmp_path / "b.yaml")


def test_a_python_module_that_fails_to_import_names_the_entry_and_the_error(tmp_path, monkeypatch):
    (tmp_path / "broken_mod.py").write_text("def handle(body):\n    return (\n")
    (tmp_path / "app.yaml").write_text(
        app().replace("func: t:h", "func: t:py") + "  - {name: py, kind: function.python, source: 'broken_mod:handle'}\n")
    rt = wqnb.Runtime.from_yaml(tmp_path / "app.yaml")

    async def main():
        await rt.start()

    with pytest.raises(wqnb.ConfigError) as e:
        wqnb.run_virtual(main())
    text = str(e.value)
    assert text.startswith(f"{tmp_path / 'app.yaml'}: entry t:py: field 'source': cannot import module 'broken_mod': ")
    assert "SyntaxError" in text and "broken_mod.py, line 2" in text
