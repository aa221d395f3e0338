"""Samples the consumer group's lag and pending count, and the DLQ length, for /metrics.

Lag (entries not yet delivered to the group) and pending (delivered, not acked) are the
two numbers an operator watches first; they come from XINFO GROUPS, which is O(1) in
Redis 7, so sampling every few seconds costs nothing.

With several shards each is sampled and labelled on its own (``stream=<shard>``); the
group's totals are ``sum()`` over the labels on the dashboard.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import structlog
import trio

from processor.core.hot_state import DeviceStates
from processor.core.metrics import Metrics
from processor.core.redis_io import RedisStreams, RedisUnavailable


@attrs.define(kw_only=True)
class GroupStatsSampler:
    streams: RedisStreams
    # Each shard and its DLQ key (several shards may share one DLQ: sampled once).
    dlqs: Mapping[str, str]
    group: str
    interval_s: float
    metrics: Metrics
    states: DeviceStates
    log: structlog.typing.FilteringBoundLogger

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self.sample()
            await trio.sleep(self.interval_s)

    async def sample(self) -> None:
        self.metrics.device_states.set(len(self.states))
        sampled: set[str] = set()
        for stream, dlq in self.dlqs.items():
            try:
                lag, pending = await self.streams.group_stats(stream, self.group)
                dlq_length = None if dlq in sampled else await self.streams.length(dlq)
            except RedisUnavailable as exc:
                # The consumer reports Redis outages (readiness, reconnects); a sampler
                # miss only leaves the gauges at their last value.
                self.log.debug("group stats unavailable", stream=stream, error=str(exc))
                return
            if lag is not None:
                self.metrics.lag_by_stream.labels(stream=stream).set(lag)
            self.metrics.pending_by_stream.labels(stream=stream).set(pending)
            if dlq_length is not None:
                sampled.add(dlq)
                self.metrics.dlq_length_by_stream.labels(stream=stream).set(dlq_length)
