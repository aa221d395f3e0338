"""Committed fixes for a timing instance: what ``TIMING=publish`` / ``consume`` exchange.

Timing shares the pipeline's one Python thread when it runs inline, and while a long
backlog drains the two compete for it (bench/README.md, race domain). With
``TIMING=publish`` a pipeline instance times nothing: after each commit it appends the
payloads of the newly inserted fixes of entered devices, as ingestion sent them, to
``<telemetry stream>:committed`` (``CommittedPublisher``: one entry per chunk, through a
bounded buffer, so the writer never waits). An instance with ``PIPELINE_ENABLED=false``
and ``TIMING=consume`` follows that stream (``CommittedTail``), decodes the payloads and
hands them to its timing worker exactly as an inline observer would: on a core, or a
host, of its own.

Only committed fixes are appended, so a recomputation the timing instance starts from
``positions`` finds every fix it has been told of. Nothing is lost when the stream is: an
entry dropped by a full buffer, trimmed from the capped stream before it was read, or
appended while no timing instance ran is a stored fix newer than its device's
``timing_progress``, which the timing instance's catch-up (at start and after every
definition load, ``DOMAIN_REFRESH_S``) recomputes. Payloads are re-decoded with the
contract's own decoder; they passed it once already, so a failure here is logged and
skipped (the catch-up times the stored row).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime

import attrs
import structlog
import trio
from prometheus_client import Counter

from processor.core.appender import AppendingPlugin, StreamAppender
from processor.core.codec import decode_bounded, latest_accepted
from processor.core.errors import PoisonRecord
from processor.core.follow import Follower
from processor.core.model import Entry, Outcome, Position
from processor.core.observer import CommitObserver
from processor.core.redis_io import RedisStreams
from processor.domain.commits import to_time
from processor.domain.definition import RaceDefinition

# Stream entries kept (XADD MAXLEN ~), each up to _CHUNK payloads of ~400 bytes: about
# 400 MB at most, and a timing instance that far behind is better served by its catch-up.
STREAM_MAXLEN = 1_000
# Payloads buffered while Redis is away (the pipeline stalls then too).
PENDING_MAX = 100_000
_CHUNK = 1_000
_FIELD = b"payloads"
# Stream entries per XREAD: a few commits' worth per timing pass.
_READ_ENTRIES = 8


def committed_stream(telemetry_stream: str) -> str:
    return f"{telemetry_stream}:committed"


@attrs.frozen
class FeedSource:
    """Where a ``TIMING=consume`` instance reads committed fixes from."""

    streams: RedisStreams
    key: str
    block_ms: int


def entry_fields(payloads: Sequence[bytes]) -> dict[bytes, bytes]:
    """One stream entry: the payloads in commit order, each behind its 4-byte length.

    One field, not one per payload: redis-py packs every field of an XADD in Python, and
    a field per payload cost the pipeline ~2.5 µs per record (``bench.profile --race``).
    """
    return {_FIELD: b"".join(len(p).to_bytes(4, "big") + p for p in payloads)}


def payloads_of(fields: Mapping[bytes, bytes]) -> list[bytes]:
    """An entry's payloads; ValueError if it is not what ``entry_fields`` writes."""
    framed = fields.get(_FIELD)
    if type(framed) is not bytes:
        raise ValueError(f"no {_FIELD.decode()} field")
    out: list[bytes] = []
    at, end = 0, len(framed)
    while at < end:
        size = int.from_bytes(framed[at : at + 4], "big")
        start, at = at + 4, at + 4 + size
        if at > end:
            raise ValueError(f"a payload of {size} bytes runs past the entry's end")
        out.append(framed[start:at])
    return out


@attrs.define
class CommittedPublisher(AppendingPlugin):
    """A plug-in beside the domain on a ``TIMING=publish`` pipeline instance. Payloads it
    drops (``dropped``: a full buffer) are timed by the timing instance's catch-up."""

    streams: RedisStreams
    key: str
    definition: Callable[[], RaceDefinition]  # the domain's current one: who is entered
    log: structlog.typing.FilteringBoundLogger
    name: str = "committed feed"
    _appender: StreamAppender[bytes] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._appender = self.appender(entry_fields, STREAM_MAXLEN, PENDING_MAX, _CHUNK)

    @property
    def observers(self) -> Sequence[CommitObserver]:
        return (self,)

    async def committed(self, entries: Sequence[Entry], outcomes: Sequence[Outcome]) -> None:
        put = self._appender.put
        for entry in to_time(entries, outcomes, self.definition().entries_by_device):
            payload = entry.fields.get(b"payload")
            if payload is not None:
                put(payload)


@attrs.define
class CommittedTail:
    """A ``TIMING=consume`` instance's read of the committed stream, for its worker.

    ``deliver`` may wait (the worker's queue is full): the tail then stops reading, and
    the stream holds the rest.
    """

    streams: RedisStreams
    key: str
    block_ms: int
    deliver: Callable[[list[Position]], Awaitable[None]]
    log: structlog.typing.FilteringBoundLogger
    skipped: Counter  # entries, payloads that failed to decode

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        follower = Follower(
            self.streams, [self.key], _READ_ENTRIES, self.block_ms, self.log, "committed feed"
        )
        await follower.start()
        task_status.started()
        while True:
            entries = await follower.read()
            now = datetime.now(UTC)
            # It passed the future rule at commit; a clock step here must not fail it now.
            latest = latest_accepted(now, math.inf)
            positions: list[Position] = []
            for _, entry_id, fields in entries:
                try:
                    payloads = payloads_of(fields)
                except ValueError as exc:
                    self.skipped.inc()
                    self.log.warning("committed feed: entry skipped", id=entry_id, error=str(exc))
                    continue
                for payload in payloads:
                    try:
                        positions.append(
                            decode_bounded({b"payload": payload}, now, math.inf, latest)
                        )
                    except PoisonRecord as exc:
                        self.skipped.inc()
                        self.log.warning("committed feed: payload skipped", id=entry_id,
                                         error=str(exc))  # fmt: skip
            if positions:
                await self.deliver(positions)
            await trio.lowlevel.checkpoint()
