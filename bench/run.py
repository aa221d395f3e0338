"""End-to-end benchmark: the real processor beside the database's COPY ceiling and a naive consumer.

One run, one machine, three ways of getting the same synthetic contract records into the same
``positions`` table:

1. **COPY ceiling**: the rows, already in memory, ``COPY positions (...) FROM STDIN`` straight
   into PostgreSQL (batched like the processor, one COPY per ``--batch`` rows each committed;
   one big COPY; one big binary COPY). The best is the ceiling: no Redis, no decoding.
2. **Processor end to end**: every record is XADDed to a stream first, then ``processor run``
   is started as a subprocess and drains the backlog (read, decode, batch-insert, XACK).
   After the drain a second phase publishes at a steady rate to measure latency (XADD to
   committed row).
3. **Naive consumer**: XREADGROUP COUNT 1, decode, one INSERT (autocommit), one XACK, per
   record; measured on a smaller sample because it is slow.

Everything runs in a database and stream keys of its own (``processor_bench_<hex>``,
``bench:<hex>:*``), removed at the end. See ``bench/README.md``.

Exit codes: 0 ok, 1 ``--min-copy-ratio`` not met, 2 the benchmark itself failed (the
processor crashed, lost or corrupted rows, stalled, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import re
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import psycopg.types.json
import redis

import processor
from processor import config as processor_config
from processor import native
from processor.core.codec import decode, encode, stored_json
from processor.core.model import Position
from processor.domain.io_mapping import DEFAULT_MAPPING

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent

# The columns the processor writes. The bench builds rows itself (the processor's write path
# is free to change); what keeps the comparison fair is the check that the processor stores
# byte-identical rows to the COPY reference (``ROWS_DIGEST``), ``derived`` included: with
# the race domain on (the default) the processor stores each fix's named IO attributes
# too, so the references must store them as well or they would be timed on lighter rows.
COLUMNS = (
    "device_id",
    "ts",
    "latitude",
    "longitude",
    "altitude",
    "heading",
    "speed",
    "satellites",
    "priority",
    "event_io_id",
    "fix_valid",
    "attributes",
    "received_at",
    "derived",
)
COPY_TYPES = (
    "text",
    "timestamptz",
    "float8",
    "float8",
    "float8",
    "float8",
    "float8",
    "int2",
    "int2",
    "int4",
    "bool",
    "jsonb",
    "timestamptz",
    "jsonb",
)
COPY_SQL = f"COPY positions ({', '.join(COLUMNS)}) FROM STDIN"
COPY_BINARY_SQL = COPY_SQL + " (FORMAT BINARY)"
NAIVE_INSERT = (
    f"INSERT INTO positions ({', '.join(COLUMNS)}) VALUES "
    f"({', '.join(['%s'] * len(COLUMNS))}) ON CONFLICT (device_id, ts) DO NOTHING"
)
# What a stored row is, for "are these the same rows" checks (ingested_at excluded).
ROWS_DIGEST = f"""
SELECT count(*), md5(coalesce(string_agg(
    concat_ws('|', {", ".join(c + "::text" for c in COLUMNS)}), E'\\n'
    ORDER BY device_id, ts), ''))
