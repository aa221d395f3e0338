from __future__ import annotations

import trio
import trio.testing

from processor.core.batcher import Batcher, SharedBatches
from processor.core.commit_order import CommitOrder


async def test_full_batches_are_cut_at_batch_max_without_waiting() -> None:
    send, recv = trio.open_memory_channel[list[int]](10)
    batcher = Batcher(recv, batch_max=4, linger_s=3600)
    send.send_nowait([1, 2, 3])
    send.send_nowait([4, 5, 6])
    with trio.fail_after(1):
        assert await batcher.next_batch() == [1, 2, 3, 4]


async def test_partial_batch_waits_for_linger(autojump_clock: trio.testing.MockClock) -> None:
    send, recv = trio.open_memory_channel[list[int]](10)
    batcher = Batcher(recv, batch_max=100, linger_s=0.5)
    send.send_nowait([1])
    start = trio.current_time()
    assert await batcher.next_batch() == [1]
    assert trio.current_time() - start == 0.5


async def test_records_arriving_during_linger_join_the_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    send, recv = trio.open_memory_channel[list[int]](10)
    batcher = Batcher(recv, batch_max=100, linger_s=0.5)

    async def later() -> None:
        await trio.sleep(0.2)
        await send.send([2, 3])

    async with trio.open_nursery() as nursery:
        send.send_nowait([1])
        nursery.start_soon(later)
        assert await batcher.next_batch() == [1, 2, 3]


async def test_close_flushes_remainder_then_ends() -> None:
    send, recv = trio.open_memory_channel[list[int]](10)
    batcher = Batcher(recv, batch_max=2, linger_s=3600)
    send.send_nowait([1, 2, 3])
    await send.aclose()
    with trio.fail_after(1):
        assert await batcher.next_batch() == [1, 2]
        assert await batcher.next_batch() == [3]
        assert await batcher.next_batch() is None


async def test_shared_batches_are_formed_whole_one_at_a_time_and_numbered_in_order() -> None:
    """Two writers on one SharedBatches: each gets a full batch, the earlier records
    under the earlier ticket, while reads trickle in (the case where two batchers on
    one channel would each take every other read and write half batches)."""
    send, receive = trio.open_memory_channel[list[int]](10)
    batches = SharedBatches(Batcher(receive, batch_max=10, linger_s=5.0), CommitOrder())
    got: list[tuple[list[int], int]] = []

    async def writer() -> None:
        taken = await batches.next()
        assert taken is not None
        got.append(taken)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        nursery.start_soon(writer)
        for first in range(0, 20, 5):
            await trio.testing.wait_all_tasks_blocked()
            await send.send(list(range(first, first + 5)))
    assert sorted(got, key=lambda t: t[1]) == [(list(range(10)), 1), (list(range(10, 20)), 2)]
    send.close()
    assert await batches.next() is None
