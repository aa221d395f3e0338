"""The claimer: takes over entries stuck in a dead (or stalled) consumer's pending list.

Every ``CLAIM_INTERVAL_MS`` (and once at start) it runs ``XAUTOCLAIM`` over the whole
group for entries idle longer than ``CLAIM_THRESHOLD_MS`` and feeds them through the same
decode -> write -> ack path as fresh entries, so a killed instance's work is finished by
the survivors with no operator action. An entry delivered ``DLQ_MAX_DELIVERIES`` times
without being acked is not tried again: it goes to the dead-letter stream.

It only claims while this instance is ready: an instance that cannot write (PostgreSQL
away) would merely pile other instances' work onto itself and burn delivery counts,
dead-lettering good records because of an outage.

Consumers left behind by dead instances are removed (``XGROUP DELCONSUMER``) once they
own nothing and have been idle past the claim threshold; a live consumer that happens to
be removed is recreated by Redis on its next read. "Owns nothing" is checked in the same
script that deletes: DELCONSUMER drops a consumer's pending entries with it, so a check
a moment earlier would lose whatever that consumer read in between.
"""

from __future__ import annotations

import attrs
import structlog
import trio

from processor.core.consumer import Decoder
from processor.core.health import Readiness
from processor.core.messages import DeadLetter
from processor.core.metrics import Metrics
from processor.core.model import Entry
from processor.core.redis_io import RedisStreams
from processor.core.retry import RedisRetry
from processor.core.shutdown import Shutdown

# Entries per XAUTOCLAIM call: big enough to move a dead instance's backlog quickly,
# small enough that one reply stays a modest allocation.
CLAIM_COUNT = 500


@attrs.define(kw_only=True)
class Claimer:
    streams: RedisStreams
    stream: str
    group: str
    consumer: str
    threshold_ms: int
    interval_s: float
    decoder: Decoder
    metrics: Metrics
    health: Readiness
    retry: RedisRetry
    shutdown: Shutdown
    log: structlog.typing.FilteringBoundLogger

    async def run(
        self,
        entries: trio.MemorySendChannel[list[Entry]],
        dead: trio.MemorySendChannel[list[DeadLetter]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with entries, dead:
            with self.shutdown.read_scope():
                task_status.started()
                while True:
                    if self.health.ready:
                        await self.sweep(entries, dead)
                        await self.remove_departed_consumers()
                    await trio.sleep(self.interval_s)

    async def sweep(
        self,
        entries: trio.MemorySendChannel[list[Entry]],
        dead: trio.MemorySendChannel[list[DeadLetter]],
    ) -> int:
        """Claim every entry idle past the threshold; returns how many were claimed."""
        claimed = 0
        start = "0-0"
        while True:
            start, raw, deleted = await self.retry(
                self.streams.autoclaim,
                self.stream,
                self.group,
                self.consumer,
                self.threshold_ms,
                start,
                CLAIM_COUNT,
            )
            letters = [
                DeadLetter(
                    i,
                    {},
                    "trimmed",
                    "entry was trimmed from the stream while pending; its content is lost upstream",
                    stream=self.stream,
                    still_pending=False,  # XAUTOCLAIM dropped it from the PEL, to us alone
                )
                for i in deleted
            ]
            if raw:
                claimed += len(raw)
                self.metrics.claimed.inc(len(raw))
                self.metrics.delivery_retries.inc(len(raw))
                counts = await self.retry(
                    self.streams.delivery_counts, self.stream, self.group, [r.entry_id for r in raw]
                )
                good, bad = self.decoder.split_redelivered(raw, counts, self.stream)
                letters += bad
                self.log.info("claimed", stream=self.stream, n=len(raw), to_dlq=len(letters))
                if good:
                    await entries.send(good)
            if letters:
                await dead.send(letters)
            if start == "0-0":
                return claimed

    async def remove_departed_consumers(self) -> list[str]:
        removed = []
        for consumer in await self.retry(self.streams.consumers, self.stream, self.group):
            if (
                consumer["name"] != self.consumer
                and consumer["pending"] == 0
                and consumer["idle_ms"] > self.threshold_ms
            ):
                if not await self.retry(
                    self.streams.delete_consumer_if_idle,
                    self.stream,
                    self.group,
                    consumer["name"],
                ):
                    continue  # it read entries since XINFO: alive after all
                removed.append(consumer["name"])
                self.log.info(
                    "removed departed consumer",
                    consumer=consumer["name"],
                    idle_ms=consumer["idle_ms"],
                )
        return removed
