"""The dead-letter router: poison and rejected records go to the DLQ stream, then are acked.

Each dead letter carries the entry's original fields plus why it failed and where it came
from (``error``, ``error_kind``, ``source_stream``, ``source_id``, ``group``, ``consumer``,
``delivery_count``, ``failed_at``), so an operator can fix and replay it. The XADD to the
DLQ and the XACK on the main stream are one atomic step that runs only while the entry is
still pending: nothing is skipped silently, and nothing is dead-lettered twice.

With several shards each letter goes to its own shard's DLQ (``dlqs``), one script per
shard: in a cluster ``<shard>:dlq`` shares the shard's hash tag, hence its slot, which
a script's keys require.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import attrs
import structlog
import trio

from processor.core.messages import DeadLetter
from processor.core.metrics import Metrics
from processor.core.redis_io import RedisStreams
from processor.core.retry import RedisRetry

# Names of the fields the router adds; an original field of the same name is kept
# under "orig:<name>" so nothing ingestion sent is overwritten.
DLQ_FIELDS = (
    "error",
    "error_kind",
    "source_stream",
    "source_id",
    "group",
    "consumer",
    "delivery_count",
    "failed_at",
)


@attrs.define(kw_only=True)
class DeadLetterRouter:
    streams: RedisStreams
    stream: str
    group: str
    consumer: str
    dlq: str
    metrics: Metrics
    retry: RedisRetry
    log: structlog.typing.FilteringBoundLogger
    # DLQ of each other shard; ``stream`` (and any shard not listed) uses ``dlq``.
    dlqs: Mapping[str, str] = attrs.field(factory=dict)

    async def run(
        self,
        letters: trio.MemoryReceiveChannel[list[DeadLetter]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with letters:
            task_status.started()
            async for batch in letters:
                await self.route(batch)

    async def route(self, batch: list[DeadLetter]) -> None:
        by_stream: dict[str, list[DeadLetter]] = {}
        for letter in batch:
            by_stream.setdefault(letter.stream or self.stream, []).append(letter)
        for stream, letters in by_stream.items():
            await self._route_shard(stream, letters)

    async def _route_shard(self, stream: str, batch: Sequence[DeadLetter]) -> None:
        dlq = self.dlqs.get(stream, self.dlq)
        unknown = [d.entry_id for d in batch if d.delivery_count is None]
        counts = await self.retry(self.streams.delivery_counts, stream, self.group, unknown)
        failed_at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        records = [
            (
                d.entry_id,
                d.still_pending,
                self.fields(d, counts.get(d.entry_id, 1), failed_at, stream),
            )
            for d in batch
        ]
        lettered = set(await self.retry(self.streams.dead_letter, stream, self.group, dlq, records))
        for letter in batch:
            if letter.entry_id not in lettered:
                # Acked already: another instance claimed and lettered it, or an earlier
                # try of this call did and its reply was lost.
                self.log.info("dead letter already routed", entry_id=letter.entry_id, dlq=dlq)
                continue
            self.metrics.dead_lettered.labels(letter.error_kind).inc()
            self.log.warning(
                "dead-lettered",
                entry_id=letter.entry_id,
                error_kind=letter.error_kind,
                dlq=dlq,
            )

    def fields(
        self, letter: DeadLetter, delivery_count: int, failed_at: str, stream: str = ""
    ) -> Mapping[bytes, bytes]:
        added = {
            "error": letter.error,
            "error_kind": letter.error_kind,
            "source_stream": stream or self.stream,
            "source_id": letter.entry_id,
            "group": self.group,
            "consumer": self.consumer,
            "delivery_count": str(letter.delivery_count or delivery_count),
            "failed_at": failed_at,
        }
        out: dict[bytes, bytes] = {}
        for key, value in letter.fields.items():
            name = key.decode("utf-8", "replace")
            out[(f"orig:{name}" if name in added else name).encode()] = value
        out.update({k.encode(): v.encode() for k, v in added.items()})
        return out
