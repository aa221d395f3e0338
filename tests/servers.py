"""Throwaway Redis and PostgreSQL servers for fault tests: ours to kill, stall and restart.

The shared Redis (6379) and PostgreSQL (5432) must never be disturbed, so every test that
breaks a server starts one of its own here, in a temp directory, on a free port:

- ``RedisServer``: ``redis-server`` with ``appendonly yes`` and ``appendfsync always`` so
  the stream, the group and its pending lists survive a ``kill -9`` and restart, like a
  production Redis with persistence (without it a restart would simply lose the stream).
- ``PostgresServer``: a PostgreSQL 15 cluster copied from a template ``initdb``'d once per
  session, run as the ``postgres`` OS user (we run as root, and PostgreSQL refuses root),
  with ``fsync=off``: safe here because we crash the server, never the machine, and
  ``synchronous_commit`` stays on, so a commit the processor saw is in the WAL before a
  crash-like stop.

Both expose ``pause``/``resume`` (SIGSTOP/SIGCONT: a server that is up but answers
nothing) besides stop/kill/start; ``close`` always resumes first, so a failing test never
leaves a stopped process behind.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import psycopg
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

PG_BIN = Path(os.environ.get("TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "postgres"
START_TIMEOUT_S = 30.0

# Ports below Linux's ephemeral range (32768+): a client reconnecting to a port nobody
# listens on can otherwise be given that very port as its local port and connect to itself.
_PORT_RANGE = (20_000, 32_000)
# Redis Cluster nodes: bus ports (node + 10000) land in 20000-29999, reserved as taken.
_CLUSTER_PORT_RANGE = (10_000, 20_000)
_CLUSTER_BUS_OFFSET = 10_000
_used_ports: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, outside the ephemeral range."""
    return _free_ports(_PORT_RANGE, 0)


def free_cluster_port() -> int:
    """A port for a Redis Cluster node, whose bus port (port + 10000) is free as well.

    Both stay below the ephemeral range and out of ``free_port``'s way: a node whose bus
    port is taken (an outgoing connection's local port, another server) cannot start.
    """
    return _free_ports(_CLUSTER_PORT_RANGE, _CLUSTER_BUS_OFFSET)


def _free_ports(span: tuple[int, int], bus_offset: int) -> int:
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(*span)
        wanted = [port, port + bus_offset] if bus_offset else [port]
        if any(p in _used_ports for p in wanted) or not all(_bindable(p) for p in wanted):
            continue
        _used_ports.update(wanted)
        return port
    raise RuntimeError("no free port found")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll ``predicate`` until it is true; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def _flags(options: dict[str, object]) -> list[str]:
    """``{"port": 1}`` -> ``["--port", "1"]`` (redis-server's command line)."""
    return [arg for name, value in options.items() for arg in (f"--{name}", str(value))]


def _settings(options: dict[str, object]) -> list[str]:
    """``{"fsync": "off"}`` -> ``["-c", "fsync=off"]`` (postgres' command line)."""
    return [arg for name, value in options.items() for arg in ("-c", f"{name}={value}")]


