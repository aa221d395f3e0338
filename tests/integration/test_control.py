"""The control listener, standalone: real Redis pub/sub, real PostgreSQL, no daemon."""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import attrs
import orjson
import pytest
import redis
import redis.asyncio as aioredis
import trio

from processor import config
from processor.core.control import (
    MAX_MESSAGE_BYTES,
    ControlListener,
    InvalidControlMessage,
    Rehydrate,
    control_channel,
    parse_message,
    rehydrate_message,
)
from processor.core.hot_state import DeviceStates
from processor.core.metrics import Metrics
from processor.core.migrate import apply_migrations
from processor.core.model import Position
from processor.core.pg_io import PositionStore
from processor.core.redis_io import RedisStreams
from processor.logs import make_logger
from tests.helpers import BASE_TIME, make_position, wait_for


def test_rehydrate_message_round_trips() -> None:
    assert parse_message(rehydrate_message("356307042441013")) == Rehydrate("356307042441013")


@pytest.mark.parametrize(
    "data",
    [
        b"{not json",
        b"[1, 2]",
        b'{"op": "explode", "device_id": "1"}',
        b'{"device_id": "1"}',
        b'{"op": "rehydrate"}',
        b'{"op": "rehydrate", "device_id": "bad id!"}',
        b'{"op": "rehydrate", "device_id": 42}',
        b'{"op": "rehydrate", "device_id": "' + b"1" * MAX_MESSAGE_BYTES + b'"}',
    ],
)
def test_bad_messages_are_rejected(data: bytes) -> None:
    with pytest.raises(InvalidControlMessage):
        parse_message(data)


@attrs.define
class Listening:
    listener: ControlListener
    states: DeviceStates
    metrics: Metrics
    channel: str
    log: io.StringIO
    scope: trio.CancelScope


def _numsub(client: redis.Redis, channel: str) -> int:
    return int(client.pubsub_numsub(channel)[0][1])


