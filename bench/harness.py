"""Shared plumbing for the focused benches (profile, latency, memory, scaling, costs).

Built on ``bench/run.py``'s pieces (``Fleet``, ``publish``, ``wait_drained``,
``ProcessorProcess``, ``processor_env``, ``CpuSample``, ``migrate``), so every script runs
the real ``processor run`` the same way the end-to-end bench does:

- ``Sandbox``: a fresh database ``processor_bench_<hex>`` (schema by ``processor migrate``)
  and stream keys ``bench:<hex>:*``, both removed on exit (also on Ctrl-C / SIGTERM, via
  ``install_sigterm``);
- ``Sandbox.drain``: publish a backlog, start one or more processors on one group, time
  ``ready`` -> last commit exactly like ``bench.run`` (N / (max(ingested_at) - ready)), with
  the CPU each part used (processor(s), their PostgreSQL backends, Redis);
- small report helpers (``print_table``, ``write_json``, ``spread``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import hiredis
import redis

from bench import null_sink
from bench.run import (
    REPO_DIR,
    BenchError,
    Fleet,
    ProcessorProcess,
    backend_pids,
    cpu_seconds,
    db_url,
    log,
    migrate,
    parse_ts,
    pg_connect,
    processor_env,
    publish,
    rate,
    redis_cpu_seconds,
    scrape_metrics,
    wait_drained,
)
from processor import native
from processor.core.codec import encode
from processor.core.model import Position

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_ADMIN_URL = os.environ.get(
    "BENCH_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
DEFAULT_REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

__all__ = [
    "BenchError",
    "Fleet",
    "ProcessorProcess",
    "Sandbox",
    "log",
]


def add_common_args(parser: Any) -> None:
    parser.add_argument("--admin-url", default=DEFAULT_ADMIN_URL)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument(
        "--env",
        dest="processor_env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra processor setting for every run (repeatable)",
    )


def parse_env(items: Sequence[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--env {item!r}: expected NAME=VALUE")
        env[name] = value
    return env


def install_sigterm() -> None:
    """Turn SIGTERM into SystemExit so ``finally`` blocks stop processors and drop the DB."""

    def handler(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def rss_kb(pid: int, key: str = "VmRSS") -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()),
        # compiled or source, per hot-path module, as a processor started now would find
        # them (unless a run passes --env PROCESSOR_PURE_PYTHON=1)
        "native": native.status(),
    }


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median and range of repeated measurements."""
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return {"median": math.nan, "min": math.nan, "max": math.nan}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}


def fmt_spread(s: dict[str, float], unit: str = "", digits: int = 0) -> str:
    f = f"{{:,.{digits}f}}"
    return f"{f.format(s['median'])}{unit} [{f.format(s['min'])}-{f.format(s['max'])}]"


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(title)
    for i, row in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in
                               enumerate(zip(row, widths, strict=True))))  # fmt: skip
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"results written to {path}")


def distinct_device_fields(first: int, n: int, ts: datetime) -> list[dict[bytes, bytes]]:
    """One record each for devices ``first .. first+n-1`` (15-digit ids), all at ``ts``."""
    out = []
    for i in range(first, first + n):
        p = Position(
            device_id=f"35{i:013d}",
            ts=ts,
            latitude=41.0 + (i % 1000) / 1e4,
            longitude=20.0 + (i % 997) / 1e4,
            altitude=100.0,
            heading=float(i % 360),
            speed=float(i % 140),
            satellites=9,
            priority=0,
            event_io_id=0,
            fix_valid=True,
            attributes={"239": 1, "240": 1, "66": 12850, "16": 2**53 + i, "21": 4},
            received_at=ts + timedelta(milliseconds=500),
            codec="8E",
        )
        out.append(encode(p))
    return out


def prefill_devices(url: str, first: int, n: int, ts: datetime) -> int:
    """Store one row at ``ts`` for each device of ``distinct_device_fields(first, n, ...)``,
    so that a processor meeting them finds a row to rehydrate from (the restart case)."""
    with pg_connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO positions (device_id, ts, latitude, longitude, altitude, heading,"
            " speed, satellites, priority, event_io_id, fix_valid, attributes, received_at)"
            " SELECT '35' || lpad(i::text, 13, '0'), %s, 41.0, 20.0, 100.0, 0, 0, 9, 0, 0, true,"
            ' \'{"239": 1, "16": 9007199254740993}\'::jsonb, %s'
            " FROM generate_series(%s::bigint, %s::bigint) AS i",
            (ts, ts, first, first + n - 1),
        )
    return n