def _owned_tempdir(prefix: str) -> Path:
    """A temp dir the postgres user can use (pytest's tmp_path sits under a 0700 dir)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    shutil.chown(path, PG_USER, PG_USER)
    return path


def no_retry_redis(url: str, **kwargs: object) -> redis.Redis:
    """A client whose commands fail at once when the server is away (no hidden retries)."""
    return redis.Redis.from_url(
        url,
        retry=Retry(NoBackoff(), 0),
        socket_connect_timeout=2,
        socket_timeout=5,
        **kwargs,  # type: ignore[arg-type]
    )


# -- Redis ---------------------------------------------------------------------------------


class RedisServer:
    """A ``redis-server`` of our own, persistent across restarts (AOF, fsync always)."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        assert not self.running, "redis already running"
        self.starts += 1
        options = {
            "port": self.port,
            "bind": "127.0.0.1",
            "dir": self.root,
            "save": "",
            "appendonly": "yes",
            "appendfsync": "always",
            "daemonize": "no",
            "protected-mode": "no",
        }
        log = open(self.root / "redis.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            ["redis-server", *_flags(options)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.wait_up()

    def wait_up(self, timeout: float = START_TIMEOUT_S) -> None:
        client = no_retry_redis(self.url)

        def answers() -> bool:
            if not self.running:
                raise AssertionError(f"redis-server exited: {self.log_tail()}")
            try:
                return bool(client.ping())
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                return False

        try:
            wait_until(answers, timeout, f"redis on port {self.port}")
        finally:
            client.close()

    def kill(self) -> None:
        """``kill -9``: no shutdown, no final save; the AOF is what survives."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.kill()
        self.start()

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)

    def client(self) -> redis.Redis:
        return no_retry_redis(self.url)

    def log_tail(self, lines: int = 20) -> str:
        path = self.root / "redis.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        self.kill()


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    root = Path(tempfile.mkdtemp(prefix="processor-redis-"))
    server = RedisServer(root)
    try:
        server.start()
        yield server
    finally:
        server.close()
        shutil.rmtree(root, ignore_errors=True)


# -- PostgreSQL ----------------------------------------------------------------------------

_template_lock = threading.Lock()
_template: Path | None = None


def _pg_template() -> Path:
    """One ``initdb`` per session; each server copies it (a copy is ~10x faster)."""
    global _template
    with _template_lock:
        if _template is None:
            root = _owned_tempdir("processor-pgtemplate-")
            atexit.register(shutil.rmtree, root, True)
            data = root / "data"
            subprocess.run(
                [
                    str(PG_BIN / "initdb"),
                    f"--pgdata={data}",
                    f"--username={PG_USER}",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-sync",
                    "--no-instructions",
                ],
                user=PG_USER,
                group=PG_USER,
                extra_groups=[],
                check=True,
                capture_output=True,
            )
            _template = data
        return _template


class PostgresServer:
    """A PostgreSQL cluster of our own, run as the postgres OS user."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.data = root / "data"
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.starts = 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def init(self) -> None:
        subprocess.run(["cp", "-a", str(_pg_template()), str(self.data)], check=True)

    def start(self) -> None:
        assert not self.running, "postgres already running"
        self.starts += 1
        settings = {
            "port": self.port,
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": self.root,
            "fsync": "off",
            "full_page_writes": "off",
            "shared_buffers": "32MB",
            "max_connections": 40,
        }
        log = open(self.root / "postgres.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [str(PG_BIN / "postgres"), "-D", str(self.data), *_settings(settings)],
            stdout=log,
            stderr=subprocess.STDOUT,
            user=PG_USER,
            group=PG_USER,
            extra_groups=[],
            start_new_session=True,
        )
        log.close()
        self.wait_up()

    def wait_up(self, timeout: float = START_TIMEOUT_S) -> None:
        def answers() -> bool:
            if not self.running:
                raise AssertionError(f"postgres exited: {self.log_tail()}")
            try:
                with psycopg.connect(self.url(), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return True
            except psycopg.OperationalError:
                return False

        wait_until(answers, timeout, f"postgres on port {self.port}", interval=0.1)

    def stop(self, mode: str = "fast") -> None:
        """``fast`` (SIGINT: abort sessions, checkpoint) or ``immediate`` (SIGQUIT: crash-like,
        recovery from WAL at the next start)."""
        if not self.running:
            return
        assert self.proc is not None
        self.resume()
        family: list[psutil.Process] = []
        with contextlib.suppress(psutil.NoSuchProcess):
            family = self._processes()
        sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode]
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        # The postmaster is gone; a backend still exiting would hold the shared memory
        # a new postmaster needs.
        _, alive = psutil.wait_procs(family[1:], timeout=10)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def _processes(self) -> list[psutil.Process]:
        assert self.proc is not None
        postmaster = psutil.Process(self.proc.pid)
        return [postmaster, *postmaster.children(recursive=True)]

    def pause(self) -> None:
        """SIGSTOP the postmaster, then every backend: up, but answering nothing."""
        assert self.running
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        for proc in self._processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if not self.paused or not self.running:
            self.paused = False
            return
        for proc in self._processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGCONT)
        self.paused = False

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log_tail(self, lines: int = 20) -> str:
        path = self.root / "postgres.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        self.resume()
        self.stop("immediate")


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    root = _owned_tempdir("processor-pg-")
    server = PostgresServer(root)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.close()
        shutil.rmtree(root, ignore_errors=True)


# -- Redis Cluster -------------------------------------------------------------------------


class RedisClusterServers:
    """Three ``redis-server --cluster-enabled yes`` masters (no replicas), slots spread.

    Throwaway: no persistence, each node in its own directory under ``root``; created with
    ``redis-cli --cluster create`` and ready once every node reports ``cluster_state:ok``.
    """

    def __init__(self, root: Path, nodes: int = 3) -> None:
        self.root = root
        self.ports = [free_cluster_port() for _ in range(nodes)]
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL naming the first node (the processor finds the rest)."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start(self) -> None:
        for port in self.ports:
            node_dir = self.root / str(port)
            node_dir.mkdir()
            options = {
                "port": port,
                "bind": "127.0.0.1",
                "dir": node_dir,
                "cluster-enabled": "yes",
                "cluster-config-file": f"nodes-{port}.conf",
                "save": "",
                "appendonly": "no",
                "daemonize": "no",
                "protected-mode": "no",
            }
            log = open(node_dir / "redis.log", "ab")  # noqa: SIM115 - handed to the child
            self.procs.append(
                subprocess.Popen(
                    ["redis-server", *_flags(options)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            log.close()
        for port, proc in zip(self.ports, self.procs, strict=True):
            client = no_retry_redis(f"redis://127.0.0.1:{port}")
            try:
                wait_until(
                    lambda c=client, p=proc, n=port: self._node_up(c, p, n),
                    START_TIMEOUT_S,
                    f"node {port}",
                )
            finally:
                client.close()
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_until(self._state_ok, START_TIMEOUT_S, "cluster_state:ok on every node")

    def _node_up(self, client: redis.Redis, proc: subprocess.Popen[bytes], port: int) -> bool:
        """True once the node answers; fails at once, with its log, if it exited."""
        if proc.poll() is not None:
            log = (self.root / str(port) / "redis.log").read_text(errors="replace")
            raise AssertionError(f"redis cluster node {port} exited: {log[-2000:]}")
        return _answers(client)

    def _state_ok(self) -> bool:
        for port in self.ports:
            client = no_retry_redis(f"redis://127.0.0.1:{port}")
            try:
                info = client.cluster("info")
            except redis.RedisError:
                return False
            finally:
                client.close()
            if info.get("cluster_state") != "ok":
                return False
        return True

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.ports[0])

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=10)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError):
        return False


@contextlib.contextmanager
def redis_cluster() -> Iterator[RedisClusterServers]:
    root = Path(tempfile.mkdtemp(prefix="processor-redis-cluster-"))
    cluster = RedisClusterServers(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)
