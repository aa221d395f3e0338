"""Read pacing: a short read spaces the next one; full and empty reads do not."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from processor.core.read_pacing import ReadPacer


async def waited(pacer: ReadPacer) -> float:
    started = trio.current_time()
    await pacer.wait()
    return trio.current_time() - started


@pytest.mark.parametrize(
    ("got", "asked", "expected_wait_s"),
    [
        (1, 500, 0.010),  # ahead of the feed: let entries gather
        (499, 500, 0.010),
        (500, 500, 0.0),  # a backlog: read on at full speed
        (0, 500, 0.0),  # the block timed out on a quiet stream: the next fix is not delayed
    ],
)
async def test_the_wait_after_a_read(
    autojump_clock: trio.testing.MockClock, got: int, asked: int, expected_wait_s: float
) -> None:
    pacer = ReadPacer(0.010)
    assert await waited(pacer) == 0.0  # the first read goes at once
    pacer.read(got, asked)
    assert await waited(pacer) == pytest.approx(expected_wait_s)


async def test_time_spent_since_the_read_counts(autojump_clock: trio.testing.MockClock) -> None:
    """Processing the entries read takes time too: the next read waits only the rest."""
    pacer = ReadPacer(0.010)
    pacer.read(3, 500)
    await trio.sleep(0.004)
    assert await waited(pacer) == pytest.approx(0.006)
    pacer.read(3, 500)
    await trio.sleep(0.050)
    assert await waited(pacer) == 0.0


async def test_zero_interval_never_waits(autojump_clock: trio.testing.MockClock) -> None:
    pacer = ReadPacer(0.0)
    pacer.read(1, 500)
    assert await waited(pacer) == 0.0