FROM positions
"""

# Issue 6's targets, which replaced issue 2's first ones (0.40 of the ceiling, 10x naive)
# once the pipeline met those: what every table and summary judges a run against.
TARGET_COPY_RATIO = 0.60
TARGET_NAIVE_RATIO = 25.0

# Rally country: start points scattered over Albania.
_LAT = (39.8, 42.5)
_LON = (19.4, 20.9)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """The benchmark could not produce a trustworthy figure (exit code 2)."""


# --------------------------------------------------------------------------------------------
# Synthetic records


@dataclass
class Device:
    imei: str
    lat: float
    lon: float
    heading: float
    speed: float
    offset_ms: int
    odometer: int


@dataclass
class Fleet:
    """Thousands of trackers, each emitting one fix per second with increasing timestamps."""

    devices: list[Device]
    base: datetime
    rng: random.Random
    next_seq: int = 0
    made: int = 0

    @classmethod
    def create(cls, n_devices: int, total_records: int, seed: int) -> Fleet:
        rng = random.Random(seed)
        imeis: set[str] = set()
        while len(imeis) < n_devices:
            imeis.add("35" + "".join(rng.choice("0123456789") for _ in range(13)))
        devices = [
            Device(
                imei=imei,
                lat=rng.uniform(*_LAT),
                lon=rng.uniform(*_LON),
                heading=rng.uniform(0, 360),
                speed=rng.uniform(0, 140),
                offset_ms=rng.randrange(1000),
                odometer=2**53 + rng.randrange(10**9),
            )
            for imei in sorted(imeis)
        ]
        # Newest fix lands a minute in the past, well inside FUTURE_TOLERANCE_S.
        seconds = math.ceil(total_records / n_devices) + 60
        now = datetime.now(UTC).replace(microsecond=0)
        return cls(devices=devices, base=now - timedelta(seconds=seconds), rng=rng)

    def take(self, n: int) -> list[Position]:
        """The next ``n`` records: round robin over devices, like interleaved live traffic."""
        out: list[Position] = []
        rng = self.rng
        devices = self.devices
        for _ in range(n):
            index = self.made % len(devices)
            seq = self.made // len(devices)
            self.made += 1
            d = devices[index]
            d.heading = (d.heading + rng.uniform(-15, 15)) % 360
            d.speed = min(180.0, max(0.0, d.speed + rng.uniform(-8, 8)))
            step = d.speed / 3600 / 111.0  # degrees per second, roughly
            rad = math.radians(d.heading)
            d.lat = min(89.0, max(-89.0, d.lat + step * math.cos(rad)))
            d.lon = min(179.0, max(-179.0, d.lon + step * math.sin(rad)))
            d.odometer += int(d.speed / 3.6)
            ts = self.base + timedelta(seconds=seq, milliseconds=d.offset_ms)
            no_fix = rng.random() < 0.01
            sats = 0 if no_fix else rng.randint(5, 20)
            out.append(
                Position(
                    device_id=d.imei,
                    ts=ts,
                    latitude=0.0 if no_fix else round(d.lat, 7),
                    longitude=0.0 if no_fix else round(d.lon, 7),
                    altitude=float(rng.randint(0, 2000)),
                    heading=float(round(d.heading)),
                    speed=float(round(d.speed)),
                    satellites=sats,
                    priority=2 if rng.random() < 0.001 else rng.choice((0, 0, 0, 1)),
                    event_io_id=rng.choice((0, 0, 0, 239, 240, 247)),
                    fix_valid=not no_fix,
                    attributes={
                        "239": rng.choice((0, 1)),  # ignition
                        "240": 1 if d.speed > 0 else 0,  # movement
                        "21": rng.randint(1, 5),  # GSM signal
                        "66": rng.randint(11800, 14400),  # external voltage, mV
                        "67": rng.randint(3600, 4200),  # battery voltage, mV
                        "16": d.odometer,  # 8-byte counter beyond 2^53
                        "10": bytes((seq & 0xFF, index & 0xFF, 0x7E)),  # NX bytes value
                    },
                    received_at=ts + timedelta(milliseconds=rng.randint(150, 2500)),
                    codec="8E",
                )
            )
        return out


def position_row(p: Position, derived: bytes | None) -> tuple[Any, ...]:
    """The ``positions`` row the processor stores for a position, in ``COLUMNS`` order;
    ``derived`` as ``derive`` gives it."""
    return (
        p.device_id, p.ts, p.latitude, p.longitude, p.altitude, p.heading, p.speed,
        p.satellites, p.priority, p.event_io_id, p.fix_valid, stored_json(p.attributes).decode(),
        p.received_at, None if derived is None else derived.decode(),
    )  # fmt: skip


def derive(positions: Sequence[Position], domain: bool) -> list[bytes | None]:
    """Each position's ``derived`` column as the processor stores it: the default
    Teltonika IO mapping (the bench's devices have no model in Directus) with the race
    domain on, nothing with it off."""
    if not domain:
        return [None] * len(positions)
    return DEFAULT_MAPPING.apply_json([p.attributes for p in positions])


def domain_enabled(processor_env: dict[str, str]) -> bool:
    """Whether a processor with these settings (over the defaults) stores ``derived``."""
    variable = next(v for v in processor_config.VARIABLES if v.env == "DOMAIN_ENABLED")
    return bool(variable.parse(processor_env.get(variable.env, variable.default_text())))


def copy_rows(positions: Sequence[Position], domain: bool) -> list[tuple[Any, ...]]:
    """The rows a processor stores for ``positions``, with the race domain on or off."""
    return [position_row(p, d) for p, d in zip(positions, derive(positions, domain), strict=True)]


# --------------------------------------------------------------------------------------------
# Infrastructure helpers


def db_url(admin_url: str, name: str) -> str:
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


def pg_connect(url: str, autocommit: bool = False) -> psycopg.Connection[Any]:
    return psycopg.connect(
        url, autocommit=autocommit, options="-c timezone=UTC", application_name="processor-bench"
    )


def truncate(url: str) -> None:
    with pg_connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE positions")


def digest(url: str) -> tuple[int, str]:
    with pg_connect(url) as conn:
        count, md5 = conn.execute(ROWS_DIGEST).fetchone()  # type: ignore[misc]
        return int(count), str(md5)


def publish(
    r: redis.Redis, stream: str, records: Sequence[dict[bytes, bytes]], chunk: int = 1000
) -> list[str]:
    """XADD every record with non-transactional pipelines; returns the entry ids."""
    ids: list[str] = []
    for start in range(0, len(records), chunk):
        pipe = r.pipeline(transaction=False)
        for fields in records[start : start + chunk]:
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
        ids.extend(i.decode() if isinstance(i, bytes) else i for i in pipe.execute())
    return ids


def redis_cpu_seconds(r: redis.Redis) -> float:
    """CPU (user + system) the Redis server has used since it started."""
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])  # type: ignore[index]


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def group_state(r: redis.Redis, stream: str, group: str) -> tuple[int | None, int, str | None]:
    """(lag, pending, last-delivered-id) of ``group`` from XINFO GROUPS (lag: Redis 7+)."""
    for info in r.xinfo_groups(stream):  # type: ignore[union-attr]
        if _text(info["name"]) == group:
            lag = info.get("lag")
            return (
                None if lag is None else int(lag),
                int(info["pending"]),
                _text(info.get("last-delivered-id")),
            )
    return None, 0, None


def wait_drained(
    r: redis.Redis,
    stream: str,
    group: str,
    total: int,
    *,
    alive: Callable[[], bool],
    stall_s: float = 30.0,
    deadline_s: float = 3600.0,
) -> float:
    """Poll Redis until every entry was delivered to the group and acked; returns the time.

    Fails if the processor dies, or nothing moves for ``stall_s``, or ``deadline_s`` passes.
    """
    last_id = _text(r.xinfo_stream(stream)["last-generated-id"])  # type: ignore[index]
    started = time.monotonic()
    last_state: tuple[Any, ...] | None = None
    last_change = started
    while True:
        lag, pending, delivered = group_state(r, stream, group)
        now = time.monotonic()
        if delivered == last_id and pending == 0 and lag in (0, None):
            return time.time()
        if (lag, pending, delivered) != last_state:
            last_state, last_change = (lag, pending, delivered), now
        if not alive():
            raise BenchError(f"processor exited while draining (lag={lag}, pending={pending})")
        if now - last_change > stall_s:
            raise BenchError(
                f"no progress for {stall_s:.0f} s draining {total} records (lag={lag},"
                f" pending={pending}, last delivered {delivered}, last added {last_id})"
            )
        if now - started > deadline_s:
            raise BenchError(f"not drained within {deadline_s:.0f} s")
        time.sleep(0.05)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else math.nan


# --------------------------------------------------------------------------------------------
# The processor subprocess


@dataclass
class ProcessorProcess:
    """``processor run`` as a child process, its JSON log lines collected by a thread."""

    proc: subprocess.Popen[bytes]
    events: list[dict[str, Any]] = field(default_factory=list)
    other_lines: list[str] = field(default_factory=list)
    stderr_lines: list[str] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)
    changed: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    @classmethod
    def start(cls, env: dict[str, str], profile: Path | None = None) -> ProcessorProcess:
        prefix = ["-m", "cProfile", "-o", str(profile)] if profile else []
        proc = subprocess.Popen(
            [sys.executable, *prefix, "-m", "processor", "run"],
            env=env,
            cwd=REPO_DIR,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        return cls(proc)

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            with self.changed:
                try:
                    event = json.loads(line)
                    if not isinstance(event, dict):
                        raise ValueError
                    event["_received"] = time.time()
                    self.events.append(event)
                except ValueError:
                    self.other_lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self.lock:
                self.stderr_lines.append(raw.decode(errors="replace").rstrip("\n"))
                del self.stderr_lines[:-200]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_event(self, name: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while True:
                for event in self.events:
                    if event.get("event") == name:
                        return event
                if self.proc.poll() is not None:
                    raise BenchError(
                        f"processor exited ({self.proc.returncode}) before "
                        f"logging {name!r}\n{self.tail()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BenchError(
                        f"processor did not log {name!r} within {timeout_s:.0f} s\n{self.tail()}"
                    )
                self.changed.wait(min(remaining, 0.2))

    def find(self, level: str) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.events if e.get("level") == level]

    def tail(self, n: int = 25) -> str:
        with self.lock:
            lines = [
                json.dumps({k: v for k, v in e.items() if k != "_received"})
                for e in self.events[-n:]
            ]
            lines += self.other_lines[-n:]
            lines += ["stderr: " + s for s in self.stderr_lines[-n:]]
        return "\n".join("    " + line for line in lines)

    def peak_rss_bytes(self) -> int | None:
        """VmHWM: the resident set's high-water mark over the process's whole life."""
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(r"^VmHWM:\s+(\d+)\s+kB", text, re.MULTILINE)
        return int(match.group(1)) * 1024 if match else None

    def stop(self, timeout_s: float) -> tuple[int, float]:
        """SIGTERM, wait; returns (exit code, seconds to exit). Kills it if it hangs."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise BenchError(
                f"processor did not exit within {timeout_s:.0f} s of SIGTERM\n{self.tail()}"
            ) from None
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def processor_env(
    args: argparse.Namespace, postgres_url: str, stream: str, group: str
) -> dict[str, str]:
    """The child's environment: ours minus any processor setting (and the switch to
    run the hot path from source: pass it with ``--env``), plus the bench's."""
    own = {v.env for v in processor_config.VARIABLES} | {native.PURE_ENV}
    env = {k: v for k, v in os.environ.items() if k not in own}
    env.update(
        {
            "REDIS_URL": args.redis_url,
            "POSTGRES_URL": postgres_url,
            "REDIS_TELEMETRY_STREAM": stream,
            "REDIS_CONSUMER_GROUP": group,
            "REDIS_CONSUMER_NAME": "bench-1",
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": "0",
            # Listening plug-ins (live WebSocket feed) on a free loopback port, so runs
            # never collide with another processor on this machine.
            "WS_HOST": "127.0.0.1",
            "WS_PORT": "0",
            "LOG_LEVEL": "info",
            "PANIC_DUMP_DIR": str(BENCH_DIR / "results"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(args.processor_env)
    return env


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process has used so far (Linux /proc)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuSample:
    """CPU used so far by the processor, its PostgreSQL backends and the Redis server."""

    wall: float
    processor: float | None
    postgres: float | None
    redis: float | None

    @classmethod
    def take(cls, proc_pid: int, backend_pids: Sequence[int], r: redis.Redis) -> CpuSample:
        backends = [cpu_seconds(pid) for pid in backend_pids]
        try:
            redis_cpu: float | None = redis_cpu_seconds(r)
        except (redis.RedisError, KeyError, ValueError):
            redis_cpu = None
        return cls(
            wall=time.monotonic(),
            processor=cpu_seconds(proc_pid),
            postgres=sum(backends) if backends and None not in backends else None,  # type: ignore[arg-type]
            redis=redis_cpu,
        )

    def busy_since(self, earlier: CpuSample) -> dict[str, float | None]:
        """Percent of one CPU each part kept busy between the two samples."""
        wall = self.wall - earlier.wall
        out: dict[str, float | None] = {}
        for name in ("processor", "postgres", "redis"):
            now, then = getattr(self, name), getattr(earlier, name)
            out[name] = (
                None if now is None or then is None or wall <= 0 else (100 * (now - then) / wall)
            )
        return out


def backend_pids(url: str) -> list[int]:
    with pg_connect(url) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'processor'"
        ).fetchall()
    return [int(pid) for (pid,) in rows]


def parse_ts(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def scrape_metrics(url: str | None) -> dict[str, float]:
    """A few of the processor's own Prometheus figures (summed over label sets)."""
    if not url:
        return {}
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    wanted = (
        "processor_batch_size_records_sum",
        "processor_batch_size_records_count",
        "processor_rows_total",
        "processor_entries_acked_total",
        "processor_poison_records_total",
        "processor_write_retries_total",
        "processor_records_consumed_total",
    )
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        base = name.split("{", 1)[0]
        if base in wanted:
            with contextlib.suppress(ValueError):
                out[base] = out.get(base, 0.0) + float(value)
    return out


# --------------------------------------------------------------------------------------------
# Phases


CopyFn = Callable[[psycopg.Connection[Any], list[tuple[Any, ...]]], None]


def _copy_variants(batch: int) -> dict[str, tuple[str, CopyFn]]:
    jsonb_columns = [i for i, kind in enumerate(COPY_TYPES) if kind == "jsonb"]

    def batched(conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]]) -> None:
        with conn.cursor() as cur:
            for start in range(0, len(rows), batch):
                with cur.copy(COPY_SQL) as copy:
                    for row in rows[start : start + batch]:
                        copy.write_row(row)
                conn.commit()

    def single(conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]]) -> None:
        with conn.cursor() as cur, cur.copy(COPY_SQL) as copy:
            for row in rows:
                copy.write_row(row)
        conn.commit()

    def single_binary(conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]]) -> None:
        with conn.cursor() as cur, cur.copy(COPY_BINARY_SQL) as copy:
            copy.set_types(list(COPY_TYPES))
            for row in rows:
                values = list(row)
                for i in jsonb_columns:  # already JSON text: pass it through as is
                    if values[i] is not None:
                        values[i] = psycopg.types.json.Jsonb(values[i], dumps=lambda s: s)
                copy.write_row(values)
        conn.commit()

    return {
        "batched": (f"one COPY per {batch} rows, each committed", batched),
        "single": ("one COPY of every row, one commit", single),
        "single_binary": ("one binary COPY of every row, one commit", single_binary),
    }


