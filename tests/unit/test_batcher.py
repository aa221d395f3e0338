from __future__ import annotations

import trio
import trio.testing

from processor.core.batcher import Batcher


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
