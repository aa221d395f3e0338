"""Live-broadcast fan-out: 500 WebSocket clients on 20 events at 2,000 positions/s.

Issue 4's benchmark. A fresh database holds the race tables
(``schema/directus/race_tables.sql``) with ``--events`` live events of
``--devices / --events`` entered trackers each; the Directus stand-in of the tests
(``tests/broadcast/directus_stub.py``, a real HTTP server, in a thread of this process)
knows one user per client, each allowed every event. Each round starts one real
``processor run`` (defaults, ``DIRECTUS_URL`` = the stub) and, in this order (the odd
rounds run the client part first, so neither side always sees the warmer process):

1. **warm-up**: one fix per device, drained (first sight of every device; not measured);
2. **drain, no clients**: ``--backlog`` records published as fast as Redis takes them
   into the running processor (the broadcast tail only sees what arrives after start);
   rate = N / (newest ``ingested_at`` - first XADD), as in ``Sandbox.drain(live=True)``;
3. **paced, no clients**: ``--rate`` positions/s for ``--seconds``: the processor's CPU
   and RSS with nobody listening (the reference for the next step);
4. **connect**: ``--clients`` connections from ``bench.fanout_clients``, a process of its
   own (cookie auth, one ``subscribe`` each, client i -> event i mod E), all snapshots in
   (``--client-nice N`` runs it at a lower CPU priority than the processor);
5. **paced, with clients**: the same rate and length. Latency per ``position`` frame =
   client receive wall time - the fix's ``ts``, which the publisher sets to its clock
   just before the XADD (same machine, same clock; the XADD id's millisecond part minus
   ``ts`` is reported as the bias, normally 0-1 ms, so the figure errs high). Also:
   frames delivered / expected, the processor's CPU and RSS, the client process's CPU
   and its event-loop lag (a frame the client reads late counts as late: on two shared
   cores the client's own scheduling delay is part of the figure);
6. **drain, with clients**: the same backlog with every client connected and subscribed;
7. the clients close (1000) and their process exits.

Every step first waits until the race domain has timed what the step before left it
(after a burst it times the burst's devices from the stored rows, up to 2 s later) and
the processor is idle. Drains are watched with a
once-a-second timeline of acked entries: a long stall is a result (reported as the
longest time nothing was acked), only a dead processor or the deadline fails the run.
Throughput lost = 1 - (6) / (2), per round. Targets: p99 < 100 ms (every round), loss
< 10 % (median); exit 0 both met, 1 not, 2 the bench failed. The processor's broadcast
metrics (frames sent / coalesced, slow-client closes, hub hand-off delay) are read from
its ``/metrics`` around each step.
JSON: ``bench/results/fanout.json`` (``--quick``: ``fanout_quick.json``).

``--split`` runs the deployment that keeps fan-out out of the write pipeline's process:
the pipeline instance with ``WS_ENABLED=false`` and a broadcast-only instance
(``PIPELINE_ENABLED=false``) that the clients connect to (``fanout_split*.json``). The
drains are the pipeline's; the broadcaster's CPU is reported beside it, and "CPU per
frame" is both instances' together. The broadcaster runs with ``NICE=10``
(``--caster-nice``), as OPERATIONS.md recommends where it shares CPUs with the pipeline.

    python -m bench.fanout [--clients 500] [--events 20] [--rate 2000] [--seconds 20]
    python -m bench.fanout --quick       # 1 round, 5 s paced phases, 20,000-record backlog
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import random
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
import trio

from bench.harness import (
    RESULTS_DIR,
    ProcessorProcess,
    RawXadd,
    Sandbox,
    _cpu,
    add_common_args,
    exit_on_bench_error,
    fmt_spread,
    install_sigterm,
    log,
    machine,
    parse_env,
    print_table,
    rss_kb,
    spread,
    write_json,
)
from bench.run import (
    REPO_DIR,
    BenchError,
    _text,
    backend_pids,
    cpu_seconds,
    group_state,
    percentile,
    pg_connect,
    publish,
    rate,
)
from processor.core.codec import encode
from processor.core.model import Position
from tests.broadcast.directus_stub import DirectusStub

RACE_TABLES = REPO_DIR / "schema" / "directus" / "race_tables.sql"
TARGET_P99_MS = 100.0
TARGET_LOSS = 0.10
# Deliveries count as complete once the clients' frame count stops moving this long.
SETTLE_S = 3.0


# --------------------------------------------------------------------------------------------
# Fixtures: race rows, the Directus stand-in, the records


def setup_race(url: str, imeis: Sequence[str], events: int) -> dict[str, str]:
    """``events`` live events, device i entered in event i mod E; returns imei -> event id."""
    with pg_connect(url, autocommit=True) as conn:
        conn.execute(RACE_TABLES.read_text())
        event_ids = [
            str(row[0])
            for row in conn.execute(
                "INSERT INTO events (name, status)"
                " SELECT 'fanout-' || i, 'live' FROM generate_series(1, %s) AS i RETURNING id",
                (events,),
            ).fetchall()
        ]
        conn.execute(
            "INSERT INTO devices (imei, model) SELECT unnest(%s::text[]), 'FMB920'", (list(imeis),)
        )
        event_of = {imei: event_ids[i % events] for i, imei in enumerate(imeis)}
        for event_id in event_ids:
            members = [imei for imei, e in event_of.items() if e == event_id]
            conn.execute(
                "INSERT INTO entries (event_id, device_id, number)"
                " SELECT %s, d.id, d.imei FROM devices d WHERE d.imei = ANY(%s)",
                (int(event_id), members),
            )
    return event_of


@contextmanager
def directus_stub(tokens: Sequence[str], event_ids: Sequence[str]) -> Iterator[DirectusStub]:
    """The tests' Directus stand-in, served by Trio in a thread of this process."""
    stub = DirectusStub()
    for token in tokens:
        stub.grant(token, f"user-{token}", *event_ids)
    started = threading.Event()
    state: dict[str, Any] = {}

    async def serve() -> None:
        state["token"] = trio.lowlevel.current_trio_token()
        stop = state["stop"] = trio.Event()
        async with trio.open_nursery() as nursery:
            await nursery.start(stub.run)
            started.set()
            await stop.wait()
            nursery.cancel_scope.cancel()

    def main() -> None:
        try:
            trio.run(serve)
        except BaseException as exc:  # reported to the caller, which raises
            state["error"] = exc
            started.set()

    thread = threading.Thread(target=main, name="directus-stub", daemon=True)
    thread.start()
    if not started.wait(30) or "error" in state:
        raise BenchError(f"directus stub did not start: {state.get('error')!r}")
    log(f"directus stub at {stub.url}")
    try:
        yield stub
    finally:
        trio.from_thread.run_sync(state["stop"].set, trio_token=state["token"])
        thread.join(10)


