"""Throwaway broker servers on loopback for the tests and scripts/test: RabbitMQ, Redis, moto.

Each server runs on 127.0.0.1 on ports that were free a moment ago, with its own data dir, as
a child of this process (its own session, so a Ctrl-C in the terminal does not reach it).
`start()` returns once the server answers its protocol (no fixed sleeps), `kill()` is the
crash (SIGKILL), `restart()` starts it again on the same ports and data dir, and `stop()`
ends what it started by pid, epmd included. Standard library only: scripts/test runs this
before anything else is known to be installed.

    python tests/servers.py start amqp redis sqs --state DIR   # prints `export WQNB_TEST_...=...`
    python tests/servers.py stop --state DIR                   # stops them by the pids in DIR
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

HOST = "127.0.0.1"


class ServerError(RuntimeError):
    """A server could not be found, would not start, or did not answer in time."""


class ServerUnavailable(ServerError):
    """The server's binary is not installed here (tests skip, or fail under CI)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_until(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll `cond` until it holds; a ServerError naming `what` once `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise ServerError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# --- processes, identified by pid and start time so a reused pid is never signalled --------


@dataclass(frozen=True)
class Proc:
    """A process this module started (or found under one it started)."""

    pid: int
    start_ticks: int  # field 22 of /proc/PID/stat: tells a reused pid from ours

    @classmethod
    def of(cls, pid: int) -> Proc:
        st = _stat(pid)
        return cls(pid, st[19] if st else 0)

    def alive(self) -> bool:
        """Still the process we started, and not yet fully exited: a zombie leader whose other
        threads are still exiting counts as alive (they may hold its sockets a moment)."""
        popen = _POPENS.get(self.pid)
        if popen is not None:  # our child: waitpid is the one exact answer
            if popen.poll() is None:
                return True
            del _POPENS[self.pid]
            return False
        st = _stat(self.pid)
        if st is None:
            return False
        if self.start_ticks and st[19] != self.start_ticks:
            return False
        if st[0] in ("Z", "X"):
            try:
                return len(os.listdir(f"/proc/{self.pid}/task")) > 1
            except OSError:
                return False
        return True

    def signal(self, sig: int) -> None:
        if self.alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


# The Popen of every process this process started and has not yet seen exit.
_POPENS: dict[int, subprocess.Popen[bytes]] = {}


def _stat(pid: int) -> list[Any] | None:
    """/proc/PID/stat after the command name: [state, ppid, ...]; None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields: list[Any] = raw[raw.rindex(")") + 2 :].split()
    fields[1] = int(fields[1])
    fields[19] = int(fields[19])
    return fields


def _children(pid: int) -> list[int]:
    """Pids whose parent is `pid` (from /proc; no `ps` needed)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            st = _stat(int(d.name))
            if st is not None and st[1] == pid:
                out.append(int(d.name))
    return out


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def end(procs: list[Proc], timeout: float) -> None:
    """SIGTERM each process, wait up to `timeout` s for all, then SIGKILL what is left."""
    for p in procs:
        p.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(p.alive() for p in procs) and time.monotonic() < deadline:
        _reap()
        time.sleep(0.02)
    for p in procs:
        p.signal(signal.SIGKILL)
    wait_until(lambda: _all_exited(procs), 10.0, "SIGKILLed pids to exit")


def _all_exited(procs: list[Proc]) -> bool:
    _reap()
    return not any(p.alive() for p in procs)


def _reap() -> None:
    """Collect this process's exited server children, so they do not linger as zombies."""
    for pid in list(_POPENS):
        if _POPENS[pid].poll() is not None:
            del _POPENS[pid]


def _spawn(argv: list[str], env: dict[str, str], log: Path, cwd: Path) -> Proc:
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    _POPENS[popen.pid] = popen
    return Proc.of(popen.pid)


def _connect(port: int, timeout: float = 1.0) -> socket.socket | None:
    try:
        return socket.create_connection((HOST, port), timeout=timeout)
    except OSError:
        return None


def amqp_answers(port: int) -> bool:
    """An AMQP 0-9-1 protocol header answered by a Connection.Start frame (type 1)."""
    s = _connect(port)
    if s is None:
        return False
    try:
        s.sendall(b"AMQP\x00\x00\x09\x01")
        return s.recv(1) == b"\x01"
    except OSError:
        return False
    finally:
        s.close()


def redis_answers(port: int) -> bool:
    """PING answered by +PONG (a server still loading its AOF answers -LOADING)."""
    s = _connect(port)
    if s is None:
        return False
    try:
        s.sendall(b"*1\r\n$4\r\nPING\r\n")
        return s.recv(7).startswith(b"+PONG")
    except OSError:
        return False
    finally:
        s.close()


# --- the servers --------------------------------------------------------------------------