def time_copy(url: str, rows: list[tuple[Any, ...]], key: str, fn: CopyFn) -> tuple[float, str]:
    """COPY the rows into an emptied table; returns (seconds, digest of the stored rows)."""
    truncate(url)
    with pg_connect(url) as conn:
        started = time.perf_counter()
        fn(conn, rows)
        seconds = time.perf_counter() - started
    count, md5 = digest(url)
    if count != len(rows):
        raise BenchError(f"COPY {key}: {count} rows stored, expected {len(rows)}")
    log(f"COPY {key}: {len(rows)} rows in {seconds:.2f} s = {rate(len(rows), seconds):,.0f} rows/s")
    return seconds, md5


def phase_copy(url: str, rows: list[tuple[Any, ...]], batch: int) -> dict[str, Any]:
    """COPY the rows into an empty table three ways; the fastest is the ceiling."""
    results: dict[str, Any] = {}
    reference: str | None = None
    for key, (description, fn) in _copy_variants(batch).items():
        seconds, md5 = time_copy(url, rows, key, fn)
        if reference is None:
            reference = md5
        elif md5 != reference:
            raise BenchError(f"COPY {key} stored different rows from the first variant")
        results[key] = {
            "description": description,
            "records": len(rows),
            "seconds": seconds,
            "records_per_s": rate(len(rows), seconds),
        }
    best = max(results, key=lambda k: results[k]["records_per_s"])
    assert reference is not None
    return {
        "variants": results,
        "ceiling_variant": best,
        "ceiling_records_per_s": results[best]["records_per_s"],
        "rows_md5": reference,
    }