class RawXadd:
    """XADDs packed by hiredis onto a socket of their own, replies parsed by hiredis.

    A paced phase stands in for an ingestion service publishing each fix as it arrives:
    1-2 XADDs every ~0.5-1 ms. Through a redis-py pipeline that costs ~160 µs of this
    process's CPU per call (measured: 2 XADDs per call), ~25-35 % of a core at 2,000
    fixes/s, taken from the same two cores the processor is measured on, where the real
    ingestion runs on a host of its own. Packed and parsed by hiredis it is ~110 µs,
    most of which is the loopback TCP stack that the sender's syscalls run.
    """

    def __init__(self, url: str, stream: str) -> None:
        kw = redis.connection.parse_url(url)  # type: ignore[no-untyped-call]
        self._sock = socket.create_connection((kw.get("host", "127.0.0.1"), kw.get("port", 6379)))
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader = hiredis.Reader()
        self._pack = hiredis.pack_command
        self._stream = stream.encode()
        if kw.get("password"):
            self._call([b"AUTH", *([kw["username"]] if kw.get("username") else []), kw["password"]])
        if kw.get("db"):
            self._call([b"SELECT", str(kw["db"]).encode()])

    def _call(self, *commands: Sequence[Any]) -> list[Any]:
        self._sock.sendall(b"".join(self._pack(tuple(c)) for c in commands))
        replies: list[Any] = []
        while len(replies) < len(commands):
            reply = self._reader.gets()
            if reply is False:
                data = self._sock.recv(65536)
                if not data:
                    raise BenchError("redis closed the publisher's connection")
                self._reader.feed(data)
            elif isinstance(reply, Exception):
                raise BenchError(f"XADD failed: {reply}")
            else:
                replies.append(reply)
        return replies

    def xadd(self, records: Sequence[dict[bytes, bytes]]) -> list[str]:
        """XADD each record (one write, one read of all the replies); the entry ids."""
        commands = [
            [b"XADD", self._stream, b"*", *(x for kv in fields.items() for x in kv)]
            for fields in records
        ]
        return [i.decode() for i in self._call(*commands)]

    def close(self) -> None:
        self._sock.close()


def fleet_fields(
    records: int, devices: int, seed: int = 1
) -> tuple[Fleet, list[dict[bytes, bytes]]]:
    fleet = Fleet.create(devices, records * 4, seed)
    return fleet, [encode(p) for p in fleet.take(records)]


