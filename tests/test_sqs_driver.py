"""``queue.driver.sqs`` (issue 11): its fields and load errors (no server needed), then the
wire, the visibility heartbeat, FIFO groups and stops against moto's SQS server
(``WQNB_TEST_SQS_ENDPOINT``). The contract itself is ``test_driver_conformance.py``'s
(backend ``sqs``); process kills are in ``test_sqs_faults.py``."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest
import yaml

pytest.importorskip("aiobotocore")

import wqnb
from wqnb.drivers.sqs_config import SqsConfig
from wqnb.errors import ConfigError, PublishError


def app(driver: dict[str, Any], queue: dict[str, Any] | None = None, consumer: dict[str, Any] | None = None,
        *, aws: dict[str, Any] | None = None) -> str:
    entries: list[dict[str, Any]] = []
    if aws is not None:
        entries.append({"name": "aws", "kind": "config.aws", **aws})
    entries.append({"name": "sqs", "kind": "queue.driver.sqs", **driver, "lifecycle": {"auto_start": True}})
    entries.append({"name": "tasks", "kind": "queue.queue", "driver": "sqs", **(queue or {})})
    entries.append({"name": "w", "kind": "queue.consumer", "queue": "tasks", "func": "h",
                    "lifecycle": {"auto_start": True, "stop_timeout": 10}, **(consumer or {})})
    return yaml.safe_dump({"namespace": "app", "entries": entries}, sort_keys=False)


def load_error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        wqnb.Runtime.from_yaml_string(text, name="app.yaml")
    return e.value


# -- fields and load errors (no server) ---------------------------------------------------------
def test_a_config_aws_entry_gives_the_region_and_the_credential_variables(monkeypatch) -> None:
    rt = wqnb.Runtime.from_yaml_string(app({"config": "aws", "endpoint": "http://127.0.0.1:1"},
                                           aws={"region_env": "MY_REGION", "access_key_id_env": "MY_KEY",
                                                "secret_access_key_env": "MY_SECRET"}))
    cfg = rt.drivers["app:sqs"].config
    assert cfg.aws.id == "app:aws" and cfg.aws.region_env == "MY_REGION"
    monkeypatch.setenv("MY_REGION", "eu-west-1")
    monkeypatch.setenv("MY_KEY", "AKIA")
    monkeypatch.setenv("MY_SECRET", "hush")
    assert cfg.aws.resolve("here") == ("eu-west-1", "AKIA", "hush")
    monkeypatch.delenv("MY_SECRET")
    with pytest.raises(ConfigError, match="secret_access_key_env MY_SECRET is not set") as e:
        cfg.aws.resolve("here")
    assert "hush" not in str(e.value)
    assert rt.registry.dependencies("app:sqs") == ["app:aws"]


@pytest.mark.parametrize(("driver", "aws", "field", "text"), [
    ({"config": "nope"}, None, "config", "config entry not found: app:nope"),
    ({"config": "tasks"}, None, "config", "app:tasks is a queue.queue, not a config.aws entry"),
    ({"config": "aws"}, {}, "region", "region is required"),
    ({"config": "aws"}, {"region": "x", "access_key_id_env": "K"}, "secret_access_key_env", "must be given together"),
    ({"config": "aws"}, {"region": "x", "colour": 1}, "colour", "unknown field"),
    ({"region": "us-east-1", "message_retention_period": 59}, None, "message_retention_period",
     "sqs: message_retention_period must be 60–1209600, got 59"),
    ({"region": "us-east-1", "default_delay_seconds": 901}, None, "default_delay_seconds",
     "sqs: default_delay_seconds must be 0–900, got 901"),
    ({"region": "us-east-1", "wait_time": "21s"}, None, "wait_time", "must be 0–20 seconds"),
    ({"region": "us-east-1", "wait_time": "1.5s"}, None, "wait_time", "whole seconds"),
    ({"region": "us-east-1", "endpoint": "ftp://x"}, None, "endpoint", "expected http(s)://host[:port]"),
    ({"region": "us-east-1", "endpoint": "http://AKIA:s3cr3t@host:9324"}, None, "endpoint",
     "credentials do not belong in the endpoint URL"),
    ({"region": "us-east-1", "queue_prefix": "x"}, None, "queue_prefix", "unknown field"),
])
def test_bad_driver_fields_are_load_errors_naming_entry_and_field(driver, aws, field, text, monkeypatch) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    e = load_error(app(driver, aws=aws))
    assert e.field == field and text in str(e), str(e)
    assert e.entry in ("app:sqs", "app:aws") and "app.yaml" in str(e)
    assert "s3cr3t" not in str(e)


def test_no_region_anywhere_is_wippys_error(monkeypatch) -> None:
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    e = load_error(app({"endpoint": "http://127.0.0.1:1"}))
    assert e.field == "config" and "sqs: aws config is required" in str(e)
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    assert SqsConfig.parse({}).aws.region == "ap-south-1"


@pytest.mark.parametrize(("queue", "consumer", "entry", "field", "text"), [
    ({"driver_options": {"sqs": {"default_visibility_timeout": "13h"}}}, None, "app:tasks",
     "driver_options.sqs.default_visibility_timeout", "must be 0–43200 seconds"),
    ({"driver_options": {"sqs": {"max_length": 5}}}, None, "app:tasks", "driver_options.sqs.max_length",
     "set options.max_length instead"),
    ({"queue_name": "has space"}, None, "app:tasks", "queue_name", "SQS queue names are 1–80"),
    (None, {"auto_ack": True}, "app:w", "auto_ack", "auto_ack: true is not supported on queue.driver.sqs"),
    (None, {"driver_options": {"sqs": {"visibility_timeout": 0}}}, "app:w",
     "driver_options.sqs.visibility_timeout", "must be 1–43200 seconds"),
    (None, {"driver_options": {"sqs": {"wait_time": 30}}}, "app:w", "driver_options.sqs.wait_time",
     "must be 0–20 seconds"),
    (None, {"driver_options": {"sqs": {"batch": 3}}}, "app:w", "driver_options.sqs.batch", "unknown field"),
])
def test_bad_queue_and_consumer_fields_are_load_errors(queue, consumer, entry, field, text) -> None:
    e = load_error(app({"region": "us-east-1"}, queue, consumer))
    assert (e.entry, e.field) == (entry, field) and text in str(e), str(e)


def test_the_cli_names_the_field_in_one_line(tmp_path) -> None:
    import subprocess
    import sys

    path = tmp_path / "app.yaml"
    path.write_text(app({"region": "us-east-1", "default_delay_seconds": 1000}))
    out = subprocess.run([sys.executable, "-m", "wqnb.cli", "run", str(path)], capture_output=True, text=True,
                         check=False)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "default_delay_seconds" in text and "app:sqs" in text and "Traceback" not in text, text


# -- against moto's server ----------------------------------------------------------------------
@pytest.fixture
def endpoint(sqs_endpoint: str) -> str:
    return sqs_endpoint


def unique(prefix: str = "wqnb-sqs") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def raw_client(endpoint: str) -> Any:
    from aiobotocore.session import get_session

    return get_session().create_client("sqs", region_name="us-east-1", endpoint_url=endpoint)


async def until(cond, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def test_a_plain_send_message_is_consumed_as_attempt_1_with_its_own_id(endpoint) -> None:
    name = unique()
    got: list[tuple[Any, dict, str, int]] = []

    async def handler(body, message):
        got.append((body, dict(message.headers), message.id, message.attempt))

    async def main() -> str:
        rt = wqnb.Runtime.from_yaml_string(app({"region": "us-east-1", "endpoint": endpoint, "wait_time": 1},
                                               {"queue_name": name}))
        rt.register_function("app:h", handler)
        await rt.start("app:sqs")
        async with await raw_client(endpoint) as c:  # another program, knowing nothing of wqnb
            url = (await c.get_queue_url(QueueName=name))["QueueUrl"]
            sent = await c.send_message(QueueUrl=url, MessageBody="hello from elsewhere", MessageAttributes={
                "origin": {"DataType": "String", "StringValue": "go"}})
        await rt.start()
        await rt.drain(timeout=30)
        await rt.stop()
        first = rt.timeline.df.groupby("msg_id", observed=True)["event"].first().astype(str).to_dict()
        assert first == {sent["MessageId"]: "deliver"}
        return sent["MessageId"]

    sqs_id = asyncio.run(main())
    assert got == [("hello from elsewhere", {"origin": "go"}, sqs_id, 1)]


def test_what_wqnb_sends_is_one_json_attribute_with_base64_for_bytes(endpoint) -> None:
    name = unique()

    async def main() -> list[dict]:
        rt = wqnb.Runtime.from_yaml_string(app({"region": "us-east-1", "endpoint": endpoint}, {"queue_name": name}))
        await rt.start("app:sqs")
        mid = await rt.publish("app:tasks", b"\x00\xffraw", headers={"k": [1, 2]})
        await rt.stop()
        async with await raw_client(endpoint) as c:
            url = (await c.get_queue_url(QueueName=name))["QueueUrl"]
            res = await c.receive_message(QueueUrl=url, MessageAttributeNames=["All"], WaitTimeSeconds=1)
        assert json.loads(res["Messages"][0]["MessageAttributes"]["wqnb"]["StringValue"])["id"] == mid
        return res["Messages"]

    [m] = asyncio.run(main())
    assert set(m["MessageAttributes"]) == {"wqnb"}  # one attribute of SQS's ten
    meta = json.loads(m["MessageAttributes"]["wqnb"]["StringValue"])
    assert meta["t"] == "b" and meta["e"] == "b64" and meta["a"] == 1 and meta["h"]["k"] == [1, 2]
    import base64

    assert base64.b64decode(m["Body"]) == b"\x00\xffraw"


def test_a_body_over_the_sqs_limit_is_refused_before_the_call(endpoint) -> None:
    async def main() -> None:
        rt = wqnb.Runtime.from_yaml_string(app({"region": "us-east-1", "endpoint": endpoint},
                                               {"queue_name": unique()}))
        await rt.start("app:sqs")
        try:
            with pytest.raises(PublishError, match="over SQS's limit of 262144"):
                await rt.publish("app:tasks", "x" * 300_000)
            assert rt.drivers["app:sqs"].depth("app:tasks") == 0
        finally:
            await rt.stop()

    asyncio.run(main())


def test_a_handler_of_three_visibility_timeouts_runs_once_kept_by_the_heartbeat(endpoint) -> None:
    runs: list[str] = []

    async def slow(body):
        runs.append(body)
        await asyncio.sleep(6.5)  # 3 x visibility_timeout 2 s (+ the time to reach SQS)

    async def main() -> Any:
        rt = wqnb.Runtime.from_yaml_string(app(
            {"region": "us-east-1", "endpoint": endpoint, "wait_time": 1}, {"queue_name": unique()},
            {"concurrency": 2, "prefetch": 2, "driver_options": {"sqs": {"visibility_timeout": "2s"}}}))
        rt.register_function("app:h", slow)
        await rt.start()
        await rt.publish("app:tasks", "long")
        await rt.publish("app:tasks", "waits in the buffer")  # held by a worker or the buffer meanwhile
        await rt.drain(timeout=60)
        stats = dict(rt.drivers["app:sqs"].stats)
        await rt.stop()
        return stats

    stats = asyncio.run(main())
    assert sorted(runs) == ["long", "waits in the buffer"]  # each once: no duplicate after 2 s
    assert stats.get("heartbeats", 0) >= 3 and not stats.get("stale_receipts")


def test_a_fifo_queue_keeps_order_per_group_and_needs_a_group_id(endpoint) -> None:
    seen: list[tuple[str, str]] = []

    async def handler(body, message):
        seen.append((message.headers["sqs.message_group_id"], body))
        if body == "a2" and message.attempt == 1:
            raise RuntimeError("a2 fails once")  # its copy goes to the tail of group a

    async def main() -> None:
        rt = wqnb.Runtime.from_yaml_string(app(
            {"region": "us-east-1", "endpoint": endpoint, "wait_time": 1}, {"queue_name": unique() + ".fifo"},
            {"concurrency": 1, "prefetch": 1}))
        rt.register_function("app:h", handler)
        await rt.start("app:sqs")
        with pytest.raises(PublishError, match="sqs fifo publish missing sqs.message_group_id"):
            await rt.publish("app:tasks", "no group")
        for i in range(1, 6):
            for g in "ab":
                await rt.publish("app:tasks", f"{g}{i}", headers={"sqs.message_group_id": g})
        await rt.start()
        await rt.drain(timeout=60)
        await rt.stop()

    asyncio.run(main())
    for g in "ab":
        bodies = [b for grp, b in seen if grp == g]
        expected = [f"{g}{i}" for i in range(1, 6)]
        if g == "a":  # a2 failed once: its copy comes after what group a already had queued
            expected = ["a1", "a2", "a3", "a4", "a5", "a2"]
        assert bodies == expected, (g, seen)


def test_a_stop_during_a_long_poll_strands_nothing(endpoint) -> None:
    """The poll in flight at stop is let end; what it returns is visible again at once
    (not after the queue's 30 s visibility timeout)."""
    name = unique()
    handled: list[str] = []

    async def main() -> float:
        first = wqnb.Runtime.from_yaml_string(app(
            {"region": "us-east-1", "endpoint": endpoint, "wait_time": 3}, {"queue_name": name}))
        first.register_function("app:h", lambda body: handled.append(body), offload=False)
        await first.start()
        driver = first.drivers["app:sqs"]
        await until(lambda: any(s.reserved for s in driver._subs.values()), 10, "a poll in flight")
        await first.consumers["app:w"].stop()  # unsubscribe: the poll is still out
        await first.publish("app:tasks", "sent while the stopped consumer's poll was out")
        await first.stop()  # waits for that poll; hands back what it got
        t0 = time.monotonic()
        second = wqnb.Runtime.from_yaml_string(app(
            {"region": "us-east-1", "endpoint": endpoint, "wait_time": 1}, {"queue_name": name}))
        second.register_function("app:h", lambda body: handled.append(body), offload=False)
        await second.start()
        await until(lambda: handled, 20, "the message to be handled")
        elapsed = time.monotonic() - t0
        await second.stop()
        return elapsed

    elapsed = asyncio.run(main())
    assert handled == ["sent while the stopped consumer's poll was out"]
    assert elapsed < 20  # not stranded for the 30 s visibility timeout


def test_a_new_queue_gets_the_entrys_attributes_and_an_existing_one_keeps_its_own(endpoint) -> None:
    name = unique()

    async def main() -> tuple[dict, dict]:
        async def attributes() -> dict:
            async with await raw_client(endpoint) as c:
                url = (await c.get_queue_url(QueueName=name))["QueueUrl"]
                return (await c.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]))["Attributes"]

        for vt in ("45s", "2m"):  # the second declare finds the queue: nothing is changed (as Wippy)
            rt = wqnb.Runtime.from_yaml_string(app(
                {"region": "us-east-1", "endpoint": endpoint, "message_retention_period": 3600,
                 "default_delay_seconds": 2},
                {"queue_name": name, "driver_options": {"sqs": {"default_visibility_timeout": vt}}}))
            await rt.start("app:sqs")
            await rt.stop()
            if vt == "45s":
                first = await attributes()
        return first, await attributes()

    first, second = asyncio.run(main())
    assert (first["VisibilityTimeout"], first["MessageRetentionPeriod"], first["DelaySeconds"]) == ("45", "3600", "2")
    assert second["VisibilityTimeout"] == "45"
