"""Chaos: a steady load while processors, Redis and PostgreSQL die at random moments.

For ~60 s a publisher XADDs valid records (each with its own row key) with some poison
mixed in, while a seeded RNG kills (``kill -9``) or stops (SIGTERM) processor instances,
``kill -9``s the throwaway Redis (AOF, fsync always) and restarts the throwaway
PostgreSQL (fast or immediate). A supervisor loop restarts whatever is down, like
systemd would. Then everything is left to drain, and:

    rows in positions == distinct valid records published (each exactly once)
    DLQ length        == poison entries in the stream (each dead-lettered exactly once)

The seed is printed (``CHAOS_SEED=<n>`` replays the same schedule of faults; timing on a
real machine still varies). ``CHAOS_SECONDS`` changes the load's length.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import attrs
import pytest
import redis

from processor import exit_codes
from tests.fault import GROUP, Key, group_info, pending_count, row_counts, row_keys
from tests.helpers import BASE_TIME
from tests.process import Processor, ProcessorFleet, fleet, processor_env
from tests.servers import (
    PostgresServer,
    RedisServer,
    postgres_server,
    redis_server,
    wait_until,
)

pytestmark = pytest.mark.slow

INSTANCES = 3
RATE = 1_000  # records/s
POISON_EVERY = 97  # about 1% poison
POISON_FIELD = b"chaos_poison"


@attrs.define
class Publisher:
    """Publishes at a steady rate; rides out Redis outages by retrying each XADD.

    A retried pipeline whose first attempt did (partly) land makes second entries:
    harmless for valid records (same row key), so valid records are counted by key;
    poison entries are counted at the end from the stream itself, by their marker field.
    """

    url: str
    stream: str
    prefix: str
    seconds: float
    valid_keys: set[Key] = attrs.field(factory=set)
    attempted_poison: int = 0
    retries: int = 0
    stop: threading.Event = attrs.field(factory=threading.Event)
    error: BaseException | None = None

    def record(self, n: int) -> tuple[dict[bytes, bytes], Key | None]:
        if n % POISON_EVERY == POISON_EVERY - 1:
            return {b"payload": b"{not json", POISON_FIELD: str(n).encode()}, None
        device_id, second = f"{self.prefix}-{n % 50:03d}", n // 50
        ts = BASE_TIME + timedelta(seconds=second)
        stamp = ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        payload = (
            f'{{"device_id":"{device_id}","timestamp":"{stamp}","latitude":41.3,'
            f'"longitude":19.8,"altitude":110.0,"angle":270.0,"satellites":12,"speed":87.0,'
            f'"priority":0,"event_io_id":0,"attributes":{{"239":1}}}}'
        )
        return {b"payload": payload.encode()}, (device_id, ts)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _run(self) -> None:
        client = redis.Redis.from_url(
            self.url, socket_connect_timeout=1, socket_timeout=2, retry=None
        )
        tick_s, per_tick = 0.01, max(1, RATE // 100)
        start, n = time.monotonic(), 0
        while time.monotonic() - start < self.seconds and not self.stop.is_set():
            batch = [self.record(n + i) for i in range(per_tick)]
            while True:  # one pipeline per tick: one AOF fsync per tick, not per record
                try:
                    pipe = client.pipeline(transaction=False)
                    for fields, _ in batch:
                        pipe.xadd(self.stream, fields)  # type: ignore[arg-type]
                    pipe.execute()
                    break
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    self.retries += 1
                    client.connection_pool.disconnect()
                    time.sleep(0.05)  # Redis is down: pace the retries
            for _, key in batch:
                if key is None:
                    self.attempted_poison += 1
                else:
                    self.valid_keys.add(key)
            n += per_tick
            ahead = start + (n / per_tick) * tick_s - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        client.close()


@attrs.define
class Chaos:
    """The fault schedule, and a supervisor that restarts whatever is down."""

    rng: random.Random
    redis: RedisServer
    pg: PostgresServer
    procs: ProcessorFleet
    slots: list[Processor] = attrs.field(factory=list)
    generation: int = 0
    log: list[str] = attrs.field(factory=list)
    stopping: set[str] = attrs.field(factory=set)  # SIGTERMed by us: their exit is expected
    exits: list[tuple[str, int | None]] = attrs.field(factory=list)  # exits nobody asked for
    later: list[tuple[float, Callable[[], None]]] = attrs.field(factory=list)
    faults: dict[str, int] = attrs.field(factory=dict)
    t0: float = attrs.field(factory=time.monotonic)

    def note(self, what: str) -> None:
        self.log.append(f"{time.monotonic() - self.t0:6.1f}s {what}")

    def launch(self, slot: int) -> Processor:
        self.generation += 1
        name = f"chaos-{slot}-{self.generation}"
        self.note(f"start {name}")
        proc = self.procs.start(name)
        if slot < len(self.slots):
            self.slots[slot] = proc
        else:
            self.slots.append(proc)
        return proc

    def supervise(self) -> None:
        for slot, proc in enumerate(self.slots):
            if proc.alive:
                continue
            code = proc.returncode
            if proc.name in self.stopping:
                self.note(f"{proc.name} stopped with {code}")
                assert code in (exit_codes.OK, exit_codes.SHUTDOWN_BUDGET_EXCEEDED), (
                    f"{proc.name} exited {code} after SIGTERM\n{proc.tail()}"
                )
            elif code != -signal.SIGKILL:
                self.note(f"{proc.name} EXITED ON ITS OWN with {code}")
                self.exits.append((proc.name, code))
            self.launch(slot)
        now = time.monotonic()
        for item in [x for x in self.later if x[0] <= now]:
            self.later.remove(item)
            item[1]()

    def restore(self) -> None:
        """Bring every server back now and refill every slot."""
        for _, action in sorted(self.later, key=lambda x: x[0]):
            action()
        self.later.clear()
        self.supervise()

    def _count(self, kind: str) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1

    def _start_redis(self) -> None:
        self.note("start redis")
        self.redis.start()

    def _start_pg(self) -> None:
        self.note("start postgres")
        self.pg.start()

    def strike(self) -> None:
        kind = self.rng.choice(["kill", "kill", "term", "redis", "postgres"])
        if kind in ("kill", "term"):
            proc = self.slots[self.rng.randrange(len(self.slots))]
            if not proc.alive:
                return
            if kind == "term" and not proc.events("ready"):
                kind = "kill"  # before its signal handler exists, SIGTERM just kills
            if kind == "kill":
                self.note(f"kill -9 {proc.name}")
                proc.kill()
            else:
                self.note(f"SIGTERM {proc.name}")
                self.stopping.add(proc.name)
                proc.terminate()
        elif kind == "redis" and self.redis.running:
            down = self.rng.uniform(0.2, 3.0)
            self.note(f"kill -9 redis, down {down:.1f} s")
            self.redis.kill()
            self.later.append((time.monotonic() + down, self._start_redis))
        elif kind == "postgres" and self.pg.running:
            down, mode = self.rng.uniform(0.2, 3.0), self.rng.choice(["fast", "immediate"])
            self.note(f"stop postgres ({mode}), down {down:.1f} s")
            self.pg.stop(mode)
            self.later.append((time.monotonic() + down, self._start_pg))
        else:
            return
        self._count(kind)


def test_chaos_nothing_lost_nothing_doubled(tmp_path: Path) -> None:
    seed = int(os.environ.get("CHAOS_SEED", random.SystemRandom().randrange(2**32)))
    seconds = float(os.environ.get("CHAOS_SECONDS", "60"))
    print(f"\nchaos seed: {seed} (CHAOS_SEED={seed} to replay), load {seconds:.0f} s")
    stream = f"chaos:{uuid.uuid4().hex[:8]}:telemetry"

    with redis_server() as rs, postgres_server() as pg:
        database_url = pg.create_database()
        env = processor_env(
            rs.url,
            database_url,
            stream,
            tmp_path,
            CLAIM_THRESHOLD_MS=2000,
            CLAIM_INTERVAL_MS=500,
            SHUTDOWN_BUDGET_S=5,
        )
        with fleet(env) as procs:
            chaos = Chaos(random.Random(seed), rs, pg, procs)
            try:
                for slot in range(INSTANCES):
                    chaos.launch(slot)
                for proc in chaos.slots:
                    proc.wait_ready(60)

                publisher = Publisher(rs.url, stream, f"C{uuid.uuid4().hex[:5]}", seconds)
                thread = threading.Thread(target=publisher.run, daemon=True)
                thread.start()
                next_fault = time.monotonic() + chaos.rng.uniform(1, 4)
                while thread.is_alive():
                    chaos.supervise()
                    if time.monotonic() >= next_fault:
                        chaos.strike()
                        next_fault = time.monotonic() + chaos.rng.uniform(1.5, 5)
                    thread.join(0.05)
                assert publisher.error is None, repr(publisher.error)
                chaos.note("load over: everything back up, draining")
                chaos.restore()

                client = rs.client()
                last_id = client.xinfo_stream(stream)["last-generated-id"]
                expected = len(publisher.valid_keys)

                def drained() -> bool:
                    chaos.supervise()
                    info = group_info(client, stream, GROUP)
                    return (
                        info["last-delivered-id"] == last_id
                        and pending_count(client, stream) == 0
                        and row_counts(database_url, publisher.prefix)[0] >= expected
                    )

                wait_until(drained, 120, "the load to drain", 0.2)
                chaos.note("drained")
                poison_ids = {
                    entry_id.decode()
                    for entry_id, fields in client.xrange(stream)
                    if POISON_FIELD in fields
                }
                dlq = client.xrange(f"{stream}:dlq")
                dlq_sources = [fields[b"source_id"].decode() for _, fields in dlq]
                dlq_kinds = {fields[b"error_kind"].decode() for _, fields in dlq}
                total, distinct = row_counts(database_url, publisher.prefix)
                stored = row_keys(database_url, publisher.prefix)
                stream_length = client.xlen(stream)
                client.close()
                for proc in chaos.slots:
                    assert proc.stop() == exit_codes.OK, proc.tail()
            except BaseException:
                print("\n".join(chaos.log))
                print(procs.dump())
                raise

    print("\n".join(chaos.log))
    print(
        f"chaos counts: seed={seed} load_s={seconds:.0f} faults={chaos.faults}"
        f" processor_starts={chaos.generation} unexpected_exits={chaos.exits}\n"
        f"  stream_entries={stream_length} valid_distinct_published={expected}"
        f" rows={total} distinct_rows={distinct}\n"
        f"  poison_attempted={publisher.attempted_poison} poison_in_stream={len(poison_ids)}"
        f" dlq={len(dlq)} publisher_retries={publisher.retries}"
    )
    assert total == distinct == expected, (total, distinct, expected)
    assert stored == publisher.valid_keys
    assert len(dlq) == len(poison_ids), (len(dlq), len(poison_ids))
    assert set(dlq_sources) == poison_ids
    assert dlq_kinds == {"malformed_payload"}, dlq_kinds
    assert not chaos.exits, f"processors exited on their own: {chaos.exits}"
