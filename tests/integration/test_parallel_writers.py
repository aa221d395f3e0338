"""Several writers commit in any order; what follows a commit happens in read order.

Two real writers on their own PostgreSQL connections share one ``CommitOrder``. The
first batch's insert is held back, so the second batch commits first: its acks, hot
state and observer hand-off must still wait for the first batch's.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import attrs
import psycopg
import pytest
import structlog
import trio
import trio.testing

from processor import config, exit_codes
from processor.core.commit_order import CommitOrder
from processor.core.health import Readiness
from processor.core.hot_state import DeviceStates
from processor.core.messages import DeadLetter
from processor.core.metrics import Metrics
from processor.core.migrate import apply_migrations
from processor.core.model import Entry, Outcome
from processor.core.pg_io import PositionStore
from processor.core.writer import Writer
from processor.logs import make_logger
from tests.helpers import count_rows, make_position, start_app, wait_for


class HeldStore(PositionStore):
    """A real store whose first insert waits for ``release`` before it starts."""

    release: trio.Event
    inserts: list[str]

    async def insert(self, positions: Sequence[Any], derived: Any = None) -> Any:
        self.inserts.append(positions[0].device_id)
        if len(self.inserts) == 1:
            await self.release.wait()
        return await super().insert(positions, derived)


class Seen:
    def __init__(self) -> None:
        self.batches: list[str] = []

    async def committed(self, entries: Sequence[Entry], outcomes: Sequence[Outcome]) -> None:
        self.batches.append(entries[0].position.device_id)


async def test_a_later_batch_committed_first_waits_for_the_earlier_one(
    bridge: None, settings: config.Settings
) -> None:
    await apply_migrations(settings.postgres_url, log=make_logger("warning"))
    prefix = uuid.uuid4().hex[:8]
    device = f"{prefix}-d"
    # The same device in both: the older fix in the first batch, the newer in the second.
    first = [Entry(f"1-{i}", make_position(device, second=1), {}, "s") for i in range(1)]
    second = [Entry(f"2-{i}", make_position(device, second=9), {}, "s") for i in range(1)]
    store = HeldStore(settings.postgres_url)
    store.release, store.inserts = trio.Event(), []
    other = PositionStore(settings.postgres_url)
    states, order, seen, metrics = DeviceStates(10), CommitOrder(), Seen(), Metrics.create("s")

    def writer(s: PositionStore) -> Writer:
        return Writer(
            store=s,
            states=states,
            metrics=metrics,
            health=Readiness(),
            log=structlog.get_logger(),
            observers=[seen],
            order=order,
        )

    acks_send, acks_recv = trio.open_memory_channel[list[tuple[str, str]]](10)
    dead_send, _ = trio.open_memory_channel[list[DeadLetter]](10)
    try:
        async with trio.open_nursery() as nursery:
            tickets = order.take(), order.take()  # taken in read order: first, second
            nursery.start_soon(writer(store).write, first, tickets[0], acks_send, dead_send)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(writer(other).write, second, tickets[1], acks_send, dead_send)
            await wait_for(
                lambda: count_rows(settings.postgres_url, prefix) == 1, what="second committed"
            )
            await trio.testing.wait_all_tasks_blocked()
            assert store.inserts == [device]
            assert seen.batches == []  # committed, but its turn has not come
            assert acks_recv.statistics().current_buffer_used == 0
            store.release.set()
        assert seen.batches == [device, device]
        assert [acks_recv.receive_nowait(), acks_recv.receive_nowait()] == [
            [("s", "1-0")],
            [("s", "2-0")],
        ]
        state = states.get(device)
        assert state is not None
        assert state.last_position is not None
        assert state.last_position.ts == second[0].position.ts
        assert count_rows(settings.postgres_url, prefix) == 2
    finally:
        await store.aclose()
        await other.aclose()


async def test_a_turn_waits_for_every_earlier_ticket() -> None:
    order = CommitOrder()
    one, two, three = order.take(), order.take(), order.take()
    finished: list[int] = []

    async def finish(ticket: int) -> None:
        await order.turn(ticket)
        finished.append(ticket)
        order.done(ticket)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(finish, three)
        nursery.start_soon(finish, two)
        await trio.testing.wait_all_tasks_blocked()
        assert finished == []
        nursery.start_soon(finish, one)
    assert finished == [one, two, three]
    with pytest.raises(RuntimeError, match="out of turn"):
        order.done(two)


RAISE_DEADLOCK = "DO $$ BEGIN RAISE EXCEPTION 'deadlock (test)' USING ERRCODE = '40P01'; END $$"


async def _raise_deadlock(conn: Any) -> None:
    await conn.execute(RAISE_DEADLOCK)


class ContendedOnce(PositionStore):
    """A real store whose first insert meets a real deadlock error from PostgreSQL."""

    attempts: int = 0

    async def insert(self, positions: Sequence[Any], derived: Any = None) -> Any:
        self.attempts += 1
        if self.attempts == 1:
            await self.session.run(_raise_deadlock)
        return await super().insert(positions, derived)


class Health(Readiness):
    failures: list[str]

    def fail(self, component: str, reason: str) -> None:
        self.failures.append(component)
        super().fail(component, reason)


async def test_a_deadlock_is_retried_at_once_and_readiness_stays(
    bridge: None, settings: config.Settings
) -> None:
    """Two writers whose batches hold the same keys in opposite orders can deadlock;
    PostgreSQL aborts one. That is contention, not an outage: the batch is retried on the
    same connection, and readiness does not flap."""
    await apply_migrations(settings.postgres_url, log=make_logger("warning"))
    prefix = uuid.uuid4().hex[:8]
    store = ContendedOnce(settings.postgres_url)
    await store.connect()
    generation = store.session.generation
    health = Health()
    health.failures = []
    metrics = Metrics.create("s")
    writer = Writer(
        store=store,
        states=DeviceStates(10),
        metrics=metrics,
        health=health,
        log=structlog.get_logger(),
    )
    acks_send, acks_recv = trio.open_memory_channel[list[tuple[str, str]]](10)
    dead_send, _ = trio.open_memory_channel[list[DeadLetter]](10)
    batch = [Entry("1-0", make_position(f"{prefix}-a", second=1), {}, "s")]
    try:
        with trio.fail_after(10):
            await writer.write(batch, None, acks_send, dead_send)
        assert store.attempts == 2
        assert acks_recv.receive_nowait() == [("s", "1-0")]
        assert count_rows(settings.postgres_url, prefix) == 1
        assert health.failures == []
        assert metrics.write_retries._value.get() == 1
        assert store.session.generation == generation  # the connection was kept
    finally:
        await store.aclose()


async def test_every_writer_is_connected_when_the_instance_is_ready(
    settings: config.Settings, fresh_database_url: str, nursery: trio.Nursery
) -> None:
    """Readiness is real: with WRITERS=3 the three write connections exist before the
    first record (the extra ones used to connect at their first batch)."""
    settings = attrs.evolve(settings, postgres_url=fresh_database_url, writers=3)
    started = await start_app(nursery, settings, log=make_logger("warning"))
    with psycopg.connect(fresh_database_url) as conn:
        [(writers,)] = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'processor'"
        ).fetchall()
    assert writers == 3
    assert await started.stop() == exit_codes.OK