@dataclass
class Feed:
    """Trackers moving about; each record's ``ts`` is the clock it is given (ms), kept
    strictly increasing per device so the hub never drops one as late."""

    imeis: list[str]
    rng: random.Random
    state: list[list[float]] = field(default_factory=list)  # lat, lon, heading, speed
    last_ms: list[int] = field(default_factory=list)
    next: int = 0

    @classmethod
    def create(cls, devices: int, seed: int) -> Feed:
        rng = random.Random(seed)
        imeis = [f"35{7_000_000_000 + i:013d}" for i in range(devices)]
        state = [
            [rng.uniform(39.8, 42.5), rng.uniform(19.4, 20.9), rng.uniform(0, 360), 60.0]
            for _ in imeis
        ]
        return cls(imeis, rng, state, [0] * devices)

    def make(self, n: int, now_ms: int) -> tuple[list[dict[bytes, bytes]], list[str]]:
        out: list[dict[bytes, bytes]] = []
        devices: list[str] = []
        for _ in range(n):
            i = self.next
            self.next = (i + 1) % len(self.imeis)
            s = self.state[i]
            s[2] = (s[2] + self.rng.uniform(-15, 15)) % 360
            s[0] += 0.0002 * math.cos(math.radians(s[2]))
            s[1] += 0.0002 * math.sin(math.radians(s[2]))
            ms = max(now_ms, self.last_ms[i] + 1)
            self.last_ms[i] = ms
            ts = datetime.fromtimestamp(ms / 1000, UTC)
            p = Position(
                device_id=self.imeis[i],
                ts=ts,
                latitude=round(s[0], 7),
                longitude=round(s[1], 7),
                altitude=300.0,
                heading=float(round(s[2])),
                speed=s[3],
                satellites=12,
                priority=0,
                event_io_id=0,
                fix_valid=True,
                attributes={"239": 1, "240": 1, "66": 12850, "16": 2**53 + ms},
                received_at=ts + timedelta(milliseconds=5),
                codec="8E",
            )
            out.append(encode(p))
            devices.append(self.imeis[i])
        return out, devices


# --------------------------------------------------------------------------------------------
# The client process


