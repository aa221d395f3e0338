"""The writer: batches decoded entries into PostgreSQL and hands committed ids to the acker.

Per record the outcome is ``inserted`` (a new row), ``duplicate`` (the row was already
there: a re-delivery, or a twin inside the batch) or ``failed`` (PostgreSQL rejected the
data itself; found by bisecting the batch, then dead-lettered). Only committed entries
go to the acker, and only after the statement returned: the ack rule.

A transient failure (connection lost, server restarting, stalled) is retried with capped
backoff, forever: while the writer waits, its input channel fills and the consumer stops
reading, which is the backpressure that keeps memory bounded during an outage.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from collections.abc import Set as AbstractSet
from datetime import UTC, datetime
from typing import Any, TypeVar

import attrs
import structlog
import trio

from processor.core.backoff import Backoff
from processor.core.batcher import SharedBatches
from processor.core.commit_order import CommitOrder
from processor.core.health import Readiness
from processor.core.hot_state import DeviceStates
from processor.core.messages import DeadLetter
from processor.core.metrics import Metrics
from processor.core.model import Entry, Outcome
from processor.core.observer import CommitObserver, Enricher
from processor.core.pg_io import Contended, PositionStore, PostgresUnavailable, RowsRejected

T = TypeVar("T")


@attrs.define(kw_only=True)
class Writer:
    store: PositionStore
    states: DeviceStates
    metrics: Metrics
    health: Readiness
    log: structlog.typing.FilteringBoundLogger
    observers: Sequence[CommitObserver] = ()
    enricher: Enricher | None = None
    # Shared by the writers of one pipeline (``WRITERS``): see ``commit_order``.
    order: CommitOrder = attrs.field(factory=CommitOrder)
    owns_store: bool = False  # close the store's connection when the writer stops
    _backoff: Backoff = attrs.field(factory=Backoff)

    async def run(
        self,
        batches: SharedBatches[Entry],
        acks: trio.MemorySendChannel[list[tuple[str, str]]],
        dead: trio.MemorySendChannel[list[DeadLetter]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Write batches until the input ends. ``batches`` (and its ``CommitOrder``) is
        shared by all of a pipeline's writers."""
        try:
            async with acks, dead:
                if self.owns_store:  # connected before it counts as started, as the first is
                    await self._retrying(self.store.connect)
                task_status.started()
                while (taken := await batches.next()) is not None:
                    await self.write(*taken, acks, dead)
                self.log.info("writer drained")
        finally:
            if self.owns_store:
                await self.store.aclose()

    async def write(
        self,
        batch: list[Entry],
        ticket: int | None,
        acks: trio.MemorySendChannel[list[tuple[str, str]]],
        dead: trio.MemorySendChannel[list[DeadLetter]],
    ) -> None:
        """Write one batch; then, in ticket order (``commit_order``), what follows from
        its commit: hot state, observers, acks, dead letters. No ticket: a turn of its own."""
        if ticket is None:
            ticket = self.order.take()
        await self._rehydrate([e.position.device_id for e in batch])
        started = trio.current_time()
        inserted, rejected = await self._insert_isolating(batch, self._derive(batch))
        written_s = trio.current_time() - started
        await self.order.turn(ticket)
        await self._committed(batch, inserted, rejected, written_s, acks, dead)
        self.order.done(ticket)

    async def _committed(
        self,
        batch: list[Entry],
        inserted: AbstractSet[tuple[str, datetime]],
        rejected: list[tuple[Entry, str]],
        written_s: float,
        acks: trio.MemorySendChannel[list[tuple[str, str]]],
        dead: trio.MemorySendChannel[list[DeadLetter]],
    ) -> None:
        self.metrics.batch_latency.observe(written_s)
        self.metrics.batch_size.observe(len(batch))

        outcomes = _outcomes(batch, inserted, {id(e) for e, _ in rejected})
        if rejected:
            committed = [e for e, o in zip(batch, outcomes, strict=True) if o.committed]
        else:
            committed = batch
        n_inserted = outcomes.count(Outcome.INSERTED)
        n_duplicate = len(committed) - n_inserted
        self.metrics.rows.labels("inserted").inc(n_inserted)
        self.metrics.rows.labels("duplicate").inc(n_duplicate)
        self.metrics.rows.labels("failed").inc(len(rejected))
        self.log.debug("written", inserted=n_inserted, duplicates=n_duplicate, failed=len(rejected))

        now = datetime.now(UTC)
        if n_inserted == len(batch):
            self.states.observe_many([e.position for e in batch], now)
        else:
            kept = [(e, o) for e, o in zip(batch, outcomes, strict=True) if o is not Outcome.FAILED]
            self.states.observe_many(
                [e.position for e, _ in kept], now, [o is Outcome.INSERTED for _, o in kept]
            )
        now_s = now.timestamp()
        self.metrics.e2e_latency.observe_since_xadd(committed, now_s)
        self.metrics.device_states.set(len(self.states))
        for observer in self.observers:
            await observer.committed(batch, outcomes)
        if committed:
            await acks.send([(e.stream, e.entry_id) for e in committed])
        if rejected:
            for entry, reason in rejected:
                self.log.error(
                    "row rejected by postgres",
                    entry_id=entry.entry_id,
                    device_id=entry.position.device_id,
                    error=reason,
                )
            await dead.send(
                [
                    DeadLetter(e.entry_id, e.fields, "write_rejected", reason, stream=e.stream)
                    for e, reason in rejected
                ]
            )

    async def _rehydrate(self, device_ids: list[str]) -> None:
        """Seed hot state of devices seen for the first time from their newest stored row."""
        cold = self.states.missing(device_ids)
        if not cold:
            return
        newest = {p.device_id: p for p in await self._retrying(self.store.newest, cold)}
        for device_id in cold:
            self.states.seed(device_id, newest.get(device_id))
        self.metrics.rehydrations.inc(len(newest))

    def _derive(self, batch: list[Entry]) -> list[bytes | None] | None:
        """The ``derived`` column of each record, as JSON (None: nothing derived)."""
        if self.enricher is None:
            return None
        return self.enricher.derive_json([e.position for e in batch])

    async def _insert_isolating(
        self, batch: list[Entry], derived: list[bytes | None] | None
    ) -> tuple[AbstractSet[tuple[str, datetime]], list[tuple[Entry, str]]]:
        """Insert; if PostgreSQL rejects the data, bisect to find the records at fault."""
        try:
            positions = [e.position for e in batch]
            return await self._retrying(self.store.insert, positions, derived), []
        except RowsRejected as exc:
            if len(batch) == 1:
                return set(), [(batch[0], str(exc))]
        middle = len(batch) // 2
        halves = (derived[:middle], derived[middle:]) if derived else (None, None)
        left_ok, left_bad = await self._insert_isolating(batch[:middle], halves[0])
        right_ok, right_bad = await self._insert_isolating(batch[middle:], halves[1])
        return left_ok | right_ok, left_bad + right_bad

    async def _retrying(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        contended = Backoff(base_s=0.01, cap_s=1.0)
        while True:
            try:
                result = await fn(*args)
            except Contended as exc:
                # Another writer's transaction held the same keys (a deadlock PostgreSQL
                # broke by aborting this one): the server is fine, so readiness stays;
                # the jitter keeps two writers from colliding again in step.
                self.log.info("write contended, retrying", error=str(exc))
                self.metrics.write_retries.inc()
                await contended.wait()
                continue
            except PostgresUnavailable as exc:
                if not self._backoff.attempt:
                    self.log.warning("postgres unavailable", error=str(exc))
                self.health.fail("postgres", str(exc))
                self.metrics.write_retries.inc()
                await self._backoff.wait()
                continue
            if self._backoff.attempt:
                self._backoff.reset()
                self.metrics.reconnects.labels("postgres").inc()
                self.log.info("postgres reconnected")
            self.health.ok("postgres")
            return result


def _outcomes(
    batch: list[Entry], inserted: AbstractSet[tuple[str, datetime]], rejected: set[int]
) -> list[Outcome]:
    """Per entry: the first entry of an inserted key is the insert, later twins duplicates."""
    if not rejected and len(inserted) == len(batch):
        # As many distinct keys inserted as entries: each entry is its key's only one.
        return [Outcome.INSERTED] * len(batch)
    fresh = set(inserted)
    outcomes = []
    for entry in batch:
        if id(entry) in rejected:
            outcomes.append(Outcome.FAILED)
        elif entry.position.key in fresh:
            fresh.discard(entry.position.key)
            outcomes.append(Outcome.INSERTED)
        else:
            outcomes.append(Outcome.DUPLICATE)
    return outcomes