def phase_copy_again(
    url: str, rows: list[tuple[Any, ...]], batch: int, copy: dict[str, Any]
) -> None:
    """Time the ceiling variant again after the end-to-end phase; the ceiling becomes the
    mean of the two, so a neighbour's load before or during the run skews it less."""
    key = copy["ceiling_variant"]
    seconds, md5 = time_copy(url, rows, key, _copy_variants(batch)[key][1])
    if md5 != copy["rows_md5"]:
        raise BenchError(f"COPY {key} stored different rows the second time")
    before = copy["variants"][key]["records_per_s"]
    after = rate(len(rows), seconds)
    copy["ceiling_after"] = {"seconds": seconds, "records_per_s": after}
    copy["ceiling_records_per_s"] = (before + after) / 2


def phase_end_to_end(
    args: argparse.Namespace,
    url: str,
    r: redis.Redis,
    prefix: str,
    fleet: Fleet,
    fields: list[dict[bytes, bytes]],
    copy_md5: str,
) -> dict[str, Any]:
    n = len(fields)
    stream, group = f"{prefix}:e2e", "bench"
    truncate(url)

    log(f"publishing {n} records to {stream}")
    started = time.perf_counter()
    publish(r, stream, fields)
    publish_s = time.perf_counter() - started
    log(f"published in {publish_s:.2f} s = {rate(n, publish_s):,.0f} XADD/s")

    env = processor_env(args, url, stream, group)
    spawned_at = time.time()
    proc = ProcessorProcess.start(env, args.profile)
    result: dict[str, Any] = {
        "records": n,
        "publish": {"seconds": publish_s, "records_per_s": rate(n, publish_s)},
        "processor_pid": proc.pid,
    }
    try:
        http = proc.wait_event("http listening", 60)
        ready = proc.wait_event("ready", 60)
        ready_at = parse_ts(ready.get("timestamp")) or datetime.fromtimestamp(
            ready["_received"], UTC
        )
        result["startup_s"] = ready_at.timestamp() - spawned_at
        log(f"processor pid {proc.pid} ready after {result['startup_s']:.2f} s; draining")
        backends = backend_pids(url)
        cpu_before = CpuSample.take(proc.pid, backends, r)

        drained_at = wait_drained(
            r, stream, group, n, alive=proc.alive, deadline_s=max(300.0, n / 200)
        )
        result["drain_cpu_percent"] = CpuSample.take(proc.pid, backends, r).busy_since(cpu_before)
        with pg_connect(url) as conn:
            count, first, last, p10, p90 = conn.execute(
                "SELECT count(*), min(ingested_at), max(ingested_at),"
                " percentile_disc(0.1) WITHIN GROUP (ORDER BY ingested_at),"
                " percentile_disc(0.9) WITHIN GROUP (ORDER BY ingested_at)"
                " FROM positions"
            ).fetchone()  # type: ignore[misc]
        if count != n:
            raise BenchError(f"group drained but positions holds {count} rows, expected {n}")
        seconds = (last - ready_at).total_seconds()
        steady_s = (p90 - p10).total_seconds()
        result.update(
            {
                "seconds": seconds,
                "records_per_s": rate(n, seconds),
                "steady_records_per_s": rate(int(0.8 * n), steady_s),
                "first_insert_after_ready_s": (first - ready_at).total_seconds(),
                "acked_after_ready_s": drained_at - ready_at.timestamp(),
            }
        )
        log(
            f"drained {n} records in {seconds:.2f} s = {result['records_per_s']:,.0f} rec/s "
            f"(middle 80%: {result['steady_records_per_s']:,.0f} rec/s)"
        )
        _, md5 = digest(url)
        result["rows_identical_to_copy"] = md5 == copy_md5
        if md5 != copy_md5:
            raise BenchError("the processor stored different rows from the COPY reference")

        result["latency"] = phase_latency(args, url, r, stream, group, fleet, proc)

        result["processor_metrics"] = scrape_metrics(http.get("url"))
        rss = proc.peak_rss_bytes()
        code, stop_s = proc.stop(timeout_s=60)
        if rss is None:  # /proc unavailable: the children's rusage (kB on Linux)
            rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        result.update({"peak_rss_mb": rss / 2**20, "exit_code": code, "stop_s": stop_s})
        log(
            f"processor stopped with exit code {code} in {stop_s:.2f} s; "
            f"peak RSS {rss / 2**20:.1f} MB"
        )
        errors = proc.find("error")
        result["error_log_lines"] = len(errors)
        dlq = r.xlen(f"{stream}:dlq")
        result["dead_lettered"] = dlq
        if code != 0:
            raise BenchError(f"processor exited with {code} after SIGTERM\n{proc.tail()}")
        if dlq or errors:
            raise BenchError(
                f"{dlq} records dead-lettered, {len(errors)} error log lines\n{proc.tail()}"
            )
        return result
    finally:
        proc.kill()