@dataclass
class ClientProcess:
    """``python -m bench.fanout_clients`` with a line-oriented JSON conversation."""

    proc: subprocess.Popen[bytes]
    answers: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    stderr: list[str] = field(default_factory=list)

    @classmethod
    def start(
        cls, port: int, event_ids: Sequence[str], clients: int, deadline_s: float, nice: int = 0
    ) -> ClientProcess:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.fanout_clients", "--port", str(port),
             "--events", ",".join(event_ids), "--clients", str(clients),
             "--deadline-s", f"{deadline_s:.0f}"],
            cwd=REPO_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,
        )  # fmt: skip
        me = cls(proc)
        threading.Thread(target=me._read_stdout, daemon=True).start()
        threading.Thread(target=me._read_stderr, daemon=True).start()
        return me

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                self.answers.put(json.loads(raw))
            except ValueError:
                self.stderr.append("stdout: " + raw.decode(errors="replace").rstrip())
        self.answers.put({"event": "exited"})

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.stderr.append(raw.decode(errors="replace").rstrip())
            del self.stderr[:-50]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def expect(self, event: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                answer = self.answers.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise BenchError(
                    f"clients: no {event!r} within {timeout_s:.0f} s\n" + "\n".join(self.stderr)
                ) from None
            if answer.get("event") == event:
                return answer
            if answer.get("event") in ("exited", "deadline", "error"):
                raise BenchError(f"clients: {answer} while waiting for {event!r}\n"
                                 + "\n".join(self.stderr))  # fmt: skip

    def command(self, name: str, timeout_s: float = 30) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(name.encode() + b"\n")
        self.proc.stdin.flush()
        return self.expect(name, timeout_s)

    def quit(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"quit\n")
        self.proc.stdin.flush()
        bye = self.expect("bye", 30)
        self.proc.wait(timeout=15)
        return bye

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=15)

    def settle(self, expected: int, timeout_s: float) -> int:
        """Poll the window's frame count until it reaches ``expected`` or stops moving."""
        deadline = time.monotonic() + timeout_s
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            frames = int(self.command("count")["frames"])
            if frames >= expected:
                return frames
            if frames != last:
                last, since = frames, time.monotonic()
            elif time.monotonic() - since > SETTLE_S:
                return frames
            time.sleep(0.2)
        return last


# --------------------------------------------------------------------------------------------
# Measurements


