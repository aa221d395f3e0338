"""Plug-ins reach the write path only through the core's Enricher and CommitObserver."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import psycopg
import redis
import trio

from processor import config
from processor.core.model import Entry, Outcome, Position
from processor.core.observer import derive_json_each
from processor.plugins import Context
from tests.helpers import count_rows, make_position, publish, start_app, wait_for


@attrs.define
class RecordingPlugin:
    name: str = "recording"
    batches: list[list[tuple[str, Outcome]]] = attrs.field(factory=list)
    started: bool = False

    @property
    def enricher(self) -> RecordingPlugin:
        return self

    @property
    def observers(self) -> Sequence[RecordingPlugin]:
        return [self]

    def derive(self, position: Position) -> Mapping[str, Any] | None:
        if position.attributes.get("239") is None:
            return None
        return {"ignition": position.attributes["239"] == 1, "speed_ms": position.speed / 3.6}

    def derive_json(self, positions: Sequence[Position]) -> list[bytes | None]:
        return derive_json_each(self.derive, positions)

    async def committed(self, entries: Sequence[Entry], outcomes: Sequence[Outcome]) -> None:
        self.batches.append(
            [(e.position.device_id, o) for e, o in zip(entries, outcomes, strict=True)]
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.started = True
        task_status.started()
        await trio.sleep_forever()


async def test_enricher_output_is_stored_and_observers_see_committed_batches(
    settings: config.Settings, sync_redis: redis.Redis, nursery: trio.Nursery
) -> None:
    plugin = RecordingPlugin()
    seen: list[Context] = []

    def factory(context: Context) -> RecordingPlugin:
        seen.append(context)
        return plugin

    running = await start_app(nursery, settings, plugin_factories=[factory])
    app = running.app
    assert plugin.started
    assert seen[0].states is app.states

    prefix = f"P{uuid.uuid4().hex[:8]}"
    with_io = make_position(f"{prefix}-a", speed=36.0)
    without_io = make_position(f"{prefix}-b", attributes={"66": 1})
    publish(sync_redis, settings.telemetry_stream, [with_io, without_io, with_io])
    await wait_for(lambda: count_rows(settings.postgres_url, prefix) == 2, what="rows")
    await wait_for(lambda: sum(len(b) for b in plugin.batches) == 3, what="observed")

    outcomes = sorted((d, o.value) for b in plugin.batches for d, o in b)
    assert outcomes == [
        (f"{prefix}-a", "duplicate"),
        (f"{prefix}-a", "inserted"),
        (f"{prefix}-b", "inserted"),
    ]
    with psycopg.connect(settings.postgres_url) as conn:
        rows = dict(
            conn.execute(
                "SELECT device_id, derived FROM positions WHERE device_id LIKE %s", (prefix + "%",)
            ).fetchall()
        )
    assert rows == {f"{prefix}-a": {"ignition": True, "speed_ms": 10.0}, f"{prefix}-b": None}
    await running.stop()