def phase_latency(
    args: argparse.Namespace,
    url: str,
    r: redis.Redis,
    stream: str,
    group: str,
    fleet: Fleet,
    proc: ProcessorProcess,
) -> dict[str, Any]:
    """Publish at a steady rate into the running processor; XADD -> row latency."""
    target_rate, duration = args.latency_rate, args.latency_seconds
    total = int(target_rate * duration)
    fields = [encode(p) for p in fleet.take(total)]
    with pg_connect(url) as conn:
        (phase_start,) = conn.execute("SELECT clock_timestamp()").fetchone()  # type: ignore[misc]
    log(f"latency phase: {total} records at {target_rate:,.0f} rec/s for {duration:g} s")
    ids: list[str] = []
    tick = 0.01
    cpu_before = cpu_seconds(proc.pid) or 0.0
    started = time.perf_counter()
    while len(ids) < total:
        due = min(total, int((time.perf_counter() - started) * target_rate) + 1)
        if due > len(ids):
            ids.extend(publish(r, stream, fields[len(ids) : due]))
        next_at = started + (len(ids) / target_rate)
        time.sleep(max(0.0, min(tick, next_at - time.perf_counter())))
    publish_s = time.perf_counter() - started
    cpu_percent = 100 * ((cpu_seconds(proc.pid) or 0.0) - cpu_before) / publish_s
    wait_drained(r, stream, group, total, alive=proc.alive)

    sent_ms: dict[tuple[str, datetime], int] = {}
    for entry_id, f in zip(ids, fields, strict=True):
        payload = json.loads(f[b"payload"])
        ts = datetime.fromisoformat(payload["timestamp"].replace("Z", "+00:00"))
        sent_ms[(payload["device_id"], ts)] = int(entry_id.split("-", 1)[0])
    with pg_connect(url) as conn:
        rows = conn.execute(
            "SELECT device_id, ts, ingested_at FROM positions WHERE ingested_at >= %s",
            (phase_start,),
        ).fetchall()
    latencies = sorted(
        ing.timestamp() * 1000 - sent_ms[(dev, ts)] for dev, ts, ing in rows if (dev, ts) in sent_ms
    )
    if len(latencies) != total:
        raise BenchError(f"latency phase: {len(latencies)} of {total} records stored")
    result = {
        "target_records_per_s": target_rate,
        "seconds": duration,
        "records": total,
        "achieved_publish_records_per_s": rate(total, publish_s),
        "p50_ms": percentile(latencies, 50),
        "p90_ms": percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99),
        "max_ms": latencies[-1],
        "mean_ms": sum(latencies) / len(latencies),
        # What a steady feed costs: the processor's CPU while it was published (READ_PACE_MS).
        "processor_cpu_percent": cpu_percent,
    }
    log(
        f"latency p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
        f"max {result['max_ms']:.1f} ms, processor CPU {cpu_percent:.0f}%"
    )
    return result


