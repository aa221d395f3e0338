"""``bench.idle_probe``: idle time is charged to the frames the tasks were parked in."""

from __future__ import annotations

import trio

from bench.idle_probe import IdleProbe


async def _parked_on(event: trio.Event) -> None:
    await event.wait()


async def _busy_then_done(done: trio.Event) -> None:
    await trio.lowlevel.checkpoint()
    done.set()


async def test_idle_time_is_charged_to_where_each_task_waits() -> None:
    probe = IdleProbe(always=True, own="/tests/unit/")
    released = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_parked_on, released)
        await trio.testing.wait_all_tasks_blocked()
        trio.lowlevel.add_instrument(probe)
        try:
            await trio.sleep(0.05)  # the idle stretch being measured, not a wait for a result
        finally:
            trio.lowlevel.remove_instrument(probe)
        released.set()
    assert 0.04 <= probe.idle_s < 5
    parked = [w for w in probe.by_frame if "_parked_on" in w]
    assert parked == ["test_idle_probe.py:_parked_on:11"]
    # Every idle second is charged to each task parked through it, this one included.
    assert probe.by_frame[parked[0]] == probe.idle_s
    assert any("test_idle_time_is_charged" in w for w in probe.by_frame)
    assert probe.report().startswith(f"idle {probe.idle_s:.3f} s in {probe.stretches}")


async def test_outside_a_drain_nothing_is_counted() -> None:
    probe = IdleProbe()  # counts only within window_s of a full read; there was none
    done = trio.Event()
    trio.lowlevel.add_instrument(probe)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_busy_then_done, done)
            await trio.sleep(0.02)
    finally:
        trio.lowlevel.remove_instrument(probe)
    assert done.is_set()
    assert probe.idle_s == 0
    assert not probe.by_frame
