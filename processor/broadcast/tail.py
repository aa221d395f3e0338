"""The broadcast's own read of the telemetry stream: every record, on every instance.

The pipeline's consumer group splits records between instances, but each instance
serves its own WebSocket clients and must show them every fix. So the broadcast reads
the stream with plain ``XREAD BLOCK``, no group: nothing is created in Redis, nothing is
left behind on shutdown. It starts at the stream's newest entry as of startup (an
explicit id, not ``$`` on every call, which would skip what arrives between two reads),
decodes each record once and hands it to the hub. Records of devices that no event
enters are skipped before decoding (``codec.peek_device_id``); while no event enters any
device the tail does not read at all, it moves its start past what arrived every
``block_ms`` (``Follower.skip``). Poison records are skipped quietly: the pipeline
dead-letters them. Reading, start ids and outages: ``follow.Follower``.

Shards: one tail reads several stream keys in one ``XREAD`` (each from its own last id),
which works on a single Redis; in a Redis Cluster the keys live in different slots, so
the plug-in runs one tail per shard instead.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime

import attrs
import structlog
import trio

from processor.core.codec import decode_bounded, latest_accepted, peek_device_id
from processor.core.errors import PoisonRecord
from processor.core.follow import Follower
from processor.core.model import Position
from processor.core.read_pacing import ReadPacer
from processor.core.redis_io import RedisStreams


@attrs.define
class StreamTail:
    streams: RedisStreams
    keys: Sequence[str]
    count: int
    block_ms: int
    future_tolerance_s: float
    # The hub's ``publish_many``: hands a burst of decoded fixes (with their entry ids)
    # to the clients and says how many frames the fullest outbox it filled now holds.
    publish: Callable[[list[tuple[Position, str | None]]], int]
    log: structlog.typing.FilteringBoundLogger
    # Fixes per hand-off to the hub.
    burst: int = 1
    # Client writers run only at a checkpoint, so the tail checkpoints once an outbox
    # holds this many frames, and at the end of each read: each writer then finds all
    # it can send in one write (a write per frame was most of the fan-out's cost, and a
    # write per few frames most of a drain's: bench/README.md, fan-out). The plug-in
    # uses half an outbox, so that a client that keeps up never fills its outbox
    # (one burst adds at most ``burst`` frames per event it is subscribed to).
    yield_at: int = 1
    pacer: ReadPacer = attrs.field(factory=lambda: ReadPacer(0.0))
    # The devices whose fixes can be broadcast at all (entered in an event), asked once
    # per read; None: every device. The others are skipped before decoding: the hub
    # would drop them unseen, and every instance's tail reads every record of the
    # stream (bench/README.md, "Broadcast tail: ... skipped before decoding").
    entered: Callable[[], Collection[str]] | None = None

    def _idle(self) -> bool:
        return self.entered is not None and not self.entered()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        follower = Follower(
            self.streams, self.keys, self.count, self.block_ms, self.log, "broadcast tail",
            self.pacer,
        )  # fmt: skip
        await follower.start()
        task_status.started()
        while True:
            if self._idle():
                # No event enters any device: nothing read now could be broadcast, so
                # move past it unread (reading every record for nobody cost ~2 µs per
                # record: bench.costs, "ws off"). What arrives once a device is entered
                # is read.
                await follower.skip(self.block_ms / 1000, self._idle)
                continue
            entries = await follower.read()
            wanted = None if self.entered is None else self.entered()
            if wanted is not None and not wanted:
                continue  # the roster emptied during the read: nothing to broadcast
            now = datetime.now(UTC)
            latest = latest_accepted(now, self.future_tolerance_s)
            burst: list[tuple[Position, str | None]] = []
            for _, entry_id, fields in entries:
                if wanted is not None:
                    device_id = peek_device_id(fields)
                    if device_id is not None and device_id not in wanted:
                        continue
                try:
                    position = decode_bounded(fields, now, self.future_tolerance_s, latest)
                except PoisonRecord as exc:
                    self.log.debug(
                        "broadcast tail: poison record skipped", id=entry_id, error=str(exc)
                    )
                    continue
                burst.append((position, entry_id))
                if len(burst) >= self.burst:
                    fullest = self.publish(burst)
                    burst = []
                    # Let client writers drain once an outbox is half full: one read
                    # must not fill an outbox before its writer had a chance to send.
                    if fullest >= self.yield_at:
                        await trio.lowlevel.checkpoint()
            if burst:
                self.publish(burst)
            await trio.lowlevel.checkpoint()