def phase_naive(
    url: str, r: redis.Redis, prefix: str, fields: list[dict[bytes, bytes]], domain: bool
) -> dict[str, Any]:
    """XREADGROUP COUNT 1, decode, INSERT, XACK: one record at a time (the same row as
    the processor's, ``derived`` included when ``domain``)."""
    n = len(fields)
    stream, group = f"{prefix}:naive", "naive"
    truncate(url)
    publish(r, stream, fields)
    r.xgroup_create(stream, group, id="0")
    log(f"naive consumer: {n} records")
    done = 0
    with pg_connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        deadline = time.monotonic() + max(120.0, n / 20)
        while done < n:
            reply = r.xreadgroup(group, "naive-1", {stream: ">"}, count=1, block=1000)
            if not reply:
                if time.monotonic() > deadline:
                    raise BenchError(f"naive consumer: {done} of {n} after the deadline")
                continue
            for entry_id, entry_fields in reply[0][1]:  # type: ignore[index]
                p = decode(entry_fields, now=datetime.now(UTC), future_tolerance_s=600)
                conn.execute(NAIVE_INSERT, position_row(p, derive([p], domain)[0]))
                r.xack(stream, group, entry_id)
                done += 1
        seconds = time.perf_counter() - started
    count, _ = digest(url)
    if count != n:
        raise BenchError(f"naive consumer stored {count} rows, expected {n}")
    result = {"records": n, "seconds": seconds, "records_per_s": rate(n, seconds)}
    log(f"naive: {n} records in {seconds:.2f} s = {result['records_per_s']:,.0f} rec/s")
    return result


# --------------------------------------------------------------------------------------------
# Report


def machine_info(url: str, r: redis.Redis, storage: str | None) -> dict[str, Any]:
    with pg_connect(url) as conn:
        (pg_version,) = conn.execute("SHOW server_version").fetchone()  # type: ignore[misc]
    info = r.info("server")
    return {
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgres": pg_version,
        "postgres_storage": storage,
        "redis": info.get("redis_version"),  # type: ignore[union-attr]
        "processor": processor.__version__,
        "psycopg": psycopg.__version__,
        "redis_py": redis.__version__,
    }


def fmt_rate(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.0f} rec/s"


def report_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    copy = result["copy"]["variants"]
    e2e = result.get("end_to_end") or {}
    naive = result.get("naive") or {}
    ratios = result["ratios"]
    lat = e2e.get("latency") or {}
    best = result["copy"]["ceiling_variant"]
    rows = []
    for key, item in copy.items():
        rows.append((f"COPY {key}", fmt_rate(item["records_per_s"]), item["description"]))
    after = result["copy"].get("ceiling_after")
    if after:
        rows.append(
            (
                "COPY ceiling",
                fmt_rate(result["copy"]["ceiling_records_per_s"]),
                f"{best}: mean of before ({fmt_rate(copy[best]['records_per_s'])}) and after "
                f"({fmt_rate(after['records_per_s'])}) the end-to-end phase",
            )
        )
    rows.append(
        (
            "processor end to end",
            fmt_rate(e2e.get("records_per_s")),
            f"{e2e.get('records', 0):,} records, backlog drained, ready -> last commit",
        )
    )
    if e2e.get("steady_records_per_s"):
        rows.append(
            (
                "  middle 80% of rows",
                fmt_rate(e2e["steady_records_per_s"]),
                "10th -> 90th percentile of ingested_at",
            )
        )
    rows.append(
        (
            "naive consumer",
            fmt_rate(naive.get("records_per_s")),
            f"{naive.get('records', 0):,} records, INSERT + XACK per record",
        )
    )

    def ratio_row(name: str, value: float | None, target: float, unit: str) -> None:
        if value is None or math.isnan(value):
            rows.append((name, "-", f"target >= {target:g}{unit}"))
            return
        verdict = "met" if value >= target else "NOT met"
        shown = f"{value:.2f}" if unit == "" else f"{value:.1f}{unit}"
        rows.append((name, shown, f"target >= {target:g}{unit}: {verdict}"))

    ratio_row("end to end / COPY ceiling", ratios.get("e2e_over_copy"), TARGET_COPY_RATIO, "")
    ratio_row("end to end / naive", ratios.get("e2e_over_naive"), TARGET_NAIVE_RATIO, "x")
    if lat:
        rows.append(
            (
                "latency p50 / p99",
                f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} ms",
                f"XADD -> row, {lat['records']:,} records at "
                f"{lat['target_records_per_s']:,.0f} rec/s (max {lat['max_ms']:.0f} ms)",
            )
        )
        if "processor_cpu_percent" in lat:
            rows.append(
                (
                    "CPU at that steady rate",
                    f"processor {lat['processor_cpu_percent']:.0f}%",
                    "percent of one core while the latency phase was published",
                )
            )
    if "peak_rss_mb" in e2e:
        rows.append(
            ("processor peak RSS", f"{e2e['peak_rss_mb']:.1f} MB", "VmHWM of the processor process")
        )
    cpu = e2e.get("drain_cpu_percent") or {}
    if cpu:
        shown = ", ".join(
            f"{name} {'-' if value is None else f'{value:.0f}%'}" for name, value in cpu.items()
        )
        rows.append(("CPU while draining", shown, "percent of one core, ready -> drained"))
    if "publish" in e2e:
        rows.append(
            (
                "publish (XADD, pipelined)",
                fmt_rate(e2e["publish"]["records_per_s"]),
                "synthetic records into the stream before the processor starts",
            )
        )
    return rows


