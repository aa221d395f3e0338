"""The race domain as a plug-in: IO mapping on the write path, timing beside it.

    domain plug-in (in the app's services nursery)
    ├── refresher   reloads the definition every DOMAIN_REFRESH_S or on request,
    │               then asks the worker to catch up
    ├── worker      <- committed positions, catch-ups (bounded channel) -> timing -> PostgreSQL
    └── feed tail   TIMING=consume only: committed positions from the pipeline instances
                    (``committed_feed``), instead of this instance's own writer

Resource handling: the plug-in owns two connections (``DomainStore``), one per task, so
a slow definition load never delays result writes; both are closed when ``run`` ends.
``run`` reports started only once the first definition is in (or the Directus tables are
known to be absent: then IO mapping runs on defaults and timing has nothing to do).

While the writer drains a backlog, timing waits for it (bounded; ``commits``).

Error handling: PostgreSQL outages are waited out with backoff (timing falls behind, the
pipeline does not: when the channel is full the observer notes the devices instead of
waiting, and the worker catches them up from the stored rows). A write
PostgreSQL refuses is logged and counted, and the devices involved are recomputed on
their next record (or by a catch-up: their progress stayed behind). Bad Directus rows
are skipped and counted. Anything else crashes the tree, as everywhere.

Timing progress is durable (``timing_progress``, see ``store``): every chunk is one locked
transaction that decides per device between going on incrementally and recomputing from
``positions``, so several instances sharing the stream agree with a replay. Nothing
depends on the channel's contents surviving: after every definition load the worker
catches up, recomputing devices with stored fixes newer than their progress (batches a
shutdown or crash dropped, here or in another instance), and after a definition change
every device of the new definition (stored fixes that were never timed against it).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import attrs
import structlog
import trio
from prometheus_client import Counter, Gauge

from processor.core.backoff import Backoff
from processor.core.model import Entry, Outcome, Position
from processor.core.pg_io import PostgresUnavailable, RowsRejected
from processor.domain.commits import DEFER_UNDER_BACKLOG_S, Commits, to_time
from processor.domain.committed_feed import CommittedTail, FeedSource, committed_stream
from processor.domain.definition import EMPTY, RaceDefinition, build_definition
from processor.domain.io_mapping import IoMapping
from processor.domain.live import LiveEngine, TimingPass
from processor.domain.results import TimingRecord, Write
from processor.domain.store import DomainStore, TablesMissing
from processor.plugins import Context

Log = structlog.typing.FilteringBoundLogger
T = TypeVar("T")

# Committed batches buffered for the worker. Small: when timing falls this far behind,
# later batches are not queued but their devices noted (``Commits.backlog``) and caught
# up from the database, where their fixes are: memory stays bounded and the writer never
# waits for timing.
CHANNEL_BATCHES = 16
# Batches the worker merges into one round of recomputes and one transaction.
COALESCE_BATCHES = 8
# Devices a catch-up recomputes per transaction: bounds how long it holds their locks.
CATCH_UP_DEVICES = 8


@attrs.frozen
class CatchUp:
    """A definition load happened: the worker looks for stored fixes nobody timed."""


@attrs.frozen
class Fixes:
    """Committed fixes for the worker, numbered in commit order (``Commits``)."""

    seq: int
    positions: list[Position]


Work = Fixes | CatchUp


@attrs.frozen
class DomainMetrics:
    rejected_rows: Counter
    recomputes: Counter
    loads: Counter
    write_failures: Counter
    backlog_devices: Gauge
    timing_deferred: Gauge
    feed_skipped: Counter

    @classmethod
    def create(cls, registry: Any) -> DomainMetrics:
        return cls(
            rejected_rows=Counter(
                "processor_domain_rejected_rows_total",
                "Directus rows the race definition skipped as invalid, by table.",
                ["table"],
                registry=registry,
            ),
            recomputes=Counter(
                "processor_domain_recomputes_total",
                "Device timing rebuilt from stored positions, by reason (cold, late,"
                " shared, interleaved, catch-up, definition, backlog; rebuilt: restored from the"
                " stored timing rows instead of a replay, when they reflect every stored"
                " fix up to the device's progress).",
                ["reason"],
                registry=registry,
            ),
            loads=Counter(
                "processor_domain_definition_loads_total",
                "Race definition loads, by outcome (changed, unchanged, missing, failed).",
                ["outcome"],
                registry=registry,
            ),
            write_failures=Counter(
                "processor_domain_write_failures_total",
                "Timing writes PostgreSQL rejected (the devices are recomputed).",
                registry=registry,
            ),
            backlog_devices=Gauge(
                "processor_domain_backlog_devices",
                "Devices with committed fixes waiting to be timed from the stored rows.",
                registry=registry,
            ),
            timing_deferred=Gauge(
                "processor_domain_timing_deferred",
                "1 while timing waits for the writer to drain a backlog (at most 2 s at a time).",
                registry=registry,
            ),
            feed_skipped=Counter(
                "processor_domain_feed_skipped_total",
                "TIMING=consume: committed-feed entries or payloads that did not decode"
                " (skipped; the catch-up times their stored rows).",
                registry=registry,
            ),
        )


@attrs.define
class Definitions:
    """The current snapshot; replaced whole by the refresher, read by everyone else."""

    current: RaceDefinition = EMPTY
    tables_missing: bool | None = None  # None until the first load says


@attrs.frozen
class IoEnricher:
    """The writer's Enricher: the device's model selects its IO mapping."""

    definitions: Definitions

    def derive(self, position: Position) -> Mapping[str, Any] | None:
        return self.definitions.current.mapping_of(position.device_id).apply(position.attributes)

    def derive_json(self, positions: Sequence[Position]) -> list[bytes | None]:
        """One compiled call per mapping in the batch: mostly one (every model on the
        defaults, or a fleet of one model)."""
        definition = self.definitions.current
        io = definition.io
        if not io.by_model:
            return io.default.apply_json([p.attributes for p in positions])
        mapping_of = definition.mapping_of
        mappings = [mapping_of(p.device_id) for p in positions]
        # By identity: a mapping's own hash would hash its rules, once per record.
        by_mapping: dict[int, tuple[IoMapping, list[int]]] = {}
        for i, mapping in enumerate(mappings):
            by_mapping.setdefault(id(mapping), (mapping, []))[1].append(i)
        if len(by_mapping) == 1:
            return mappings[0].apply_json([p.attributes for p in positions])
        out: list[bytes | None] = [None] * len(positions)
        for mapping, indices in by_mapping.values():
            derived = mapping.apply_json([positions[i].attributes for i in indices])
            for i, text in zip(indices, derived, strict=True):
                out[i] = text
        return out


@attrs.frozen
class TimingObserver:
    """Hands newly inserted fixes that matter for timing to the worker.

    Duplicates are skipped: their first delivery was processed already.

    A full batch (``batch_max`` records) means the writer is draining a backlog: then
    the worker, which shares the writer's thread, is not handed the chunk and its
    other work (sweeps) waits, so the drain runs at the pipeline's own rate; the
    devices are timed from the stored rows when the drain ends (the next batch that is
    not full) or after ``DEFER_UNDER_BACKLOG_S``, when the worker gets a turn. A steady
    feed writes partial batches and is timed live; one so fast that batches fill within
    ``BATCH_LINGER_MS`` counts as a backlog too (ingestion is then near its limit, and
    timing comes in turns, a couple of seconds late).
    """

    definitions: Definitions
    send: trio.MemorySendChannel[Work]
    commits: Commits
    batch_max: int = 0  # 0: never defer

    async def committed(self, entries: Sequence[Entry], outcomes: Sequence[Outcome]) -> None:
        entries_by_device = self.definitions.current.entries_by_device
        fresh = [e.position for e in to_time(entries, outcomes, entries_by_device)]
        if fresh:
            self.commits.count += 1
            if not self.commits.defer(len(entries), self.batch_max):
                try:
                    self.send.send_nowait(Fixes(self.commits.count, fresh))
                except trio.WouldBlock:
                    pass  # timing is behind the writer: caught up below, never waited for
                else:
                    return
            # Not handed over (deferred, or no room): the rows are stored, so the worker
            # catches these devices up from them. A later chunk of the same device sees
            # the gap anyway (``interleaved``); the backlog covers devices with none.
            self.commits.backlog.update(p.device_id for p in fresh)


@attrs.define(kw_only=True)
class DomainPlugin:
    name: str = "domain"
    refresh_s: float
    # False where this instance times nothing (``Settings.times_here``): a broadcast-only
    # instance keeps the definition for the IO mapping of its broadcast, a TIMING=publish
    # pipeline for the IO mapping of its rows and for choosing the fixes it publishes.
    timing: bool = True
    # TIMING=consume: the worker's fixes come from this stream (``committed_feed``).
    feed: FeedSource | None = None
    # The writer's BATCH_MAX: a batch this full means a backlog (``TimingObserver``).
    batch_max: int = 0
    log: Log
    metrics: DomainMetrics
    loader: DomainStore
    writer: DomainStore
    definitions: Definitions = attrs.field(factory=Definitions)
    _send: trio.MemorySendChannel[Work] = attrs.field(init=False)
    _commits: Commits = attrs.field(factory=Commits, init=False)
    _receive: trio.MemoryReceiveChannel[Work] = attrs.field(init=False)
    _wake: trio.Event = attrs.field(factory=trio.Event)
    # Who hears of new crossings (the live broadcast), and the crossing time last told per
    # (entry, geofence), so a recomputation that changes nothing announces nothing.
    _timing_sinks: list[Callable[[TimingRecord], None]] = attrs.field(factory=list)
    _announced: dict[tuple[int, int], datetime] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[Work](CHANNEL_BATCHES)
        commits = self._commits  # read at scrape time: nothing to keep in step
        self.metrics.backlog_devices.set_function(lambda: len(commits.backlog))
        self.metrics.timing_deferred.set_function(lambda: float(commits.deferring))

    @property
    def enricher(self) -> IoEnricher:
        return IoEnricher(self.definitions)

    @property
    def observers(self) -> Sequence[TimingObserver]:
        if not self.timing or self.feed is not None:
            return []
        return [TimingObserver(self.definitions, self._send, self._commits, self.batch_max)]

    def add_timing_sink(self, sink: Callable[[TimingRecord], None]) -> None:
        self._timing_sinks.append(sink)

    def _announce(self, writes: Sequence[Write]) -> None:
        for write in writes:
            for record in write.records:
                if self._announced.get(record.key) == record.crossed_at:
                    continue
                self._announced[record.key] = record.crossed_at
                for sink in self._timing_sinks:
                    sink(record)

    def request_reload(self) -> None:
        """Reload the definition now instead of at the next interval."""
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            backoff = Backoff(cap_s=5.0)
            while not await self.reload():
                await backoff.wait()
            async with trio.open_nursery() as nursery:
                if self.feed is not None:
                    # Before the worker's first sweep: what is committed after the tail's
                    # start comes through it, what was committed before, the sweep reads.
                    feed = self.feed
                    tail = CommittedTail(
                        feed.streams,
                        feed.key,
                        feed.block_ms,
                        self._feed,
                        self.log,
                        self.metrics.feed_skipped,
                    )
                    await nursery.start(tail.run)
                if self.timing:
                    nursery.start_soon(self._work)
                    await self._send.send(CatchUp())  # the worker runs: this cannot block
                nursery.start_soon(self._refresh_loop)
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self.loader.aclose()
                await self.writer.aclose()

    async def reload(self) -> bool:
        """Load the definition; False if PostgreSQL was unavailable (try again later)."""
        try:
            raw = await self.loader.load()
        except TablesMissing as exc:
            self.metrics.loads.labels("missing").inc()
            if self.definitions.tables_missing is not True:
                self.log.warning("race tables absent: IO mapping defaults only", error=str(exc))
            self.definitions.tables_missing = True
            self.definitions.current = EMPTY
            return True
        except PostgresUnavailable as exc:
            self.metrics.loads.labels("failed").inc()
            self.log.warning("race definition load failed", error=str(exc))
            return False
        if self.definitions.tables_missing is not False:
            await self._ensure_natural_keys()
        self.definitions.tables_missing = False
        if raw.fingerprint() == self.definitions.current.fingerprint:
            self.metrics.loads.labels("unchanged").inc()
            return True
        built = build_definition(raw)
        for row in built.rejected:
            self.metrics.rejected_rows.labels(row.table).inc()
            self.log.warning("race row skipped", table=row.table, id=row.id, reason=row.reason)
        self.definitions.current = built.definition
        self.metrics.loads.labels("changed").inc()
        self.log.info(
            "race definition loaded",
            events=sorted(built.definition.events),
            devices=len(built.definition.entries_by_device),
            rejected=len(built.rejected),
        )
        return True

    async def _ensure_natural_keys(self) -> None:
        """Once per appearance of the race tables: the keys the result upserts need."""
        try:
            await self.loader.ensure_natural_keys()
        except (RowsRejected, PostgresUnavailable, TablesMissing) as exc:
            # Duplicates already in a table, or no right to create an index: results
            # cannot be written idempotently until an operator fixes it; say so loudly.
            self.metrics.write_failures.inc()
            self.log.error("race result keys missing", error=str(exc))

    async def _feed(self, positions: list[Position]) -> None:
        """The committed feed's fixes, numbered like the observer numbers its chunks."""
        self._commits.count += 1
        await self._send.send(Fixes(self._commits.count, positions))

    async def _refresh_loop(self) -> None:
        while True:
            with trio.move_on_after(self.refresh_s):
                await self._wake.wait()
            self._wake = trio.Event()
            if await self.reload() and self.timing:
                await self._send.send(CatchUp())

    async def _work(self) -> None:
        engine = LiveEngine(EMPTY)  # the first item finds a new definition: a full sweep
        async with self._receive:
            while True:
                # A deferred backlog is timed at the latest this long after the last
                # chunk, even if no chunk follows (the feed stopped after a drain).
                wait_s = DEFER_UNDER_BACKLOG_S if self._commits.backlog else math.inf
                items: list[Work] = []
                with trio.move_on_after(wait_s):
                    try:
                        items.append(await self._receive.receive())
                    except trio.EndOfChannel:
                        return
                for _ in range(COALESCE_BATCHES - 1 if items else 0):
                    try:
                        items.append(self._receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                if engine.definition is not self.definitions.current:
                    engine.reset(self.definitions.current)
                    await self._recompute(engine, sorted(engine.definition.entries_by_device),
                                          "definition")  # fmt: skip
                positions = [
                    p
                    for item in items
                    if isinstance(item, Fixes)
                    for p in engine.uncovered(item.seq, item.positions)
                ]
                if positions:
                    await self.process(engine, positions)
                if any(isinstance(item, CatchUp) for item in items):
                    await self.catch_up(engine)
                if self._commits.backlog:
                    behind = sorted(self._commits.backlog)
                    self._commits.backlog.clear()
                    await self._recompute(engine, behind, "backlog")
                self._commits.worker_turn = False

    async def catch_up(self, engine: LiveEngine) -> None:
        """Recompute the devices with stored fixes newer than their timing progress."""
        windows = [(d, engine.window(d)) for d in sorted(engine.definition.entries_by_device)]
        behind = await self._retrying(self.writer.behind, windows)
        await self._recompute(engine, behind, "catch-up")

    async def _recompute(self, engine: LiveEngine, devices: Sequence[str], reason: str) -> None:
        for i in range(0, len(devices), CATCH_UP_DEVICES):
            chunk = devices[i : i + CATCH_UP_DEVICES]
            await self.process(engine, [], dict.fromkeys(chunk, reason))

    async def process(
        self, engine: LiveEngine, positions: list[Position], force: Mapping[str, str] | None = None
    ) -> None:
        """Time one chunk of committed fixes (and ``force``d devices) and write the results.

        One locked transaction per attempt (``DomainStore.time``). A failed attempt may
        have advanced tracks halfway, so its devices are forgotten: the retry (or, for a
        rejected write, their next chunk) recomputes them.
        """
        await self._commits.wait_for_turn()
        backoff = Backoff(cap_s=5.0)
        while True:
            committed = self._commits.count  # every chunk up to it is in the database
            work: TimingPass = engine.plan(positions, force)
            try:
                await self.writer.time(work)
                break
            except PostgresUnavailable as exc:
                self._forget(engine, work)
                self.log.warning("domain postgres unavailable", error=str(exc))
                await backoff.wait()
            except RowsRejected as exc:
                self._forget(engine, work)
                self.metrics.write_failures.inc()
                self.log.error("timing write rejected", error=str(exc), devices=len(work.devices))
                return
        for device_id in work.replayed:
            engine.covered[device_id] = committed
        for reason in work.reasons.values():
            self.metrics.recomputes.labels(reason).inc()
        self._announce(work.writes)

    @staticmethod
    def _forget(engine: LiveEngine, work: TimingPass) -> None:
        for device_id in work.devices:
            engine.forget(device_id)

    async def _retrying(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        backoff = Backoff(cap_s=5.0)
        while True:
            try:
                return await fn(*args)
            except PostgresUnavailable as exc:
                self.log.warning("domain postgres unavailable", error=str(exc))
                await backoff.wait()


def domain_plugin(context: Context) -> DomainPlugin:
    """The plug-in factory for ``processor.plugins.default_factories``."""
    s = context.settings
    consume = s.timing == "consume"  # config refuses it without the domain
    return DomainPlugin(
        refresh_s=s.domain_refresh_s,
        timing=s.times_here,
        feed=FeedSource(context.streams, committed_stream(s.telemetry_stream), s.block_ms)
        if consume
        else None,
        batch_max=s.batch_max,
        log=context.log.bind(plugin="domain"),
        metrics=DomainMetrics.create(context.metrics.registry),
        loader=DomainStore(s.postgres_url, application_name="processor-domain-loader"),
        writer=DomainStore(s.postgres_url),
    )