@dataclass
class Sandbox:
    """A fresh database and stream-key prefix; ``with Sandbox.open(...) as sb`` cleans up."""

    admin_url: str
    redis_url: str
    token: str
    url: str
    prefix: str
    r: redis.Redis
    storage: str | None = None
    procs: list[ProcessorProcess] = field(default_factory=list)
    prelude: str | None = None
    # Processors store nothing (``bench.null_sink``): drains are timed by the acks.
    null_sink: bool = False

    @classmethod
    @contextmanager
    def open(
        cls, admin_url: str, redis_url: str, *, database_settings: dict[str, str] | None = None
    ) -> Iterator[Sandbox]:
        token = uuid.uuid4().hex[:12]
        name = f"processor_bench_{token}"
        url = db_url(admin_url, name)
        r = redis.Redis.from_url(redis_url)
        r.ping()
        with pg_connect(admin_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
            for key, value in (database_settings or {}).items():
                admin.execute(f'ALTER DATABASE "{name}" SET {key} = {value}')
        sb = cls(admin_url, redis_url, token, url, f"bench:{token}", r)
        log(f"database {name}, stream keys {sb.prefix}:*")
        try:
            sb.storage = migrate(url, redis_url)
            yield sb
        finally:
            for proc in sb.procs:
                proc.kill()
            keys = list(r.scan_iter(match=f"{sb.prefix}:*", count=1000))
            if keys:
                r.delete(*keys)
            with pg_connect(admin_url, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            r.close()

    def stream(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    def truncate(self) -> None:
        with pg_connect(self.url, autocommit=True) as conn:
            conn.execute("TRUNCATE positions")

    def start(
        self,
        stream: str,
        group: str,
        env: dict[str, str] | None = None,
        *,
        name: str = "bench-1",
    ) -> ProcessorProcess:
        args = argparse.Namespace(redis_url=self.redis_url, processor_env=dict(env or {}))
        penv = processor_env(args, self.url, stream, group)
        penv["REDIS_CONSUMER_NAME"] = name
        # A crash dump is a failure to read in the log tail, not a result to commit.
        penv["PANIC_DUMP_DIR"] = args.processor_env.get("PANIC_DUMP_DIR", tempfile.gettempdir())
        prelude = "\n".join(
            p for p in (null_sink.PRELUDE if self.null_sink else None, self.prelude) if p
        )
        if prelude:
            # Python run in the processor's interpreter before it starts (experiments such
            # as "import gc; gc.freeze()"); then ``python -m processor run`` as usual.
            code = (
                f"{prelude}\nimport runpy, sys\nsys.argv = ['processor', 'run']\n"
                "runpy.run_module('processor', run_name='__main__', alter_sys=True)"
            )
            popen = subprocess.Popen(
                [sys.executable, "-c", code],
                env=penv,
                cwd=REPO_DIR,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            proc = ProcessorProcess(popen)
        else:
            proc = ProcessorProcess.start(penv)
        self.procs.append(proc)
        return proc

    def stop(self, proc: ProcessorProcess, timeout_s: float = 60) -> int:
        code, _ = proc.stop(timeout_s)
        errors = proc.find("error")
        if code != 0 or errors:
            raise BenchError(f"processor exit {code}, {len(errors)} error lines\n{proc.tail()}")
        return code

    def drop_stream(self, stream: str) -> None:
        """Delete a telemetry stream and the keys the processor names after it (its DLQ,
        the timing and committed feeds): a later drain must not share Redis's memory
        with an earlier one's leftovers."""
        self.r.delete(stream, f"{stream}:dlq", f"{stream}:timing", f"{stream}:committed")

    def drain(
        self,
        fields: Sequence[dict[bytes, bytes]],
        env: dict[str, str] | None = None,
        *,
        instances: int = 1,
        label: str = "e2e",
        keep_running: bool = False,
        on_ready: Callable[[list[ProcessorProcess]], None] | None = None,
        prepare: Callable[[], int] | None = None,
        live: bool = False,
        beside: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Publish ``fields`` as a backlog, start ``instances`` processors, time the drain.

        Rate = N / (newest ingested_at - the earliest ``ready``), as in ``bench.run``.
        With ``live`` the processors start first and the records are published into the
        running processors (as fast as Redis takes them, so a backlog builds at once); the
        clock starts at the first XADD. Only then do tails that start at the stream's newest
        entry (the broadcast plug-in's XREAD) see the records, as in production.
        The table is truncated first, so every run starts from the same empty table;
        ``prepare`` then may store rows of its own (it returns how many).
        ``beside``: the env of one more processor on the same stream, started (and ready)
        before the others and not part of the rate's clock, such as a timing instance
        (``TIMING=consume``); its CPU is reported as ``beside``.
        With ``null_sink`` the processors store nothing, so the drain
        ends when the group has acked everything (polled every 50 ms: the rate errs low
        by up to that much), and no row count is checked.
        Returns the figures; with ``keep_running`` the processes stay up
        (``result["procs"]``, ``beside`` last), otherwise they are stopped and checked
        (exit 0, no errors).
        """
        n = len(fields)
        stream, group = self.stream(f"{label}-{uuid.uuid4().hex[:6]}"), "bench"
        self.truncate()
        prefilled = prepare() if prepare else 0
        publish_s = math.nan
        if not live:
            started = time.perf_counter()
            publish(self.r, stream, fields)
            publish_s = time.perf_counter() - started
        extra = [] if beside is None else [self.start(stream, group, beside, name="bench-beside")]
        for proc in extra:
            proc.wait_event("ready", 60)
        procs = [self.start(stream, group, env, name=f"bench-{i + 1}") for i in range(instances)]
        for proc in procs:
            proc.wait_event("ready", 60)
        # The earliest "ready": with several instances, the clock starts when the first one
        # can work (conservative: a later starter only makes the rate look lower).
        ready_at = min(
            parse_ts(p.wait_event("ready", 1).get("timestamp")) or datetime.now(UTC) for p in procs
        )
        if on_ready:
            on_ready(procs)
        backends = backend_pids(self.url)
        before = _cpu(procs, backends, self.r, extra)
        wall0 = time.monotonic()
        if live:
            time.sleep(0.5)  # let every tail take its start id
            ready_at = datetime.now(UTC)
            started = time.perf_counter()
            publish(self.r, stream, fields)
            publish_s = time.perf_counter() - started

        def alive() -> bool:
            return all(p.alive() for p in procs + extra)

        try:
            acked_at = wait_drained(
                self.r, stream, group, n, alive=alive, deadline_s=max(300.0, n / 200)
            )
        except BenchError as exc:
            tails = "\n".join(
                f"  processor {p.pid} (exit {p.proc.poll()}):\n{p.tail()}" for p in procs + extra
            )
            raise BenchError(f"{label}: {exc}\n{tails}") from None
        wall = time.monotonic() - wall0
        after = _cpu(procs, backends, self.r, extra)
        cpu = {k: 100 * (after[k] - before[k]) / wall for k in before}
        if not self.null_sink:
            with pg_connect(self.url) as conn:
                count, last = conn.execute(
                    "SELECT count(*), max(ingested_at) FROM positions"
                ).fetchone()  # type: ignore[misc]
            if count != n + prefilled:
                raise BenchError(
                    f"{label}: drained but {count} rows stored, expected {n + prefilled}"
                )
            seconds = (last - ready_at).total_seconds()
        else:
            seconds = acked_at - ready_at.timestamp()
        result: dict[str, Any] = {
            "records": n,
            "instances": instances,
            "live": live,
            "env": dict(env or {}),
            "publish_records_per_s": rate(n, publish_s),
            "seconds": seconds,
            "records_per_s": rate(n, seconds),
            "cpu_percent": cpu,
            "stream": stream,
            "group": group,
        }
        if procs[0].events:
            http = next((e for e in procs[0].events if e.get("event") == "http listening"), None)
            result["metrics"] = scrape_metrics(http.get("url") if http else None)
        result["peak_rss_mb"] = [(rss_kb(p.pid, "VmHWM") or 0) / 1024 for p in procs]
        if keep_running:
            result["procs"] = procs + extra
        else:
            for proc in procs + extra:
                self.stop(proc)
            self.drop_stream(stream)
        log(
            f"{label}: {n} records, {instances} instance(s), {env or {}}: "
            f"{result['records_per_s']:,.0f} rec/s; CPU "
            + ", ".join(f"{k} {v:.0f}%" for k, v in cpu.items())
        )
        return result


def _cpu(
    procs: Sequence[ProcessorProcess],
    backends: Sequence[int],
    r: redis.Redis,
    beside: Sequence[ProcessorProcess] = (),
) -> dict[str, float]:
    """CPU seconds so far: each processor, their PostgreSQL backends, the Redis server."""
    out: dict[str, float] = {}
    for i, p in enumerate(procs):
        out[f"processor{i + 1}" if len(procs) > 1 else "processor"] = cpu_seconds(p.pid) or 0.0
    for p in beside:
        out["beside"] = cpu_seconds(p.pid) or 0.0
    out["postgres"] = sum(cpu_seconds(pid) or 0.0 for pid in backends)
    out["redis"] = redis_cpu_seconds(r)
    return out


def copy_ceiling(
    sb: Sandbox, records: int, devices: int, seed: int = 1, *, domain: bool = True
) -> float:
    """The bench's single binary COPY of the same kind of rows (rows/s), for ratios;
    ``domain``: the rows carry ``derived``, as a processor with the race domain on stores."""
    from bench.run import _copy_variants, copy_rows, time_copy

    rows = copy_rows(Fleet.create(devices, records * 4, seed).take(records), domain)
    fn = _copy_variants(1000)["single_binary"][1]
    seconds, _ = time_copy(sb.url, rows, "single_binary", fn)
    return rate(records, seconds)


def exit_on_bench_error(fn: Callable[[], int]) -> int:
    try:
        return fn()
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 2