def print_report(result: dict[str, Any]) -> None:
    m = result["machine"]
    title = (
        f"processor bench{' (quick)' if result['params']['quick'] else ''}: "
        f"{m['cpu_count']} CPUs, PostgreSQL {m['postgres']} ({m['postgres_storage']}), "
        f"Redis {m['redis']}, Python {m['python']}, processor {m['processor']}; "
        f"load average {m['load_average_at_start'][0]:.2f} at start, "
        f"{m['load_average_at_end'][0]:.2f} at end"
    )
    rows = report_rows(result)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        rich = False
    else:
        rich = True
    print(title)
    if not rich:
        widths = [max(len(r[i]) for r in rows) for i in range(2)]
        for name, value, note in rows:
            print(f"  {name:<{widths[0]}}  {value:>{widths[1]}}  {note}")
        return
    table = Table()
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("note")
    for row in rows:
        table.add_row(*row)
    Console(width=140).print(table)


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__.split("\n\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit codes: 0 ok, 1 --min-copy-ratio not met, 2 benchmark failure.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small CI-sized run (~30 s): 50000 records, 2000 devices, "
        "1000 naive records, 5 s latency phase",
    )
    parser.add_argument(
        "--records", type=int, help="records for COPY and end to end (default 200000, quick 50000)"
    )
    parser.add_argument("--devices", type=int, help="distinct devices (default 5000, quick 2000)")
    parser.add_argument(
        "--naive-records",
        type=int,
        help="records for the naive consumer (default 3000, quick 1000)",
    )
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=2000.0,
        help="steady publish rate of the latency phase, rec/s (default 2000)",
    )
    parser.add_argument(
        "--latency-seconds", type=float, help="length of the latency phase (default 10, quick 5)"
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=2000,
        help="rows per COPY in the batched COPY variant (default 2000, "
        "the processor's BATCH_MAX default)",
    )
    parser.add_argument(
        "--min-copy-ratio",
        type=float,
        default=0.0,
        help="exit 1 if end-to-end / COPY ceiling is below this (0 = no check)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="JSON result file (default bench/results/latest.json, "
        "quick: bench/results/quick.json)",
    )
    parser.add_argument(
        "--admin-url",
        default=os.environ.get(
            "BENCH_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="PostgreSQL URL allowed to CREATE/DROP DATABASE",
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument(
        "--env",
        dest="processor_env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra processor setting, e.g. --env BATCH_MAX=2000 (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="whole runs one after another (each in a database and streams of its own);"
        " the report adds each round's ratios and their median, which --min-copy-ratio"
        " then checks (default 1)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="run the processor under cProfile and write its stats to FILE (slows it down:"
        " for finding hot spots, not for figures)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the database and stream keys for inspection"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.records = args.records or (50_000 if quick else 200_000)
    args.devices = args.devices or (2_000 if quick else 5_000)
    args.naive_records = args.naive_records or (1_000 if quick else 3_000)
    if args.latency_seconds is None:
        args.latency_seconds = 5.0 if quick else 10.0
    args.out = args.out or BENCH_DIR / "results" / ("quick.json" if quick else "latest.json")
    env: dict[str, str] = {}
    for item in args.processor_env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--env {item!r}: expected NAME=VALUE")
        env[name] = value
    args.processor_env = env
    if args.profile:
        args.profile = args.profile.resolve()
    if args.naive_records > args.records:
        parser.error("--naive-records cannot exceed --records")
    if args.rounds < 1:
        parser.error("--rounds >= 1 please")
    if args.records < 10 or args.devices < 1 or args.latency_rate <= 0:
        parser.error("--records >= 10, --devices >= 1 and --latency-rate > 0 please")
    return args


def migrate(url: str, redis_url: str) -> str | None:
    """``processor migrate`` (the real CLI); returns the storage mode it reports."""
    own = {v.env for v in processor_config.VARIABLES}
    env = {k: v for k, v in os.environ.items() if k not in own}
    env.update(POSTGRES_URL=url, REDIS_URL=redis_url, LOG_LEVEL="info")
    done = subprocess.run(
        [sys.executable, "-m", "processor", "migrate"],
        env=env,
        cwd=REPO_DIR,
        capture_output=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(
            f"processor migrate exited {done.returncode}:\n"
            f"{done.stdout.decode()}{done.stderr.decode()}"
        )
    for line in done.stdout.decode().splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and event.get("event") == "migrations applied":
                return event.get("storage")
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    token = uuid.uuid4().hex[:12]
    db_name = f"processor_bench_{token}"
    prefix = f"bench:{token}"
    url = db_url(args.admin_url, db_name)
    r = redis.Redis.from_url(args.redis_url)
    r.ping()
    with pg_connect(args.admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{db_name}"')
    log(f"database {db_name}, stream keys {prefix}:*")
    result: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "params": {
            "quick": args.quick,
            "records": args.records,
            "devices": args.devices,
            "naive_records": args.naive_records,
            "latency_rate": args.latency_rate,
            "latency_seconds": args.latency_seconds,
            "copy_batch": args.batch,
            "min_copy_ratio": args.min_copy_ratio,
            "processor_env": args.processor_env,
            "seed": args.seed,
            "profiled": bool(args.profile),
        },
    }
    try:
        storage = migrate(url, args.redis_url)
        result["machine"] = machine_info(url, r, storage)

        started = time.perf_counter()
        total = args.records + int(args.latency_rate * args.latency_seconds)
        fleet = Fleet.create(args.devices, total, args.seed)
        positions = fleet.take(args.records)
        fields = [encode(p) for p in positions]
        domain = domain_enabled(args.processor_env)
        rows = copy_rows(positions, domain)
        del positions
        log(
            f"generated {args.records} records for {args.devices} devices in "
            f"{time.perf_counter() - started:.2f} s"
        )

        result["copy"] = phase_copy(url, rows, args.batch)
        result["end_to_end"] = phase_end_to_end(
            args, url, r, prefix, fleet, fields, result["copy"]["rows_md5"]
        )
        phase_copy_again(url, rows, args.batch, result["copy"])
        result["naive"] = phase_naive(url, r, prefix, fields[: args.naive_records], domain)
    finally:
        if args.keep:
            log(f"kept database {db_name} and stream keys {prefix}:*")
        else:
            keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
            if keys:
                r.delete(*keys)
            with pg_connect(args.admin_url, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        r.close()

    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    e2e = result["end_to_end"]["records_per_s"]
    ceiling = result["copy"]["ceiling_records_per_s"]
    result["ratios"] = {
        "e2e_over_copy": e2e / ceiling,
        "e2e_over_naive": e2e / result["naive"]["records_per_s"],
    }
    result["targets"] = {
        "e2e_over_copy_min": TARGET_COPY_RATIO,
        "e2e_over_naive_min": TARGET_NAIVE_RATIO,
        "e2e_over_copy_met": result["ratios"]["e2e_over_copy"] >= TARGET_COPY_RATIO,
        "e2e_over_naive_met": result["ratios"]["e2e_over_naive"] >= TARGET_NAIVE_RATIO,
    }
    return result


def _terminated(signum: int, _frame: Any) -> None:
    # Unwind through the ``finally`` blocks: stop the processor, drop the database.
    raise SystemExit(128 + signum)


def summarise(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several whole runs: each round's figures and the median of each ratio, which is
    what a target is held to when one run's ratio moves by +/-15 % with the machine."""
    rounds = [
        {
            "end_to_end_records_per_s": r["end_to_end"]["records_per_s"],
            "copy_ceiling_records_per_s": r["copy"]["ceiling_records_per_s"],
            "e2e_over_copy": r["ratios"]["e2e_over_copy"],
            "e2e_over_naive": r["ratios"]["e2e_over_naive"],
            "p99_ms": r["end_to_end"]["latency"]["p99_ms"],
        }
        for r in results
    ]
    summary: dict[str, Any] = {"rounds": rounds}
    for key in ("e2e_over_copy", "e2e_over_naive"):
        values = sorted(r[key] for r in rounds)
        summary[key] = {"median": statistics.median(values), "min": values[0], "max": values[-1]}
    summary["targets_met"] = {
        "e2e_over_copy": summary["e2e_over_copy"]["median"] >= TARGET_COPY_RATIO,
        "e2e_over_naive": summary["e2e_over_naive"]["median"] >= TARGET_NAIVE_RATIO,
    }
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    print(f"{len(summary['rounds'])} rounds:")
    print("  round  end to end rec/s  ceiling rec/s  e2e/COPY  e2e/naive  p99 ms")
    for i, r in enumerate(summary["rounds"], 1):
        print(
            f"  {i:>5}  {r['end_to_end_records_per_s']:>16,.0f}"
            f"  {r['copy_ceiling_records_per_s']:>13,.0f}  {r['e2e_over_copy']:>8.2f}"
            f"  {r['e2e_over_naive']:>8.1f}x  {r['p99_ms']:>6.1f}"
        )
    for key, target, unit in (
        ("e2e_over_copy", TARGET_COPY_RATIO, ""),
        ("e2e_over_naive", TARGET_NAIVE_RATIO, "x"),
    ):
        f = summary[key]
        verdict = "met" if summary["targets_met"][key] else "NOT met"
        digits = 1 if unit else 3
        print(
            f"  {key} median {f['median']:.{digits}f}{unit}"
            f" [{f['min']:.{digits}f}-{f['max']:.{digits}f}]: target >= {target:g}{unit} {verdict}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    results: list[dict[str, Any]] = []
    try:
        for k in range(args.rounds):
            if args.rounds > 1:
                log(f"round {k + 1} of {args.rounds}")
            results.append(run(args))
            if args.rounds > 1:
                print_report(results[-1])
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 2
    check = args.min_copy_ratio
    if args.rounds == 1:
        (result,) = results
        ratio = result["ratios"]["e2e_over_copy"]
    else:
        summary = summarise(results)
        result = {"params": results[0]["params"], "summary": summary, "runs": results}
        ratio = summary["e2e_over_copy"]["median"]
    result["check"] = {"min_copy_ratio": check, "passed": not check or ratio >= check}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if args.rounds == 1:
        print_report(result)
    else:
        print_summary(summary)
    print(f"results written to {args.out}")
    if args.profile and args.profile.exists():
        import pstats

        print(f"processor profile written to {args.profile}; top functions by own time:")
        pstats.Stats(str(args.profile)).sort_stats("tottime").print_stats(20)
    if check and ratio < check:
        print(
            f"FAIL: end to end / COPY ceiling{' (median)' if args.rounds > 1 else ''}"
            f" = {ratio:.3f} < --min-copy-ratio {check:g}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
