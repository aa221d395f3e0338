"""The acker: XACK exactly the entries whose rows are committed.

It runs beside the writer so the next batch's write overlaps this batch's ack, and it
coalesces whatever acks are queued into one XACK. An ack that fails because Redis is
away is retried until it lands or shutdown's budget runs out; an entry whose ack is lost
that way stays pending and is re-delivered, which the idempotent write absorbs.

Acks arrive as ``(stream, id)``: with several shards one XACK per shard is sent (an XACK
names one key, and in a cluster each shard lives in its own slot). An empty stream
means ``stream``, the pipeline's first.
"""

from __future__ import annotations

import attrs
import structlog
import trio

from processor.core.metrics import Metrics
from processor.core.redis_io import RedisStreams
from processor.core.retry import RedisRetry


@attrs.define(kw_only=True)
class Acker:
    streams: RedisStreams
    stream: str
    group: str
    metrics: Metrics
    retry: RedisRetry
    log: structlog.typing.FilteringBoundLogger

    async def run(
        self,
        acks: trio.MemoryReceiveChannel[list[tuple[str, str]]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with acks:
            task_status.started()
            async for ids in acks:
                pending = list(ids)
                while True:
                    try:
                        pending.extend(acks.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                by_stream: dict[str, list[str]] = {}
                for stream, entry_id in pending:
                    by_stream.setdefault(stream or self.stream, []).append(entry_id)
                for stream, entry_ids in by_stream.items():
                    acked = await self.retry(self.streams.ack, stream, self.group, entry_ids)
                    self.metrics.acked.inc(acked)
                    self.log.debug("acked", n=acked)
            self.log.info("acker drained")