class Server:
    """One server on loopback with its own ports and data dir; see the module docstring."""

    kind: ClassVar[str]          # the CLI's name: amqp, redis, sqs
    env_var: ClassVar[str]       # what scripts/test exports and tests/conftest.py reads
    start_timeout: ClassVar[float] = 30.0
    stop_timeout: ClassVar[float] = 15.0

    def __init__(self, root: Path | str | None = None, ports: dict[str, int] | None = None) -> None:
        self._own_root = root is None
        if root is None:
            root = tempfile.mkdtemp(prefix=f"wqnb-{self.kind}-")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.ports = dict(ports) if ports else {name: free_port() for name in self.port_names()}
        self.procs: list[Proc] = []   # every process started, the server's wrapper first

    # what each kind supplies
    @classmethod
    def port_names(cls) -> tuple[str, ...]:
        return ("port",)

    @classmethod
    def binary(cls) -> str | None:
        """Path of the server's executable, or None when it is not installed."""
        raise NotImplementedError

    def _launch(self) -> None:
        raise NotImplementedError

    def _answers(self) -> bool:
        raise NotImplementedError

    @property
    def port(self) -> int:
        return self.ports["port"]

    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def server_proc(self) -> Proc | None:
        """The process that is the server itself (what `kill()` SIGKILLs)."""
        return self.procs[-1] if self.procs else None

    @classmethod
    def available(cls) -> bool:
        return cls.binary() is not None

    # lifecycle
    def start(self) -> Self:
        """Start the server and return once it answers; a ServerError with its log otherwise."""
        self.launch()
        return self.wait_ready()

    def launch(self) -> None:
        """Start the server's processes without waiting (so several can boot at once)."""
        if self.binary() is None:
            raise ServerUnavailable(self.missing_message())
        self._launch()

    def wait_ready(self) -> Self:
        """Return once the launched server answers; stop it and raise ServerError otherwise."""
        try:
            wait_until(self._ready, self.start_timeout, f"{self.kind} on {HOST}:{self.port}")
        except ServerError as e:
            self._end_server()
            raise ServerError(f"{e}; last lines of {self.log}:\n{self.log_tail()}") from None
        return self

    def _ready(self) -> bool:
        """The server answers; a ServerError once the process we started has exited."""
        proc = self.procs[0] if self.procs else None
        if proc is None or not proc.alive():
            raise ServerError(f"{self.kind} exited while starting")
        return self._answers()

    def kill(self) -> None:
        """Crash the server: SIGKILL, no shutdown. The data dir keeps what was on disk."""
        procs = self._server_procs()
        for p in reversed(procs):  # the real server first, then its wrapper
            p.signal(signal.SIGKILL)
        wait_until(lambda: _all_exited(procs), 10.0, f"killed {self.kind} to exit")
        self._forget(procs)

    def restart(self) -> Self:
        """Start again on the same ports and data dir (after `kill()` or `stop()`)."""
        if self._server_procs() and any(p.alive() for p in self._server_procs()):
            self._end_server()
        return self.start()

    def stop(self) -> None:
        """SIGTERM what this started, SIGKILL after `stop_timeout`; remove a temp data dir."""
        self._end_server()
        helpers = self.helper_procs()
        if helpers:
            end(helpers, self.stop_timeout)
            self._forget_helpers()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def _server_procs(self) -> list[Proc]:
        return list(self.procs)

    def _forget(self, procs: list[Proc]) -> None:
        self.procs = [p for p in self.procs if p not in procs]

    def _end_server(self) -> None:
        procs = self._server_procs()
        end(list(reversed(procs)), self.stop_timeout)
        self._forget(procs)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def log(self) -> Path:
        return self.root / f"{self.kind}.log"

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    @classmethod
    def missing_message(cls) -> str:
        return f"{cls.kind} server not installed"

    # state for the CLI: the stop command runs in another process
    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "root": str(self.root), "own_root": self._own_root,
                "ports": self.ports, "url": self.url,
                "procs": [asdict(p) for p in self._server_procs()],
                "helpers": [asdict(p) for p in self.helper_procs()]}

    def helper_procs(self) -> list[Proc]:
        """Processes that outlive a restart (RabbitMQ's epmd); stopped after the server."""
        return []

    def _forget_helpers(self) -> None:
        pass

    def all_procs(self) -> list[Proc]:
        return self._server_procs() + self.helper_procs()


