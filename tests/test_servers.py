"""tests/servers.py, the launcher behind scripts/test and the broker fault tests: each server
answers its protocol once `start()` returns, `kill()` crashes it, `restart()` brings it back on
the same port with its data, and `stop()` (or the CLI's `stop`) leaves no process behind."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from servers import (
    HOST,
    MotoServer,
    Proc,
    RabbitMQServer,
    RedisServer,
    ServerError,
    amqp_answers,
    redis_answers,
)

SERVERS_PY = Path(__file__).with_name("servers.py")


def refused(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port any more."""
    try:
        socket.create_connection((HOST, port), timeout=1.0).close()
    except OSError:
        return True
    return False


def resp(port: int, *args: str) -> bytes:
    """One Redis command over a bare socket (no client library), its raw reply."""
    cmd = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
    with socket.create_connection((HOST, port), timeout=5.0) as s:
        s.sendall(cmd.encode())
        return s.recv(4096)


def assert_gone(procs: list[Proc], ports: list[int]) -> None:
    assert procs, "the server recorded no pids"
    alive = [p.pid for p in procs if p.alive()]
    assert not alive, f"pids still running: {alive}"
    assert all(refused(p) for p in ports), f"a port still answers: {ports}"


def test_redis_kill_then_restart_keeps_what_the_aof_holds(private_redis: RedisServer) -> None:
    r = private_redis
    assert resp(r.port, "PING") == b"+PONG\r\n"
    assert r.url == f"redis://127.0.0.1:{r.port}/0"
    assert resp(r.port, "CONFIG", "GET", "appendonly").endswith(b"yes\r\n")
    assert resp(r.port, "SET", "k", "v1") == b"+OK\r\n"  # written to the AOF before the reply
    pid, port = r.server_proc.pid, r.port  # type: ignore[union-attr]

    r.kill()
    assert refused(port) and not Proc.of(pid).alive()
    r.restart()
    assert r.port == port and r.server_proc.pid != pid  # type: ignore[union-attr]
    assert resp(r.port, "GET", "k") == b"$2\r\nv1\r\n"

    procs = r.all_procs()
    r.stop()
    assert_gone(procs, [port])
    assert (r.root / "appendonlydir").is_dir()  # a data dir it was given is kept


def test_redis_start_fails_clearly_when_its_port_is_taken(tmp_path: Path) -> None:
    if not RedisServer.available():
        pytest.skip(RedisServer.missing_message())
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        server = RedisServer(root=tmp_path, ports={"port": busy.getsockname()[1]})
        with pytest.raises(ServerError, match="exited while starting"):
            server.start()
        assert not any(p.alive() for p in server.all_procs())


def test_rabbitmq_kill_restart_keeps_durable_messages_and_stop_ends_epmd(
    private_rabbitmq: RabbitMQServer,
) -> None:
    aio_pika = pytest.importorskip("aio_pika")
    rmq = private_rabbitmq
    assert rmq.url == f"amqp://guest:guest@127.0.0.1:{rmq.port}/"
    beam = rmq.server_proc
    assert beam is not None and Path(f"/proc/{beam.pid}/comm").read_text().startswith("beam")

    async def publish() -> None:
        conn = await aio_pika.connect(rmq.url)
        async with conn:
            ch = await conn.channel(publisher_confirms=True)
            await ch.declare_queue("wqnb-servers-test", durable=True)
            msg = aio_pika.Message(b"kept", delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await ch.default_exchange.publish(msg, routing_key="wqnb-servers-test")

    async def get() -> bytes | None:
        conn = await aio_pika.connect(rmq.url)
        async with conn:
            ch = await conn.channel()
            q = await ch.declare_queue("wqnb-servers-test", durable=True)
            msg = await q.get(fail=False)
            return None if msg is None else msg.body

    asyncio.run(publish())
    rmq.kill()
    assert refused(rmq.port) and not beam.alive()
    assert rmq.epmd is not None and rmq.epmd.alive()  # epmd outlives a crash, as it would
    rmq.restart()

    async def get_within(seconds: float) -> bytes | None:
        # Queues recover after the node answers (RabbitMQ loads them in the background):
        # poll with a deadline rather than read once.
        deadline = asyncio.get_running_loop().time() + seconds
        while True:
            body = await get()
            if body is not None or asyncio.get_running_loop().time() > deadline:
                return body
            await asyncio.sleep(0.2)

    assert asyncio.run(get_within(20.0)) == b"kept"  # same node name and mnesia dir: the queue recovered

    procs, ports = rmq.all_procs(), list(rmq.ports.values())
    assert len(procs) == 3  # the rabbitmq-server script, beam.smp, epmd
    rmq.stop()
    assert_gone(procs, ports)


def test_moto_answers_http_and_stops(tmp_path: Path) -> None:
    if not MotoServer.available():
        pytest.skip(MotoServer.missing_message())
    with MotoServer(root=tmp_path) as moto:
        assert moto.url == f"http://127.0.0.1:{moto.port}"
        procs = moto.all_procs()
        assert procs and procs[0].alive()
    assert_gone(procs, [moto.port])


def test_cli_prints_exports_and_stops_every_pid_it_recorded(tmp_path: Path) -> None:
    kinds = [c.kind for c in (RabbitMQServer, RedisServer, MotoServer) if c.available()]
    if not kinds:
        pytest.skip("none of rabbitmq-server, redis-server, moto is installed")
    state = tmp_path / "state"
    argv = [sys.executable, str(SERVERS_PY), "start", *kinds, "--state", str(state)]
    start = subprocess.run(argv,
                           capture_output=True, text=True, timeout=120, check=False)
    try:
        assert start.returncode == 0, start.stderr
        exports = dict(line.removeprefix("export ").split("=", 1)
                       for line in start.stdout.splitlines())
        env_vars = {"amqp": "WQNB_TEST_AMQP_URL", "redis": "WQNB_TEST_REDIS_URL",
                    "sqs": "WQNB_TEST_SQS_ENDPOINT"}
        assert set(exports) == {env_vars[k] for k in kinds}
        recorded = [Proc(**p) for f in state.glob("*.json")
                    for key in ("procs", "helpers") for p in json.loads(f.read_text())[key]]
        assert recorded and all(p.alive() for p in recorded)
        ports = [port_of(url) for url in exports.values()]
        assert not any(refused(p) for p in ports)
    finally:
        stop = subprocess.run([sys.executable, str(SERVERS_PY), "stop", "--state", str(state)],
                              capture_output=True, text=True, timeout=120, check=False)
    assert stop.returncode == 0, stop.stderr
    assert_gone(recorded, ports)
    assert not list(state.glob("*.json"))


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def test_shared_servers_from_scripts_test_answer(amqp_url: str, redis_url: str) -> None:
    """What scripts/test exported is up (skips locally without it, fails under CI)."""
    assert redis_answers(port_of(redis_url))
    assert amqp_answers(port_of(amqp_url))
