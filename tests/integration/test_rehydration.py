"""Rehydration on a cold start: hot state is seeded from each device's newest stored row.

A restarted instance must not take a late fix for a device's last position when a newer
one is already stored, and must look devices up in one query per write batch (a cold
start with 10k devices is not 10k round trips), each device only once (memoised).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import attrs
import pytest
import redis
import trio

from processor import config, exit_codes
from processor.app import App
from processor.core.migrate import apply_migrations
from processor.core.model import Position
from processor.core.pg_io import PositionStore
from processor.logs import make_logger
from tests.helpers import (
    BASE_TIME,
    count_rows,
    group_pending,
    make_position,
    publish,
    start_app,
    wait_for,
)

DEVICES = 300


async def test_cold_start_seeds_state_from_newest_rows_one_query_per_batch(
    bridge: None,
    settings: config.Settings,
    sync_redis: redis.Redis,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await apply_migrations(settings.postgres_url, log=make_logger("warning"))
    prefix = f"H{uuid.uuid4().hex[:8]}"
    stored = [f"{prefix}-{i:03d}" for i in range(DEVICES)]
    never_stored = f"{prefix}-new"
    store = PositionStore(settings.postgres_url)
    try:
        # What an earlier run wrote: each device's newest fix is at second 50.
        await store.insert([make_position(d, second=s) for d in stored for s in (30, 50)])
    finally:
        await store.aclose()

    lookups: list[list[str]] = []
    real_newest = PositionStore.newest

    async def counting_newest(self: PositionStore, device_ids: Sequence[str]) -> list[Position]:
        lookups.append(list(device_ids))
        return await real_newest(self, device_ids)

    monkeypatch.setattr(PositionStore, "newest", counting_newest)
    running = await start_app(nursery, attrs.evolve(settings, batch_max=DEVICES + 10))
    app = running.app

    # Late fixes (second 10) for every stored device, and a first one for a new device.
    publish(
        sync_redis,
        settings.telemetry_stream,
        [make_position(d, second=10) for d in stored] + [make_position(never_stored, second=5)],
    )
    await wait_for(
        lambda: count_rows(settings.postgres_url, prefix) == 3 * DEVICES + 1, what="rows"
    )
    await wait_for(lambda: group_pending(sync_redis, settings.telemetry_stream) == 0, what="acks")

    newest_stored = BASE_TIME.replace(second=BASE_TIME.second + 50)
    for device in stored:
        state = app.states.get(device)
        assert state is not None, device
        assert state.last_position is not None, device
        assert state.last_position.ts == newest_stored, device
        assert state.position_count_session == 1
    fresh = app.states.get(never_stored)
    assert fresh is not None
    assert fresh.last_position is not None
    assert fresh.last_position.ts == BASE_TIME.replace(second=BASE_TIME.second + 5)
    # At most one lookup per write batch (however the reads were cut into batches), and
    # every device looked up exactly once.
    assert 1 <= len(lookups) <= _batches_written(app), [len(ids) for ids in lookups]
    looked_up = [d for ids in lookups for d in ids]
    assert sorted(looked_up) == sorted([*stored, never_stored])
    before = len(lookups)
    assert app.metrics.rehydrations._value.get() == DEVICES  # devices that had a row

    # Memoised: more records for the same devices (stored or not) look nothing up.
    publish(
        sync_redis,
        settings.telemetry_stream,
        [make_position(d, second=60) for d in stored[:5]] + [make_position(never_stored, 6)],
    )
    await wait_for(
        lambda: count_rows(settings.postgres_url, prefix) == 3 * DEVICES + 7, what="rows"
    )
    assert len(lookups) == before, lookups[before:]
    assert await running.stop() == exit_codes.OK


def _batches_written(app: App) -> int:
    return int(
        next(
            s.value
            for m in app.metrics.batch_size.collect()
            for s in m.samples
            if s.name.endswith("_count")
        )
    )
