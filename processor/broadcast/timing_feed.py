"""Timing crossings for every instance's clients: a Redis stream of timing frames.

The race domain records a crossing on whichever instance timed the device (the consumer
group splits records between instances, and a device's pass runs where its lock was
taken), but every instance's WebSocket clients must see it. Handing it to the local hub
only would show each client the share of crossings its own instance happened to time.
So the domain's timing sink appends each crossing to ``<telemetry stream>:timing``
(``TimingPublisher``; capped at about ``STREAM_MAXLEN`` entries) and every broadcast
tails that stream with plain ``XREAD`` from its newest entry at start (``TimingTail``),
as it tails positions. Crossings buffered together go as one entry (a JSON array): a
recomputation can announce hundreds at once, and an XADD each cost the domain's worker
~8 % of its CPU in ``bench.domain``. An instance that runs no domain, or no pipeline at all, still
serves every crossing.

A crossing can be announced twice: two instances recomputing the same device after a
late fix each tell what they found. The tail passes a crossing on only when its time
differs from the one it last passed for the same (entry, geofence).

Announcements wait in a bounded buffer while Redis is away (the pipeline is stalled
then too, so little accrues); beyond ``PENDING_MAX`` the oldest are dropped, counted and
logged: results stay in ``timing_records`` either way, the stream only makes them live.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

import attrs
import orjson
import structlog
import trio

from processor.broadcast import frames
from processor.core.appender import AppendingPlugin, StreamAppender
from processor.core.follow import Follower
from processor.core.observer import CommitObserver
from processor.core.redis_io import RedisStreams

STREAM_MAXLEN = 10_000
PENDING_MAX = 10_000
# Crossings per stream entry, and entries per XREAD.
_CHUNK = 500


def timing_stream(telemetry_stream: str) -> str:
    return f"{telemetry_stream}:timing"


class TimingAnnouncement(Protocol):
    """A recorded crossing, as the race domain hands it over (duck-typed: no import)."""

    @property
    def event_id(self) -> int: ...
    @property
    def stage_id(self) -> int: ...
    @property
    def entry_id(self) -> int: ...
    @property
    def geofence_id(self) -> int: ...
    @property
    def device_id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def crossed_at(self) -> datetime: ...


# One announced crossing: [event id, "entry:geofence", crossed_at, the finished frame].
Announcement = list[str]


def announcement(record: TimingAnnouncement) -> Announcement:
    event_id = str(record.event_id)
    frame = frames.timing_frame(
        event_id,
        record.stage_id,
        record.entry_id,
        record.device_id,
        record.kind,
        record.crossed_at,
    )
    crossing = f"{record.entry_id}:{record.geofence_id}"
    return [event_id, crossing, frames.iso(record.crossed_at), frame]


def entry_fields(announcements: Sequence[Announcement]) -> dict[bytes, bytes]:
    """One stream entry holding several crossings, in the order they were announced."""
    return {b"crossings": orjson.dumps(announcements)}


@attrs.define
class TimingPublisher(AppendingPlugin):
    """A plug-in beside the domain: appends the crossings it announces to the stream."""

    streams: RedisStreams
    key: str
    log: structlog.typing.FilteringBoundLogger
    name: str = "timing feed"
    _appender: StreamAppender[Announcement] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._appender = self.appender(entry_fields, STREAM_MAXLEN, PENDING_MAX, _CHUNK)

    @property
    def observers(self) -> Sequence[CommitObserver]:
        return ()

    def announce(self, record: TimingAnnouncement) -> None:
        """The domain's timing sink: synchronous, never blocks the domain's worker."""
        self._appender.put(announcement(record))


@attrs.define
class TimingTail:
    """The broadcast's read of the timing stream: each crossing to the hub, once."""

    streams: RedisStreams
    key: str
    block_ms: int
    deliver: Callable[[str, str], None]  # (event id, frame text): ``Hub.publish_timing``
    log: structlog.typing.FilteringBoundLogger
    # Crossing time last passed on per (entry, geofence): the race's size bounds it.
    _passed: dict[str, str] = attrs.field(factory=dict, init=False)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        follower = Follower(
            self.streams, [self.key], _CHUNK, self.block_ms, self.log, "timing tail"
        )
        await follower.start()
        task_status.started()
        while True:
            for _, entry_id, fields in await follower.read():
                self._pass_on(entry_id, fields)
            await trio.lowlevel.checkpoint()

    def _pass_on(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        try:
            crossings = [_announcement(item) for item in orjson.loads(fields[b"crossings"])]
        except (KeyError, ValueError, TypeError):  # orjson.JSONDecodeError is a ValueError
            self.log.warning("timing tail: malformed entry skipped", id=entry_id)
            return
        for event_id, crossing, crossed_at, frame in crossings:
            if self._passed.get(crossing) == crossed_at:
                continue
            self._passed[crossing] = crossed_at
            self.deliver(event_id, frame)


def _announcement(item: object) -> Announcement:
    """An announcement read back; TypeError or ValueError if it is not one."""
    if type(item) is not list or len(item) != 4 or not all(type(v) is str for v in item):
        raise TypeError(f"not an announcement: {item!r:.80}")
    return item
