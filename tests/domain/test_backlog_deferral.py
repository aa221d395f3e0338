"""Timing waits while the writer drains a backlog, for a bounded time.

Timing shares the writer's thread: timed while a backlog drains, it took ~30 % of the
drain rate (bench.domain). So full batches are not handed to the worker and its sweeps
wait, until a batch is not full or ``DEFER_UNDER_BACKLOG_S`` has passed; then the
worker has a turn, so a feed that never lets up is still timed. The rules here, on a
mock clock; the plug-in end to end: ``test_shared_timing``.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from processor.core.model import Entry, Outcome
from processor.domain.commits import DEFER_UNDER_BACKLOG_S, Commits, to_time
from tests.helpers import make_position

FULL = 100


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_only_full_batches_are_deferred_and_only_for_a_while(
    mock_clock: trio.testing.MockClock,
) -> None:
    commits = Commits()
    assert not commits.defer(FULL - 1, FULL)  # a steady feed: timed live
    assert not commits.defer(FULL, 0)  # no batch size known: never
    assert commits.defer(FULL, FULL)  # a backlog starts
    mock_clock.jump(DEFER_UNDER_BACKLOG_S / 2)
    assert commits.defer(FULL, FULL)
    mock_clock.jump(DEFER_UNDER_BACKLOG_S / 2)
    assert not commits.defer(FULL, FULL)  # long enough: the worker's turn
    assert commits.worker_turn
    assert not commits.defer(FULL, FULL)  # ... until it finished a round
    commits.worker_turn = False
    assert commits.defer(FULL, FULL)  # a new window
    assert not commits.defer(1, FULL)  # drained
    assert commits.deferring_since is None


async def test_waiting_work_goes_on_when_the_backlog_drains_or_the_wait_is_over(
    mock_clock: trio.testing.MockClock,
) -> None:
    commits = Commits()
    await commits.wait_for_turn()  # nothing deferred: at once
    assert trio.current_time() == 0
    assert commits.defer(FULL, FULL)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(commits.wait_for_turn)
        await trio.sleep(0.5)
        assert not commits.defer(1, FULL)  # a partial batch: the drain is over
    assert trio.current_time() == pytest.approx(0.5, abs=0.1)
    assert not commits.worker_turn

    commits.defer(FULL, FULL)
    started = trio.current_time()
    await commits.wait_for_turn()  # the writer stalled mid-backlog: bounded
    assert trio.current_time() - started == pytest.approx(DEFER_UNDER_BACKLOG_S, abs=0.1)
    assert commits.worker_turn


def test_timing_sees_new_fixes_of_entered_devices_only() -> None:
    # Inserted, with a GPS fix, of an entered device: what the worker (or a timing
    # instance) is handed. With no device entered, nothing, whatever was inserted.
    entries = [
        Entry("1-0", make_position("a", 1)),
        Entry("1-1", make_position("a", 2)),  # a duplicate: its first delivery was timed
        Entry("1-2", make_position("b", 3)),  # not entered
        Entry("1-3", make_position("a", 4, fix_valid=False)),  # no GPS fix
        Entry("1-4", make_position("a", 5)),
    ]
    outcomes = [
        Outcome.INSERTED, Outcome.DUPLICATE, Outcome.INSERTED, Outcome.INSERTED, Outcome.INSERTED
    ]  # fmt: skip
    assert [e.entry_id for e in to_time(entries, outcomes, {"a"})] == ["1-0", "1-4"]
    assert to_time(entries, outcomes, set()) == []