class RabbitMQServer(Server):
    """Debian's rabbitmq-server run as this user, with its own node name, epmd and mnesia dir.

    epmd is started here first, on its own port, as our child: the node would otherwise start
    a daemonised epmd that outlives it. The `rabbitmq-server` script runs `beam.smp` as its
    child; `kill()` SIGKILLs `beam.smp`, `stop()` SIGTERMs it (a clean shutdown, ~1 s)."""

    kind = "amqp"
    env_var = "WQNB_TEST_AMQP_URL"
    start_timeout = 60.0  # 3-4 s on an idle machine; a loaded 2-core CI box is slower

    def __init__(self, root: Path | str | None = None, ports: dict[str, int] | None = None,
                 config: dict[str, str] | None = None) -> None:
        super().__init__(root, ports)
        self.config = dict(config or {})
        self.epmd: Proc | None = None

    @classmethod
    def port_names(cls) -> tuple[str, ...]:
        return ("port", "dist", "epmd")

    @classmethod
    def binary(cls) -> str | None:
        # Not /usr/sbin/rabbitmq-server: Debian's wrapper su's to the rabbitmq user.
        if cls._epmd_binary() is None:
            return None
        for cand in ("/usr/lib/rabbitmq/bin/rabbitmq-server", shutil.which("rabbitmq-server")):
            if (cand and os.access(cand, os.X_OK)
                    and Path(cand).resolve().name != "rabbitmq-script-wrapper"):
                return cand
        return None

    @staticmethod
    def _epmd_binary() -> str | None:
        return shutil.which("epmd") or next(
            (p for p in ("/usr/lib/erlang/bin/epmd",) if os.access(p, os.X_OK)), None)

    @classmethod
    def missing_message(cls) -> str:
        return "rabbitmq-server not found (apt-get install rabbitmq-server)"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{HOST}:{self.port}/"

    @property
    def nodename(self) -> str:
        return f"wqnb{self.port}@localhost"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        r = self.root
        env.update(
            HOME=str(r),  # the Erlang cookie lives in $HOME
            ERL_EPMD_PORT=str(self.ports["epmd"]),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS=HOST,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.ports["dist"]),
            RABBITMQ_CONF_ENV_FILE=str(r / "rabbitmq-env.conf"),  # not /etc/rabbitmq's
            RABBITMQ_CONFIG_FILE=str(r / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(r / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(r / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(r / "mnesia"),
            RABBITMQ_LOG_BASE=str(r / "log"),
            RABBITMQ_PLUGINS_EXPAND_DIR=str(r / "plugins-expand"),
            RABBITMQ_PID_FILE=str(r / "rabbitmq.pid"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    def _write_config(self) -> None:
        r = self.root
        (r / "rabbitmq-env.conf").touch()
        (r / "enabled_plugins").write_text("[].\n")
        conf = {"loopback_users.guest": "true", **self.config}
        (r / "rabbitmq.conf").write_text("".join(f"{k} = {v}\n" for k, v in conf.items()))

    def _launch(self) -> None:
        self._write_config()
        if self.epmd is None or not self.epmd.alive():
            epmd = self._epmd_binary()
            assert epmd is not None
            self.epmd = _spawn([epmd, "-port", str(self.ports["epmd"]), "-address", HOST],
                               self._env(), self.root / "epmd.log", self.root)
            wait_until(lambda: self._epmd_answers(), 10.0, f"epmd on {HOST}:{self.ports['epmd']}")
        binary = self.binary()
        assert binary is not None
        self.procs.append(_spawn([binary], self._env(), self.log, self.root))

    def _epmd_answers(self) -> bool:
        if self.epmd is None or not self.epmd.alive():
            raise ServerError(f"epmd exited at start; see {self.root / 'epmd.log'}")
        s = _connect(self.ports["epmd"])
        if s is not None:
            s.close()
        return s is not None

    def _beam(self) -> Proc | None:
        """beam.smp: the wrapper script's child running the Erlang VM."""
        if not self.procs:
            return None
        wrapper = self.procs[0]
        for pid in _children(wrapper.pid):
            if _comm(pid).startswith("beam"):
                return Proc.of(pid)
        return None

    @property
    def server_proc(self) -> Proc | None:
        return self._beam() or (self.procs[0] if self.procs else None)

    def _answers(self) -> bool:
        return amqp_answers(self.port)

    def _server_procs(self) -> list[Proc]:
        beam = self._beam()
        extra = [beam] if beam is not None and beam not in self.procs else []
        return list(self.procs) + extra

    def helper_procs(self) -> list[Proc]:
        return [self.epmd] if self.epmd is not None else []

    def _forget_helpers(self) -> None:
        self.epmd = None


class RedisServer(Server):
    """redis-server with AOF on (`appendfsync everysec`), no RDB snapshots, its own --dir."""

    kind = "redis"
    env_var = "WQNB_TEST_REDIS_URL"
    start_timeout = 20.0

    @classmethod
    def binary(cls) -> str | None:
        return shutil.which("redis-server") or next(
            (p for p in ("/usr/bin/redis-server",) if os.access(p, os.X_OK)), None)

    @classmethod
    def missing_message(cls) -> str:
        return "redis-server not found (apt-get install redis-server)"

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def _launch(self) -> None:
        binary = self.binary()
        assert binary is not None
        argv = [binary, "--bind", HOST, "--port", str(self.port), "--dir", str(self.root),
                "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
                "--daemonize", "no", "--protected-mode", "yes", "--logfile", ""]
        self.procs.append(_spawn(argv, dict(os.environ), self.log, self.root))

    def _answers(self) -> bool:
        return redis_answers(self.port)


class MotoServer(Server):
    """moto's SQS (and other AWS) server; in memory, so a restart starts empty."""

    kind = "sqs"
    env_var = "WQNB_TEST_SQS_ENDPOINT"
    start_timeout = 30.0

    def __init__(self, root: Path | str | None = None, ports: dict[str, int] | None = None,
                 python: str | None = None) -> None:
        super().__init__(root, ports)
        self.python = python or sys.executable

    @classmethod
    def binary(cls, python: str | None = None) -> str | None:
        py = python or sys.executable
        probe = subprocess.run([py, "-c", "import moto.server"], capture_output=True, check=False)
        return py if probe.returncode == 0 else None

    @classmethod
    def missing_message(cls) -> str:
        return f"moto's server not importable by {sys.executable} (pip install 'moto[server]')"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _launch(self) -> None:
        env = dict(os.environ)
        # moto signs nothing, but botocore clients in the tests look for credentials.
        env.setdefault("AWS_ACCESS_KEY_ID", "testing")
        env.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        # through the wrapper that makes a receive atomic (moto's is not: see its docstring)
        wrapper = Path(__file__).with_name("_moto_server.py")
        argv = [self.python, str(wrapper), "-H", HOST, "-p", str(self.port)]
        self.procs.append(_spawn(argv, env, self.log, self.root))

    def _answers(self) -> bool:
        """Any HTTP answer on / (moto serves its dashboard redirect or 404 there)."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=2.0)
        try:
            conn.request("GET", "/moto-api/")
            conn.getresponse().read()
            return True
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()


SERVERS: dict[str, type[Server]] = {c.kind: c for c in (RabbitMQServer, RedisServer, MotoServer)}


# --- the CLI used by scripts/test ---------------------------------------------------------


def _cli_start(kinds: list[str], state: Path) -> int:
    """Start each kind (all booting at once); print `export VAR=URL` for those that answer.
    Exit 1 if one failed to start, 0 otherwise (a kind whose binary is missing is reported on
    stderr and skipped: its tests skip, or fail under CI=true)."""
    state.mkdir(parents=True, exist_ok=True)
    rc = 0
    t0 = time.monotonic()
    launched: list[Server] = []
    for kind in kinds:
        server = SERVERS[kind](root=state / kind)
        try:
            server.launch()
            launched.append(server)
        except ServerUnavailable as e:
            print(f"servers.py: {kind}: {e}; its tests will skip (fail under CI=true)",
                  file=sys.stderr)
        except (ServerError, OSError) as e:
            print(f"servers.py: {kind}: {e}", file=sys.stderr)
            rc = 1
        finally:  # pids first, so `stop` finds whatever was started
            (state / f"{kind}.json").write_text(json.dumps(server.state()))
    for server in launched:
        try:
            server.wait_ready()
        except ServerError as e:
            print(f"servers.py: {server.kind}: {e}", file=sys.stderr)
            rc = 1
            continue
        finally:
            (state / f"{server.kind}.json").write_text(json.dumps(server.state()))
        print(f"servers.py: {server.kind} up at {server.url} after {time.monotonic() - t0:.1f} s "
              f"(pids {' '.join(str(p.pid) for p in server.all_procs())})", file=sys.stderr)
        print(f"export {server.env_var}={server.url}")
    return rc


def _cli_stop(state: Path) -> int:
    """SIGTERM then SIGKILL every pid recorded in STATE, servers before epmd; remove the data."""
    for f in sorted(state.glob("*.json")):
        info = json.loads(f.read_text())
        t0 = time.monotonic()
        # the server itself (recorded last: beam.smp after its wrapper), then epmd
        end([Proc(**p) for p in reversed(info["procs"])], SERVERS[info["kind"]].stop_timeout)
        end([Proc(**p) for p in info["helpers"]], 10.0)
        took = time.monotonic() - t0
        print(f"servers.py: {info['kind']} stopped in {took:.1f} s", file=sys.stderr)
        f.unlink()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="servers.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("start", help="start servers; print export lines on stdout")
    st.add_argument("kinds", nargs="+", choices=sorted(SERVERS))
    st.add_argument("--state", type=Path, required=True, help="folder for data dirs and pid files")
    sp = sub.add_parser("stop", help="stop the servers recorded in --state")
    sp.add_argument("--state", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.cmd == "start":
        return _cli_start(args.kinds, args.state)
    return _cli_stop(args.state)


if __name__ == "__main__":
    sys.exit(main())