def wait_idle(pid: int, below_percent: float = 10.0, timeout_s: float = 60.0) -> float:
    """Wait until the process uses under ``below_percent`` of a core over 0.5 s.

    After records of a live event's devices the race domain keeps working for a few
    seconds (its first sight of each entry); a phase that started then would measure it.
    Returns the seconds waited (the bench goes on after ``timeout_s`` regardless).
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        before = cpu_seconds(pid) or 0.0
        time.sleep(0.5)
        if 100 * ((cpu_seconds(pid) or 0.0) - before) / 0.5 < below_percent:
            break
    return time.monotonic() - started


def wait_timed(http_url: str | None, timeout_s: float = 60.0) -> float:
    """Wait until the race domain has no devices left to time from the stored rows.

    After a burst of full batches timing waits up to ``DEFER_UNDER_BACKLOG_S`` (2 s) and
    then recomputes the burst's devices; the process is idle in between, so ``wait_idle``
    alone can start the next phase before that work, and the phase measures it (the
    warm-up's 2,000 devices cost the first paced phase ~17 % of a core for ~10 s).
    Returns the seconds waited (no domain, no gauge: no wait).
    """
    started = time.monotonic()
    while http_url and time.monotonic() - started < timeout_s:
        with urllib.request.urlopen(http_url.rstrip("/") + "/metrics", timeout=5) as response:
            text = response.read().decode()
        gauge = re.search(r"^processor_domain_backlog_devices (\S+)$", text, re.M)
        if gauge is None or float(gauge.group(1)) == 0:
            break
        time.sleep(0.2)
    return time.monotonic() - started


def watch_drain(
    r: redis.Redis,
    stream: str,
    group: str,
    proc: ProcessorProcess,
    http_url: str | None,
    *,
    deadline_s: float,
) -> dict[str, Any]:
    """Wait until the group has read and acked the whole stream, like ``wait_drained``,
    but keep a once-a-second timeline (acked, frames sent) and the longest time nothing
    was acked, instead of failing after 30 s without progress: with clients connected
    the write pipeline can stall that long, which is a result, not a broken bench.
    Fails when the processor exits or ``deadline_s`` passes.
    """
    last_id = _text(r.xinfo_stream(stream)["last-generated-id"])
    started = time.monotonic()
    timeline: list[tuple[float, float, float]] = []
    next_sample = started
    last_acked, last_change, longest, missed = -1.0, started, 0.0, 0
    while True:
        lag, pending, delivered = group_state(r, stream, group)
        now = time.monotonic()
        if delivered == last_id and pending == 0 and lag in (0, None):
            break
        if not proc.alive():
            raise BenchError(f"processor exited while draining (lag={lag}, pending={pending})")
        if now - started > deadline_s:
            raise BenchError(
                f"not drained within {deadline_s:.0f} s (lag={lag}, pending={pending})"
            )
        if now >= next_sample:
            try:
                m = ws_metrics(http_url)
            except OSError:  # a saturated processor answers /metrics late: a gap
                m = {}
                missed += 1
            acked = m.get("processor_entries_acked_total", 0.0)
            timeline.append((round(now - started, 1), acked,
                             m.get("processor_ws_frames_sent_total", 0.0)))  # fmt: skip
            if m and acked != last_acked:
                last_acked, last_change = acked, now
            longest = max(longest, now - last_change)
            next_sample += 1.0
        time.sleep(0.05)
    return {"timeline": timeline, "longest_no_ack_s": longest, "missed_scrapes": missed}


def ws_metrics(http_url: str | None) -> dict[str, float]:
    """The processor's broadcast samples (and acks), by full sample name."""
    if not http_url:
        return {}
    with urllib.request.urlopen(http_url.rstrip("/") + "/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("processor_ws_", "processor_entries_acked_total")):
            name, _, value = line.rpartition(" ")
            out[name] = out.get(name, 0.0) + float(value)
    return out


def broadcast_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    def d(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    handed = d("processor_ws_fanout_seconds_count")
    return {
        "frames_sent": d("processor_ws_frames_sent_total"),
        "frames_per_write": d("processor_ws_frames_sent_total") / d("processor_ws_writes_total")
        if d("processor_ws_writes_total")
        else math.nan,
        "frames_coalesced": d("processor_ws_frames_coalesced_total"),
        "slow_clients_closed": d("processor_ws_slow_clients_closed_total"),
        "hub_handoffs": handed,
        "hub_handoff_mean_ms": 1000 * d("processor_ws_fanout_seconds_sum") / handed
        if handed
        else math.nan,
        "hub_handoff_within_100ms": d('processor_ws_fanout_seconds_bucket{le="0.1"}') / handed
        if handed
        else math.nan,
        "clients": after.get("processor_ws_clients", math.nan),
        "subscriptions": after.get("processor_ws_subscriptions", math.nan),
    }


@dataclass
class Meter:
    """CPU seconds of the processor, its backends, Redis, the clients and this process."""

    proc: ProcessorProcess
    backends: list[int]
    r: redis.Redis
    clients: ClientProcess | None = None
    caster: ProcessorProcess | None = None  # --split: the broadcast-only instance

    def sample(self) -> dict[str, float]:
        out = _cpu([self.proc], self.backends, self.r)
        if self.caster is not None:
            out["broadcaster"] = cpu_seconds(self.caster.pid) or 0.0
        if self.clients is not None:
            out["clients"] = cpu_seconds(self.clients.pid) or 0.0
        out["bench"] = time.process_time()  # publisher + Directus stub thread
        out["_wall"] = time.monotonic()
        return out

    @staticmethod
    def percent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        wall = after["_wall"] - before["_wall"]
        return {k: 100 * (after[k] - before[k]) / wall for k in before if k != "_wall"}


def latency_summary(report: dict[str, Any]) -> dict[str, float]:
    """Percentiles of the clients' histogram (1 ms buckets, coarser beyond 10 s)."""
    values: list[float] = []
    for ms, count in sorted(report["hist"].items(), key=lambda kv: int(kv[0])):
        values.extend([int(ms) + 0.5] * count)
    for ms, count in sorted(report["over"].items(), key=lambda kv: int(kv[0])):
        values.extend([int(ms) + 50.0] * count)
    spent = report["last_at"] - report["first_at"]
    return {
        "frames": len(values),
        "frames_per_s": len(values) / spent if spent > 0 else math.nan,
        "p50_ms": percentile(values, 50),
        "p90_ms": percentile(values, 90),
        "p99_ms": percentile(values, 99),
        "p999_ms": percentile(values, 99.9),
        "max_ms": values[-1] if values else math.nan,
        "negative": report["negative"],
    }


@dataclass
class Round:
    sb: Sandbox
    args: argparse.Namespace
    feed: Feed
    event_of: dict[str, str]
    event_ids: list[str]
    proc: ProcessorProcess
    stream: str
    group: str
    http: str | None  # where the broadcast's metrics are: the broadcaster with --split
    caster: ProcessorProcess | None = None
    pipeline_http: str | None = None  # the pipeline's own metrics (timing backlog)

    def meter(self, clients: ClientProcess | None = None) -> Meter:
        return Meter(self.proc, backend_pids(self.sb.url), self.sb.r, clients, self.caster)

    def wait_idle(self) -> float:
        waited = wait_timed(self.pipeline_http) + wait_idle(self.proc.pid)
        return waited + (wait_idle(self.caster.pid) if self.caster is not None else 0.0)

    def drain(
        self, n: int, clients: ClientProcess | None = None, label: str = "drain"
    ) -> dict[str, Any]:
        """Publish ``n`` records into the running processor as fast as Redis takes them."""
        sb = self.sb
        sb.truncate()
        fields, devices = self.feed.make(n, int(time.time() * 1000))
        waited = self.wait_idle()
        meter, metrics0 = self.meter(clients), ws_metrics(self.http)
        if clients is not None:
            clients.command("window")
        cpu0 = meter.sample()
        t0 = datetime.now(UTC)
        publish(sb.r, self.stream, fields)
        watched = watch_drain(
            sb.r, self.stream, self.group, self.proc, self.http, deadline_s=max(600.0, n / 50)
        )
        cpu = Meter.percent(cpu0, meter.sample())
        with pg_connect(sb.url) as conn:
            count, last = conn.execute(
                "SELECT count(*), max(ingested_at) FROM positions WHERE ingested_at >= %s", (t0,)
            ).fetchone()  # type: ignore[misc]
        if count != n:
            raise BenchError(f"drain: {count} rows stored, expected {n}")
        seconds = (last - t0).total_seconds()
        out: dict[str, Any] = {
            "records": n,
            "waited_for_idle_s": waited,
            "seconds": seconds,
            "records_per_s": rate(n, seconds),
            "cpu_percent": cpu,
            "processor_cpu_us_per_record": cpu["processor"] / 100 * seconds / n * 1e6,
            "longest_no_ack_s": watched["longest_no_ack_s"],
            "ack_timeline": watched["timeline"],
            "missed_metric_scrapes": watched["missed_scrapes"],
        }
        if clients is not None:
            expected = self.expected_frames(Counter(self.event_of[d] for d in devices))
            clients.settle(expected, max(120.0, expected / 5000))
            report = clients.command("report")
            out["frames_expected"] = expected
            out["frames_received"] = report["frames"]
            out["delivered"] = report["frames"] / expected if expected else math.nan
            out["regressions"] = report["regressions"]
            out["open_clients"] = report["open_clients"]
            out["latency_from_ts"] = latency_summary(report)
        out["broadcast"] = broadcast_delta(metrics0, ws_metrics(self.http))
        log(
            f"{label} {'with' if clients else 'without'} clients: {n} records, "
            f"{out['records_per_s']:,.0f} rec/s, processor CPU {cpu['processor']:.0f}%"
        )
        return out

    def expected_frames(self, per_event: Counter[str]) -> int:
        clients_of = Counter(
            self.event_ids[i % len(self.event_ids)] for i in range(self.args.clients)
        )
        return sum(count * clients_of[e] for e, count in per_event.items())

    def paced(self, clients: ClientProcess | None = None) -> dict[str, Any]:
        """``--rate`` positions/s for ``--seconds``, each fix stamped just before its XADD."""
        args, sb = self.args, self.sb
        total = int(args.rate * args.seconds)
        per_event: Counter[str] = Counter()
        bias: list[int] = []
        waited = self.wait_idle()
        meter, metrics0 = self.meter(clients), ws_metrics(self.http)
        if clients is not None:
            clients.command("window")
        cpu0 = meter.sample()
        sent = 0
        xadd = RawXadd(sb.redis_url, self.stream)
        started = time.perf_counter()
        give_up = started + 3 * args.seconds + 30
        try:
            while sent < total:
                due = min(total, int((time.perf_counter() - started) * args.rate) + 1)
                if due > sent:
                    now_ms = int(time.time() * 1000)
                    fields, devices = self.feed.make(due - sent, now_ms)
                    ids = xadd.xadd(fields)
                    bias.extend(int(i.split("-", 1)[0]) - now_ms for i in ids)
                    per_event.update(self.event_of[d] for d in devices)
                    sent = due
                if time.perf_counter() > give_up:
                    raise BenchError(f"paced: published only {sent} of {total} in time")
                next_at = started + sent / args.rate
                time.sleep(max(0.0, min(0.005, next_at - time.perf_counter())))
        finally:
            xadd.close()
        publish_s = time.perf_counter() - started
        cpu = Meter.percent(cpu0, meter.sample())
        rss = {"processor_mb": (rss_kb((self.caster or self.proc).pid) or 0) / 1024}
        bias.sort()
        out: dict[str, Any] = {
            "records": total,
            "publish_seconds": publish_s,
            "waited_for_idle_s": waited,
            "achieved_records_per_s": rate(total, publish_s),
            "cpu_percent": cpu,
            "xadd_minus_ts_ms": {"p50": percentile(bias, 50), "p99": percentile(bias, 99),
                                 "max": bias[-1]},
        }  # fmt: skip
        watched = watch_drain(sb.r, self.stream, self.group, self.proc, self.http, deadline_s=600)
        out["longest_no_ack_s"] = watched["longest_no_ack_s"]
        if clients is not None:
            rss["clients_mb"] = (rss_kb(clients.pid) or 0) / 1024
            expected = self.expected_frames(per_event)
            clients.settle(expected, max(60.0, expected / 5000))
            cpu1 = meter.sample()
            out["cpu_percent_until_delivered"] = Meter.percent(cpu0, cpu1)
            out["delivery_seconds"] = cpu1["_wall"] - cpu0["_wall"]
            report = clients.command("report")
            out["frames_expected"] = expected
            out["frames_received"] = report["frames"]
            out["delivered"] = report["frames"] / expected if expected else math.nan
            out["per_client_frames"] = spread(report["per_client"])
            out["regressions"] = report["regressions"]
            out["open_clients"] = report["open_clients"]
            out["other_frames"] = report["other_frames"]
            out["client_loop_lag_ms"] = report["loop_lag_ms"]
            out["latency"] = lat = latency_summary(report)
            out["processor_cpu_s_until_delivered"] = instances_cpu(cpu1) - instances_cpu(cpu0)
            log(
                f"paced with clients: p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms, "
                f"max {lat['max_ms']:.0f} ms, delivered {out['delivered']:.3%}, "
                f"processor CPU {cpu['processor']:.0f}%, clients CPU {cpu['clients']:.0f}%"
            )
        else:
            log(f"paced without clients: processor CPU {cpu['processor']:.0f}%")
        out["rss"] = rss
        out["broadcast"] = broadcast_delta(metrics0, ws_metrics(self.http))
        return out


def one_round(
    sb: Sandbox,
    k: int,
    args: argparse.Namespace,
    feed: Feed,
    event_of: dict[str, str],
    event_ids: list[str],
    stub_url: str,
    extra: dict[str, str],
) -> dict[str, Any]:
    stream, group = sb.stream(f"fanout-{k}"), "bench"
    env = {"DIRECTUS_URL": stub_url} | extra
    caster = None
    if args.split:
        # The pipeline writes and times, a broadcast-only instance serves the clients.
        proc = sb.start(stream, group, env | {"WS_ENABLED": "false"}, name=f"bench-{k + 1}")
        caster = sb.start(
            stream,
            group,
            env | {"PIPELINE_ENABLED": "false", "NICE": str(args.caster_nice)},
            name=f"bench-{k + 1}-ws",
        )
    else:
        proc = sb.start(stream, group, env, name=f"bench-{k + 1}")
    serving = caster or proc
    out: dict[str, Any] = {"round": k, "order": "clients last" if k % 2 == 0 else "clients first"}
    try:
        proc.wait_event("ready", 60)
        serving.wait_event("ready", 60)
        port = int(serving.wait_event("websocket listening", 60)["port"])
        http = serving.wait_event("http listening", 60).get("url")
        own = proc.wait_event("http listening", 60).get("url")
        rd = Round(sb, args, feed, event_of, event_ids, proc, stream, group, http, caster, own)
        rd.drain(len(feed.imeis), label="warm-up")  # first sight of every device
        steps = ["drain", "paced", "clients"] if k % 2 == 0 else ["clients", "paced", "drain"]
        for step in steps:
            if step == "drain":
                out["drain_no_clients"] = rd.drain(args.backlog)
            elif step == "paced":
                out["paced_no_clients"] = rd.paced()
            else:
                out["rss_before_clients_mb"] = (rss_kb(serving.pid) or 0) / 1024
                clients = ClientProcess.start(
                    port,
                    event_ids,
                    args.clients,
                    deadline_s=600 + 4 * args.seconds,
                    nice=args.client_nice,
                )
                try:
                    ready = clients.expect("ready", 120)
                    out["connect"] = ready
                    log(
                        f"{ready['subscribed']} of {args.clients} clients subscribed in "
                        f"{ready['connect_seconds']:.1f} s"
                    )
                    if ready["subscribed"] != args.clients:
                        raise BenchError(f"clients not all subscribed: {ready['outcomes']}")
                    out["paced_clients"] = rd.paced(clients)
                    out["drain_clients"] = rd.drain(args.backlog, clients)
                    out["bye"] = clients.quit()
                finally:
                    clients.kill()
        out["processor_peak_rss_mb"] = (rss_kb(serving.pid, "VmHWM") or 0) / 1024
        procs = [proc] if caster is None else [proc, caster]
        errors = [e for p in procs for e in p.find("error")]
        warnings = [w for p in procs for w in p.find("warning")]
        out["processor_warnings"] = [w.get("event") for w in warnings][:20]
        for p in procs:
            sb.stop(p)
        if errors:
            raise BenchError(f"processor logged {len(errors)} errors")
    finally:
        proc.kill()
        if caster is not None:
            caster.kill()
        sb.drop_stream(stream)
    a = out["drain_no_clients"]["records_per_s"]
    b = out["drain_clients"]["records_per_s"]
    out["drain_ratio"] = b / a
    log(f"round {k + 1}: drain {a:,.0f} -> {b:,.0f} rec/s with clients ({b / a - 1:+.1%})")
    return out


# --------------------------------------------------------------------------------------------
# Report


def instances_cpu(sample: dict[str, float]) -> float:
    """The processor's CPU figure, plus the broadcast-only instance's with ``--split``."""
    return sample["processor"] + sample.get("broadcaster", 0.0)


def extra_cpu_per_frame_us(r: dict[str, Any]) -> float:
    """Processor CPU the clients cost per frame: CPU from the paced phase's start until the
    last frame arrived, minus what the same publishing cost with no client connected."""
    paced, alone = r["paced_clients"], r["paced_no_clients"]
    baseline = instances_cpu(alone["cpu_percent"]) / 100 * paced["publish_seconds"]
    frames = paced["frames_received"]
    return (
        (paced["processor_cpu_s_until_delivered"] - baseline) / frames * 1e6 if frames else math.nan
    )


def summarise(rounds: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    def s(path: str) -> dict[str, float]:
        vals = []
        for r in rounds:
            v: Any = r
            for part in path.split("."):
                v = v[part]
            vals.append(float(v))
        return spread(vals)

    losses = [1 - r["drain_ratio"] for r in rounds]
    p99 = s("paced_clients.latency.p99_ms")
    return {
        "p50_ms": s("paced_clients.latency.p50_ms"),
        "p99_ms": p99,
        "max_ms": s("paced_clients.latency.max_ms"),
        "delivered": s("paced_clients.delivered"),
        "regressions": sum(r["paced_clients"]["regressions"] for r in rounds),
        "client_loop_lag_p99_ms": s("paced_clients.client_loop_lag_ms.p99"),
        "xadd_minus_ts_max_ms": s("paced_clients.xadd_minus_ts_ms.max"),
        "cpu_no_clients": s("paced_no_clients.cpu_percent.processor"),
        "cpu_clients": s("paced_clients.cpu_percent.processor"),
        "cpu_clients_until_delivered": s("paced_clients.cpu_percent_until_delivered.processor"),
        "frames_per_s": s("paced_clients.latency.frames_per_s"),
        "cpu_us_per_frame": spread([extra_cpu_per_frame_us(r) for r in rounds]),
        "hub_handoff_mean_ms": s("paced_clients.broadcast.hub_handoff_mean_ms"),
        "frames_per_write": s("paced_clients.broadcast.frames_per_write"),
        "cpu_client_process": s("paced_clients.cpu_percent.clients"),
        "cpu_broadcaster": s("paced_clients.cpu_percent.broadcaster") if args.split else None,
        "cpu_postgres_clients": s("paced_clients.cpu_percent.postgres"),
        "rss_no_clients_mb": s("rss_before_clients_mb"),
        "rss_clients_mb": s("paced_clients.rss.processor_mb"),
        "peak_rss_mb": s("processor_peak_rss_mb"),
        "client_rss_mb": s("paced_clients.rss.clients_mb"),
        "drain_no_clients": s("drain_no_clients.records_per_s"),
        "drain_clients": s("drain_clients.records_per_s"),
        "drain_delivered": s("drain_clients.delivered"),
        "longest_no_ack_no_clients_s": s("drain_no_clients.longest_no_ack_s"),
        "longest_no_ack_clients_s": s("drain_clients.longest_no_ack_s"),
        "loss": spread(losses),
        "coalesced_paced": s("paced_clients.broadcast.frames_coalesced"),
        "coalesced_drain": s("drain_clients.broadcast.frames_coalesced"),
        "slow_closed": sum(
            r["paced_clients"]["broadcast"]["slow_clients_closed"]
            + r["drain_clients"]["broadcast"]["slow_clients_closed"]
            for r in rounds
        ),
        "client_close_codes": dict(sum((Counter(r["bye"]["closes"]) for r in rounds), Counter())),
        "p99_target_met": p99["max"] < TARGET_P99_MS,
        "loss_target_met": spread(losses)["median"] < TARGET_LOSS,
    }


def print_report(summary: dict[str, Any], args: argparse.Namespace, n_rounds: int) -> None:
    per_event = args.clients / args.events
    t = summary

    def ok(met: bool) -> str:
        return "met" if met else "NOT met"

    rows = [
        ("XADD -> frame received, p50", fmt_spread(t["p50_ms"], " ms", 1), ""),
        ("XADD -> frame received, p99", fmt_spread(t["p99_ms"], " ms", 1),
         f"< {TARGET_P99_MS:g} ms every round: {ok(t['p99_target_met'])}"),
        ("XADD -> frame received, max", fmt_spread(t["max_ms"], " ms"), ""),
        ("frames delivered / expected", fmt_spread({k: 100 * v for k, v in t["delivered"].items()},
                                                   " %", 2), ""),
        ("client event-loop lag, p99", fmt_spread(t["client_loop_lag_p99_ms"], " ms", 1),
         "part of the latency"),
        ("XADD id - fix ts (bias), max", fmt_spread(t["xadd_minus_ts_max_ms"], " ms"),
         "latency errs high by this"),
        ("processor CPU, no clients", fmt_spread(t["cpu_no_clients"], " %"), "% of one core"),
        (f"processor CPU, {args.clients} clients", fmt_spread(t["cpu_clients"], " %"),
         "while publishing"),
        ("  same, until all delivered", fmt_spread(t["cpu_clients_until_delivered"], " %"), ""),
        ("frames delivered per second", fmt_spread(t["frames_per_s"], "/s"),
         f"{args.rate * per_event:,.0f}/s needed"),
        ("processor CPU per frame", fmt_spread(t["cpu_us_per_frame"], " µs", 1),
         "beyond the no-client cost"),
        ("XADD -> hub hand-off, mean", fmt_spread(t["hub_handoff_mean_ms"], " ms"),
         "processor_ws_fanout_seconds"),
        ("frames per socket write", fmt_spread(t["frames_per_write"], "", 2),
         "paced, with clients"),
        ("client process CPU", fmt_spread(t["cpu_client_process"], " %"), ""),
        *([("broadcast-only instance CPU", fmt_spread(t["cpu_broadcaster"], " %"),
            "--split: serves the clients")] if args.split else []),
        ("processor RSS, no clients", fmt_spread(t["rss_no_clients_mb"], " MB", 1), ""),
        (f"processor RSS, {args.clients} clients", fmt_spread(t["rss_clients_mb"], " MB", 1), ""),
        ("processor peak RSS (VmHWM)", fmt_spread(t["peak_rss_mb"], " MB", 1), ""),
        ("write pipeline, no clients", fmt_spread(t["drain_no_clients"], " rec/s"),
         f"{args.backlog:,}-record drain"),
        (f"write pipeline, {args.clients} clients", fmt_spread(t["drain_clients"], " rec/s"), ""),
        ("throughput lost with clients", fmt_spread({k: 100 * v for k, v in t["loss"].items()},
                                                    " %", 1),
         f"< {100 * TARGET_LOSS:g} % (median): {ok(t['loss_target_met'])}"),
        ("longest time nothing acked, drain",
         f"{fmt_spread(t['longest_no_ack_no_clients_s'], ' s', 1)} / "
         f"{fmt_spread(t['longest_no_ack_clients_s'], ' s', 1)}", "no clients / clients"),
        ("frames delivered during that drain",
         fmt_spread({k: 100 * v for k, v in t["drain_delivered"].items()}, " %", 1),
         "short of 100 %: coalesced"),
        ("frames coalesced, paced / drain",
         f"{fmt_spread(t['coalesced_paced'])} / {fmt_spread(t['coalesced_drain'])}", ""),
        ("slow clients closed (1013), all", f"{t['slow_closed']:.0f}", ""),
        ("no-regression violations", f"{t['regressions']}", "must be 0"),
    ]  # fmt: skip
    print_table(
        f"fan-out: {args.clients} clients ({per_event:g} per event), {args.events} events x "
        f"{args.devices // args.events} devices, {args.rate:,.0f} positions/s for "
        f"{args.seconds:g} s; {n_rounds} round(s), median [min-max]",
        ("figure", "measured", "target / note"),
        rows,
    )


def run(args: argparse.Namespace) -> int:
    extra = parse_env(args.processor_env)
    feed = Feed.create(args.devices, args.seed)
    tokens = [f"fanout-{i}" for i in range(args.clients)]
    rounds: list[dict[str, Any]] = []
    result: dict[str, Any] = {
        "machine": machine(),
        "params": {
            k: getattr(args, k)
            for k in ("clients", "events", "devices", "rate", "seconds", "backlog", "rounds",
                      "quick", "seed", "split", "caster_nice", "client_nice")
        } | {"processor_env": extra},
        "rounds": rounds,
    }  # fmt: skip
    with Sandbox.open(args.admin_url, args.redis_url) as sb:
        event_of = setup_race(sb.url, feed.imeis, args.events)
        event_ids = sorted(set(event_of.values()), key=int)
        with directus_stub(tokens, event_ids) as stub:
            for k in range(args.rounds):
                log(f"round {k + 1} of {args.rounds}")
                rounds.append(one_round(sb, k, args, feed, event_of, event_ids, stub.url, extra))
            result["directus_calls"] = len(stub.calls)
    result["machine"]["load_average_end"] = list(os.getloadavg())
    summary = summarise(rounds, args)
    result["summary"] = summary
    print_report(summary, args, len(rounds))
    log("done")
    write_json(Path(args.out), result)
    return 0 if summary["p99_target_met"] and summary["loss_target_met"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fanout",
        description=__doc__.split("\n\n", 1)[0],
        epilog="Exit codes: 0 targets met, 1 a target not met, 2 benchmark failure.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="1 round, 5 s paced phases, 20,000-record backlog")  # fmt: skip
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--devices", type=int, default=2_000, help="entered trackers, all events")
    parser.add_argument("--rate", type=float, default=2_000.0, help="positions/s, paced phases")
    parser.add_argument("--seconds", type=float, help="length of a paced phase (20, quick 5)")
    parser.add_argument("--backlog", type=int, help="records per drain (50000, quick 20000)")
    parser.add_argument("--rounds", type=int, help="fresh processor per round (3, quick 1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--split", action="store_true",
                        help="the pipeline (WS_ENABLED=false) beside a broadcast-only "
                        "instance (PIPELINE_ENABLED=false) serving the clients")  # fmt: skip
    parser.add_argument(
        "--client-nice",
        type=int,
        default=0,
        metavar="N",
        help="niceness of the client process (0; 10 lets the processor take the CPU "
        "first, as if the browsers were on their own machines)",
    )
    parser.add_argument("--caster-nice", type=int, default=10, metavar="N",
                        help="--split: NICE of the broadcast-only instance (10, as "
                        "OPERATIONS.md recommends on a shared host; 0: same priority)")  # fmt: skip
    parser.add_argument("--out", help="JSON (bench/results/fanout.json, quick fanout_quick.json)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    q = args.quick
    args.seconds = args.seconds or (5.0 if q else 20.0)
    args.backlog = args.backlog or (20_000 if q else 50_000)
    args.rounds = args.rounds or (1 if q else 3)
    name = "fanout" + ("_split" if args.split else "") + ("_quick" if q else "")
    args.out = args.out or str(RESULTS_DIR / f"{name}.json")
    if args.devices < args.events or args.clients < args.events:
        parser.error("--devices and --clients must be at least --events")
    install_sigterm()
    return exit_on_bench_error(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
