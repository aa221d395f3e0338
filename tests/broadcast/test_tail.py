"""The stream tail hands fixes to client writers in bursts, not one scheduling point each.

Client writers run only when the tail reaches a checkpoint. Yielding after every fix
left each writer one frame per wake-up (a write per frame was most of the fan-out cost);
never yielding would let one read fill every outbox before any writer sent anything.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
import redis
import trio

from processor import config
from processor.broadcast import tail as tail_module
from processor.broadcast.tail import StreamTail
from processor.core import codec
from processor.core.codec import encode
from processor.core.model import Position
from processor.core.redis_io import RedisStreams
from processor.logs import make_logger
from tests.helpers import make_position, wait_for

FIXES, BURST, YIELD_AT = 500, 10, 100


def tail_of(
    client: RedisStreams,
    stream: str,
    publish: Callable[[list[tuple[Position, str | None]]], int],
    **options: Any,
) -> StreamTail:
    return StreamTail(
        streams=client,
        keys=[stream],
        count=1_000,
        block_ms=100,
        future_tolerance_s=600,
        publish=publish,
        log=make_logger("warning"),
        **options,
    )


def entered_tail(
    client: RedisStreams, stream: str, entered: set[str], published: list[str]
) -> StreamTail:
    """A tail that broadcasts the devices in ``entered`` (as the hub's roster would) and
    notes the device of every fix it hands over."""

    def publish(burst: list[tuple[Position, str | None]]) -> int:
        published.extend(p.device_id for p, _ in burst)
        return 0

    return tail_of(client, stream, publish, entered=lambda: entered)


async def test_the_tail_lets_writers_run_once_an_outbox_is_half_full(
    settings: config.Settings, sync_redis: redis.Redis, bridge: None
) -> None:
    """The hub says how full the fullest outbox is; the tail checkpoints when that
    reaches ``yield_at`` (here: one frame per fix, so every YIELD_AT fixes), not per
    hand-off, and hands fixes over in bursts of BURST."""
    stream = settings.telemetry_stream
    sync_redis.xadd(stream, encode(make_position("before", second=0)))  # type: ignore[arg-type]
    turns = 0  # how often a task standing in for a client writer got to run
    queued = 0  # its outbox: one frame per fix, emptied at each of its turns
    seen: list[int] = []  # the count of those turns as each fix was published
    bursts: list[int] = []  # fixes per hand-off to the hub

    def publish(burst: list[tuple[Position, str | None]]) -> int:
        nonlocal queued
        bursts.append(len(burst))
        seen.extend([turns] * len(burst))
        queued += len(burst)
        return queued

    async def writer_stand_in() -> None:
        nonlocal turns, queued
        while True:
            turns += 1
            queued = 0
            await trio.lowlevel.checkpoint()

    client = await RedisStreams.connect(settings.redis_url)
    try:
        async with trio.open_nursery() as nursery:
            tail = tail_of(client, stream, publish, burst=BURST, yield_at=YIELD_AT)
            await nursery.start(tail.run)
            nursery.start_soon(writer_stand_in)
            # One MULTI: the tail's next XREAD returns all of them in one reply.
            pipe = sync_redis.pipeline(transaction=True)
            for i in range(FIXES):
                pipe.xadd(stream, encode(make_position(f"T{i}", second=1)))  # type: ignore[arg-type]
            pipe.execute()
            await wait_for(lambda: len(seen) == FIXES, what=f"{FIXES} fixes published")
            nursery.cancel_scope.cancel()
    finally:
        await client.aclose()

    runs = [len(list(group)) for _, group in itertools.groupby(seen)]
    # Trio runs every runnable task once per batch, in an order it shuffles, so a
    # writer that ran before the tail in one batch and after it in the next saw two
    # bursts go by: at most 2 x YIELD_AT fixes between its turns (never yielding: 500).
    assert max(runs) <= 2 * YIELD_AT, runs
    # ... and not a turn per hand-off (that would be FIXES // BURST = 50 runs).
    assert len(runs) <= FIXES // YIELD_AT + 1, runs
    assert max(bursts) <= BURST, bursts  # a burst is handed over whole, never more


async def test_records_of_devices_no_event_enters_are_skipped_before_decoding(
    settings: config.Settings,
    sync_redis: redis.Redis,
    bridge: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = settings.telemetry_stream
    sync_redis.xadd(stream, encode(make_position("before", second=0)))  # type: ignore[arg-type]
    decoded: list[str] = []

    def counting_decode(fields: Any, *args: Any) -> Position:
        position = codec.decode_bounded(fields, *args)
        decoded.append(position.device_id)
        return position

    monkeypatch.setattr(tail_module, "decode_bounded", counting_decode)
    entered: set[str] = set()
    published: list[str] = []
    client = await RedisStreams.connect(settings.redis_url)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(entered_tail(client, stream, entered, published).run)
            # No device entered anywhere: nothing is even looked at.
            sync_redis.xadd(stream, encode(make_position("idle", second=1)))  # type: ignore[arg-type]
            entered.add("in-race")
            for device in ("spectator", "in-race", "spectator", "in-race"):
                sync_redis.xadd(stream, encode(make_position(device, second=2)))  # type: ignore[arg-type]
            await wait_for(lambda: len(published) == 2, what="the entered device's fixes")
            nursery.cancel_scope.cancel()
    finally:
        await client.aclose()
    assert published == ["in-race", "in-race"]
    assert decoded == ["in-race", "in-race"]  # the spectator's fixes never reached decode


class CountingStreams(RedisStreams):
    """The real client, noting what the tail's reads returned and its skips saw."""

    read: list[str]  # entry ids XREAD returned
    newest: list[str]  # ids newest_id (the skips) saw

    async def read_after(self, *args: Any, **kwargs: Any) -> Any:
        entries = await super().read_after(*args, **kwargs)
        self.read.extend(entry_id for _, entry_id, _ in entries)
        return entries

    async def newest_id(self, stream: str) -> str | None:
        last = await super().newest_id(stream)
        if last is not None:
            self.newest.append(last)
        return last


async def test_while_no_event_enters_a_device_the_tail_moves_past_records_unread(
    settings: config.Settings, sync_redis: redis.Redis, bridge: None
) -> None:
    """Reading every record for nobody cost the pipeline's thread ~2 µs per record:
    while nothing is entered the tail only moves its start past what arrived. Fixes
    that arrived then are never read (no event entered them: nothing to broadcast);
    once a device is entered, what arrives is read and handed over."""
    stream = settings.telemetry_stream

    def xadd(second: int) -> str:
        entry_id = sync_redis.xadd(stream, encode(make_position("racer", second=second)))  # type: ignore[arg-type]
        return entry_id.decode()  # type: ignore[union-attr]

    xadd(0)
    client = await CountingStreams.connect(settings.redis_url)
    assert isinstance(client, CountingStreams)
    client.read, client.newest = [], []
    entered: set[str] = set()
    published: list[str] = []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(entered_tail(client, stream, entered, published).run)
            ids = [xadd(s) for s in range(1, 51)]
            await wait_for(lambda: ids[-1] in client.newest[1:], what="a skip past 50 fixes")
            entered.add("racer")
            later = xadd(60)
            await wait_for(lambda: published == ["racer"], what="the fix after the entry")
            nursery.cancel_scope.cancel()
    finally:
        await client.aclose()
    assert client.read == [later]  # the 50 fixes from before the entry never came over
