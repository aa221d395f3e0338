"""The race domain as a plug-in: IO mapping on the write path, timing beside it.

    domain plug-in (in the app's services nursery)
    ├── refresher   reloads the definition every DOMAIN_REFRESH_S or on request
    └── worker      <- committed positions (bounded channel) -> timing -> PostgreSQL

Resource handling: the plug-in owns two connections (``DomainStore``), one per task, so
a slow definition load never delays result writes; both are closed when ``run`` ends.
``run`` reports started only once the first definition is in (or the Directus tables are
known to be absent: then IO mapping runs on defaults and timing has nothing to do).

Error handling: PostgreSQL outages are waited out with backoff (timing falls behind, the
pipeline does not: the observer only blocks when the channel is full). A write
PostgreSQL refuses is logged and counted, and the devices involved are recomputed on
their next record. Bad Directus rows are skipped and counted. Anything else crashes the
tree, as everywhere.

What is lost at shutdown or a crash (batches still in the channel) is not lost for
timing: each device's first record after a start recomputes it from ``positions``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import attrs
import structlog
import trio
from prometheus_client import Counter

from processor.core.backoff import Backoff
from processor.core.model import Entry, Outcome, Position
from processor.core.pg_io import PostgresUnavailable, RowsRejected
from processor.domain.definition import EMPTY, RaceDefinition, build_definition
from processor.domain.live import LiveEngine
from processor.domain.results import TimingRecord, Write
from processor.domain.store import DomainStore, TablesMissing
from processor.plugins import Context

Log = structlog.typing.FilteringBoundLogger
T = TypeVar("T")

# Committed batches buffered for the worker. Small: when timing falls this far behind,
# the writer waits (backpressure), rather than memory growing without bound.
CHANNEL_BATCHES = 16
# Batches the worker merges into one round of recomputes and one transaction.
COALESCE_BATCHES = 8


@attrs.frozen
class DomainMetrics:
    rejected_rows: Counter
    recomputes: Counter
    loads: Counter
    write_failures: Counter

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
                "Device timing rebuilt from stored positions, by reason (cold, late).",
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
        definition = self.definitions.current
        mapping = definition.io.for_model(definition.models.get(position.device_id))
        return mapping.apply(position.attributes)


@attrs.frozen
class TimingObserver:
    """Hands newly inserted fixes that matter for timing to the worker.

    Duplicates are skipped: their first delivery was processed already.
    """

    definitions: Definitions
    send: trio.MemorySendChannel[list[Position]]

    async def committed(self, entries: Sequence[Entry], outcomes: Sequence[Outcome]) -> None:
        entries_by_device = self.definitions.current.entries_by_device
        fresh = [
            e.position
            for e, o in zip(entries, outcomes, strict=True)
            if o is Outcome.INSERTED
            and e.position.fix_valid
            and e.position.device_id in entries_by_device
        ]
        if fresh:
            await self.send.send(fresh)


@attrs.define(kw_only=True)
class DomainPlugin:
    name: str = "domain"
    refresh_s: float
    log: Log
    metrics: DomainMetrics
    loader: DomainStore
    writer: DomainStore
    definitions: Definitions = attrs.field(factory=Definitions)
    _send: trio.MemorySendChannel[list[Position]] = attrs.field(init=False)
    _receive: trio.MemoryReceiveChannel[list[Position]] = attrs.field(init=False)
    _wake: trio.Event = attrs.field(factory=trio.Event)
    # Who hears of new crossings (the live broadcast), and the crossing time last told per
    # (entry, geofence), so a recomputation that changes nothing announces nothing.
    _timing_sinks: list[Callable[[TimingRecord], None]] = attrs.field(factory=list)
    _announced: dict[tuple[int, int], datetime] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[list[Position]](CHANNEL_BATCHES)

    @property
    def enricher(self) -> IoEnricher:
        return IoEnricher(self.definitions)

    @property
    def observers(self) -> Sequence[TimingObserver]:
        return [TimingObserver(self.definitions, self._send)]

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
                nursery.start_soon(self._refresh_loop)
                nursery.start_soon(self._work)
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

    async def _refresh_loop(self) -> None:
        while True:
            with trio.move_on_after(self.refresh_s):
                await self._wake.wait()
            self._wake = trio.Event()
            await self.reload()

    async def _work(self) -> None:
        engine = LiveEngine(self.definitions.current)
        async with self._receive:
            async for first in self._receive:
                positions = list(first)
                for _ in range(COALESCE_BATCHES - 1):
                    try:
                        positions.extend(self._receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                if engine.definition is not self.definitions.current:
                    engine.reset(self.definitions.current)
                await self.process(engine, positions)

    async def process(self, engine: LiveEngine, positions: list[Position]) -> None:
        """Time one chunk of committed fixes and write the results."""
        ingested = engine.ingest(positions)
        writes: list[Write] = list(ingested.updates)
        for device_id, reason in ingested.recompute.items():
            since, until = engine.window(device_id)
            fixes = await self._retrying(self.writer.fixes, device_id, since, until)
            writes.append(engine.recomputed(device_id, fixes))
            self.metrics.recomputes.labels(reason).inc()
        try:
            await self._retrying(self.writer.apply, writes)
            self._announce(writes)
        except RowsRejected as exc:
            self.metrics.write_failures.inc()
            devices = {p.device_id for p in positions}
            self.log.error("timing write rejected", error=str(exc), devices=len(devices))
            for device_id in devices:
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
    return DomainPlugin(
        refresh_s=s.domain_refresh_s,
        log=context.log.bind(plugin="domain"),
        metrics=DomainMetrics.create(context.metrics.registry),
        loader=DomainStore(s.postgres_url, application_name="processor-domain-loader"),
        writer=DomainStore(s.postgres_url),
    )