async def _start(
    nursery: trio.Nursery, settings: config.Settings, postgres_url: str, client_name: str
) -> Listening:
    client = aioredis.Redis.from_url(settings.redis_url, client_name=client_name)
    streams = RedisStreams(client, settings.redis_url)
    out = io.StringIO()
    metrics = Metrics.create(settings.telemetry_stream)
    states = DeviceStates(100)
    listener = ControlListener(
        streams=streams,
        store=PositionStore(postgres_url),
        channel=control_channel(settings.telemetry_stream),
        states=states,
        metrics=metrics,
        log=make_logger("info", file=out),
        poll_s=0.5,
    )
    scope = trio.CancelScope()

    async def run(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            try:
                await listener.run(task_status=task_status)
            finally:
                await streams.aclose()

    await nursery.start(run)
    return Listening(listener, states, metrics, listener.channel, out, scope)


@pytest.fixture
async def migrated(bridge: None, settings: config.Settings) -> str:
    await apply_migrations(settings.postgres_url, log=make_logger("warning"))
    return settings.postgres_url


@pytest.fixture
async def listening(
    migrated: str, settings: config.Settings, nursery: trio.Nursery
) -> AsyncIterator[Listening]:
    running = await _start(nursery, settings, migrated, f"ctl-{uuid.uuid4().hex[:8]}")
    yield running
    running.scope.cancel()


async def _store(url: str, *positions: object) -> None:
    store = PositionStore(url)
    try:
        await store.insert(positions)  # type: ignore[arg-type]
    finally:
        await store.aclose()


def _device() -> str:
    return f"C{uuid.uuid4().hex[:12]}"


async def test_started_means_subscribed_and_rehydrate_reseeds_from_newest_row(
    listening: Listening, migrated: str, sync_redis: redis.Redis
) -> None:
    assert _numsub(sync_redis, listening.channel) == 1
    device = _device()
    await _store(migrated, make_position(device, second=5), make_position(device, second=7))
    # Hot state holds a fix the database does not (say an operator deleted a bogus row).
    listening.states.observe(make_position(device, second=999), BASE_TIME)

    assert sync_redis.publish(listening.channel, rehydrate_message(device)) == 1

    def reseeded() -> bool:
        state = listening.states.get(device)
        return (
            state is not None
            and state.last_position is not None
            and (state.last_position.ts == make_position(device, second=7).ts)
        )

    await wait_for(reseeded, 10, what="state reseeded from the newest row")
    assert listening.metrics.rehydrations._value.get() == 1
    state = listening.states.get(device)
    assert state is not None
    assert state.position_count_session == 0


async def test_device_without_rows_is_left_without_a_position(
    listening: Listening, sync_redis: redis.Redis
) -> None:
    device = _device()
    listening.states.observe(make_position(device, second=3), BASE_TIME)
    sync_redis.publish(listening.channel, rehydrate_message(device))
    await wait_for(lambda: listening.metrics.rehydrations._value.get() == 1, 10, what="rehydration")
    state = listening.states.get(device)
    assert state is not None
    assert state.last_position is None


async def test_bad_messages_are_logged_and_ignored(
    listening: Listening, sync_redis: redis.Redis
) -> None:
    for bad in (b"{not json", orjson.dumps({"op": "reboot"}), b'{"op":"rehydrate"}'):
        sync_redis.publish(listening.channel, bad)
    device = _device()
    sync_redis.publish(listening.channel, rehydrate_message(device))
    await wait_for(lambda: device in listening.states, 10, what="good message after bad ones")
    lines = [orjson.loads(line) for line in listening.log.getvalue().splitlines()]
    ignored = [line for line in lines if line["event"] == "ignored control message"]
    assert len(ignored) == 3
    assert {line["level"] for line in ignored} == {"warning"}
    assert listening.metrics.rehydrations._value.get() == 1


async def test_cancel_ends_it_at_once_and_unsubscribes(
    listening: Listening, sync_redis: redis.Redis
) -> None:
    before = trio.current_time()
    listening.scope.cancel()
    await wait_for(lambda: _numsub(sync_redis, listening.channel) == 0, 2, what="unsubscribed")
    assert trio.current_time() - before < 1.0


async def test_resubscribes_after_the_connection_is_killed(
    migrated: str, settings: config.Settings, nursery: trio.Nursery, sync_redis: redis.Redis
) -> None:
    name = f"ctl-{uuid.uuid4().hex[:8]}"
    running = await _start(nursery, settings, migrated, name)
    try:
        ids = [c["id"] for c in sync_redis.client_list() if c.get("name") == name]
        assert ids
        for client_id in ids:
            sync_redis.client_kill_filter(_id=client_id)
        # The listener's own resubscription, not redis-py's transparent reconnect of the
        # old connection (which the listener then closes): only then is delivery certain.
        await wait_for(
            lambda: (
                "control channel resubscribed" in running.log.getvalue()
                and _numsub(sync_redis, running.channel) == 1
            ),
            10,
            what="resubscribed",
        )
        device = _device()
        sync_redis.publish(running.channel, rehydrate_message(device))
        await wait_for(lambda: device in running.states, 10, what="message after reconnect")
        assert "control channel lost" in running.log.getvalue()
    finally:
        running.scope.cancel()


async def test_postgres_down_leaves_state_alone_and_keeps_listening(
    bridge: None, settings: config.Settings, nursery: trio.Nursery, sync_redis: redis.Redis
) -> None:
    running = await _start(
        nursery, settings, "postgresql://postgres@127.0.0.1:1/none", f"ctl-{uuid.uuid4().hex[:8]}"
    )
    try:
        device = _device()
        running.states.observe(make_position(device, second=3), BASE_TIME)
        for _ in range(2):
            sync_redis.publish(running.channel, rehydrate_message(device))
        await wait_for(
            lambda: running.log.getvalue().count("rehydrate failed") == 2, 15, what="2 failures"
        )
        state = running.states.get(device)
        assert state is not None
        assert state.last_position == make_position(device, second=3)
        assert running.metrics.rehydrations._value.get() == 0
    finally:
        running.scope.cancel()


@attrs.define
class _CommitsDuringLookup:
    """A real store whose first lookup lets the writer commit a newer fix meanwhile."""

    store: PositionStore
    states: DeviceStates
    newer: Position
    lookups: int = 0

    async def newest(self, device_ids: list[str]) -> list[Position]:
        self.lookups += 1
        found = await self.store.newest(device_ids)
        if self.lookups == 1:  # as the writer would: commit, then observe
            await self.store.insert([self.newer])
            self.states.observe(self.newer, datetime.now(UTC))
        return found

    async def aclose(self) -> None:
        await self.store.aclose()


async def test_a_fix_committed_during_the_lookup_is_not_replaced_by_an_older_one(
    migrated: str, settings: config.Settings
) -> None:
    device = _device()
    await _store(migrated, make_position(device, second=5))
    states = DeviceStates(100)
    states.observe(make_position(device, second=5), BASE_TIME)
    store = _CommitsDuringLookup(PositionStore(migrated), states, make_position(device, second=9))
    listener = ControlListener(
        streams=None,  # type: ignore[arg-type]  # rehydrate() talks to PostgreSQL only
        store=store,  # type: ignore[arg-type]
        channel="unused",
        states=states,
        metrics=Metrics.create(settings.telemetry_stream),
        log=make_logger("warning"),
    )
    try:
        assert await listener.rehydrate(device)
    finally:
        await store.aclose()
    state = states.get(device)
    assert state is not None
    assert state.last_position is not None
    assert state.last_position.ts == make_position(device, second=9).ts
    assert store.lookups == 2
