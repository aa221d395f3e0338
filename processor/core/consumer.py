"""The stream consumer: XREADGROUP, decode, hand over to the writer and the DLQ router.

After a restart the consumer first re-reads its *own* pending entries (``0``, paged by
id) so work it had taken before dying is finished, then reads new ones (``>``). Those
re-reads count deliveries like a claim does: an entry that keeps killing the process is
dead-lettered after ``DLQ_MAX_DELIVERIES`` instead of restarting it forever (a fixed
``REDIS_CONSUMER_NAME`` gets its own entries back after every crash). Reads
block in Redis, but the loop runs in a read scope that shutdown cancels, and the bridge
cancels the in-flight ``XREADGROUP`` with it: no new reads after the signal.

Under a steady feed reads are spaced by ``READ_PACE_MS`` (``read_pacing``), so entries
are read in tens per call instead of one per XADD; while a backlog drains, the next
``READ_AHEAD`` reads are already queued in Redis when a read returns (``read_ahead``),
and at shutdown what they took is handed on like any read's.

Backpressure: the write channel is bounded; when the writer is behind, ``send`` blocks
and the consumer simply does not read, so entries wait in Redis, not in our memory.
"""

from __future__ import annotations

from datetime import UTC, datetime

import attrs
import structlog
import trio

from processor.core.codec import decode_entries
from processor.core.health import Readiness
from processor.core.messages import DeadLetter
from processor.core.metrics import Metrics
from processor.core.model import Entry, RawEntry
from processor.core.read_pacing import ReadPacer
from processor.core.redis_io import RedisStreams, RedisUnavailable
from processor.core.retry import RedisRetry
from processor.core.shutdown import Shutdown


@attrs.frozen(kw_only=True)
class Decoder:
    """Turns raw entries into decoded ones and dead letters (shared by consumer and claimer)."""

    future_tolerance_s: float
    metrics: Metrics
    max_deliveries: int

    def split_redelivered(
        self, raw: list[RawEntry], counts: dict[str, int], stream: str = ""
    ) -> tuple[list[Entry], list[DeadLetter]]:
        """Like ``split``, for entries delivered before: those delivered ``max_deliveries``
        times (``counts``, from XPENDING) go to the DLQ undecoded."""
        exhausted = [
            DeadLetter(
                r.entry_id,
                r.fields,
                "max_deliveries",
                f"delivered {counts[r.entry_id]} times without being committed",
                counts[r.entry_id],
                stream=stream,
            )
            for r in raw
            if counts.get(r.entry_id, 1) >= self.max_deliveries
        ]
        fresh = [r for r in raw if counts.get(r.entry_id, 1) < self.max_deliveries]
        good, bad = self.split(fresh, stream)
        return good, exhausted + bad

    def split(self, raw: list[RawEntry], stream: str = "") -> tuple[list[Entry], list[DeadLetter]]:
        good, bad = decode_entries(raw, datetime.now(UTC), self.future_tolerance_s, stream)
        dead: list[DeadLetter] = []
        for item, error in bad:
            if error is None:
                reason = "entry was trimmed from the stream before processing"
                dead.append(DeadLetter(item.entry_id, {}, "trimmed", reason, stream=stream))
                continue
            self.metrics.poison.labels(error.kind).inc()
            dead.append(
                DeadLetter(item.entry_id, item.fields, error.kind, error.reason, stream=stream)
            )
        return good, dead


@attrs.define(kw_only=True)
class Consumer:
    streams: RedisStreams
    stream: str
    group: str
    name: str
    read_count: int
    block_ms: int
    decoder: Decoder
    metrics: Metrics
    health: Readiness
    shutdown: Shutdown
    log: structlog.typing.FilteringBoundLogger
    retry: RedisRetry
    pacer: ReadPacer = attrs.field(factory=lambda: ReadPacer(0.0))
    read_ahead: int = 0  # ``READ_AHEAD``: reads queued in Redis while a backlog drains

    async def run(
        self,
        entries: trio.MemorySendChannel[list[Entry]],
        dead: trio.MemorySendChannel[list[DeadLetter]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with entries, dead:
            with self.shutdown.read_scope():
                await self.retry(self.streams.ensure_group, self.stream, self.group)
                self.log.info(
                    "consumer started", stream=self.stream, group=self.group, consumer=self.name
                )
                self.health.ok("consumer")
                task_status.started()
                await self._loop(entries, dead)
            self.health.fail("consumer", "stopped: shutting down")
            self.log.info("consumer stopped reading")
            await self._finish_reads_ahead(entries, dead)

    async def _finish_reads_ahead(
        self,
        entries: trio.MemorySendChannel[list[Entry]],
        dead: trio.MemorySendChannel[list[DeadLetter]],
    ) -> None:
        """Hand on what the reads queued ahead took, so the writers drain it too."""
        if not self.read_ahead:
            return
        try:
            reads = await self.streams.collect_reads_ahead(self.stream, self.group, self.name)
        except RedisUnavailable as exc:  # their entries stay pending for the next start
            self.log.warning("reads ahead not collected", error=str(exc))
            return
        for raw in reads:
            await self._hand_on(raw, entries, dead)
        if reads:
            self.log.info("reads ahead handed on", entries=sum(len(raw) for raw in reads))

    async def _loop(
        self,
        entries: trio.MemorySendChannel[list[Entry]],
        dead: trio.MemorySendChannel[list[DeadLetter]],
    ) -> None:
        start = "0"  # own pending entries first, then new ones
        while True:
            await self.pacer.wait()
            raw = await self.retry(
                self.streams.read_group,
                self.stream,
                self.group,
                self.name,
                start,
                self.read_count,
                self.block_ms,
                self.read_ahead,
            )
            self.pacer.read(len(raw), self.read_count)
            if start != ">":
                if not raw:
                    start = ">"
                    continue
                start = raw[-1].entry_id
                self.metrics.delivery_retries.inc(len(raw))
                counts = await self.retry(
                    self.streams.delivery_counts,
                    self.stream,
                    self.group,
                    [r.entry_id for r in raw],
                )
                good, bad = self.decoder.split_redelivered(raw, counts, self.stream)
                await self._send(len(raw), good, bad, entries, dead)
            elif raw:
                await self._hand_on(raw, entries, dead)

    async def _hand_on(
        self,
        raw: list[RawEntry],
        entries: trio.MemorySendChannel[list[Entry]],
        dead: trio.MemorySendChannel[list[DeadLetter]],
    ) -> None:
        good, bad = self.decoder.split(raw, self.stream)
        await self._send(len(raw), good, bad, entries, dead)

    async def _send(
        self,
        n: int,
        good: list[Entry],
        bad: list[DeadLetter],
        entries: trio.MemorySendChannel[list[Entry]],
        dead: trio.MemorySendChannel[list[DeadLetter]],
    ) -> None:
        self.metrics.consumed.inc(n)
        self.log.debug("consumed", n=n)
        if bad:
            for letter in bad:
                self.log.error(
                    "poison record",
                    entry_id=letter.entry_id,
                    error_kind=letter.error_kind,
                    error=letter.error,
                )
            await dead.send(bad)
        if good:
            await entries.send(good)
