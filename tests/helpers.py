"""Helpers for tests: build contract records, publish them, wait on conditions."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import psycopg
import redis
import structlog
import trio

from processor.app import App
from processor.config import Settings
from processor.core.codec import encode
from processor.core.model import Position
from processor.core.pg_io import position_row
from processor.logs import make_logger
from processor.plugins import PluginFactory

BASE_TIME = datetime(2026, 5, 12, 9, 31, 2, tzinfo=UTC)


def make_position(device: int | str = 1, second: float = 0, **overrides: Any) -> Position:
    device_id = device if isinstance(device, str) else f"3563070424{device:05d}"
    values: dict[str, Any] = dict(
        device_id=device_id,
        ts=BASE_TIME + timedelta(seconds=second),
        latitude=41.3279533,
        longitude=19.8186983,
        altitude=110.0,
        heading=270.0,
        speed=87.0,
        satellites=12,
        priority=0,
        event_io_id=0,
        fix_valid=True,
        attributes={"239": 1, "66": 12850, "16": 18446744073709551615, "10": b"\x01\x02\x03"},
        received_at=BASE_TIME + timedelta(seconds=second, milliseconds=1412),
        codec="8E",
    )
    values.update(overrides)
    return Position(**values)


def publish(client: redis.Redis, stream: str, positions: Iterable[Position]) -> list[str]:
    return publish_fields(client, stream, (encode(p) for p in positions))


def publish_fields(
    client: redis.Redis, stream: str, records: Iterable[dict[bytes, bytes]]
) -> list[str]:
    pipe = client.pipeline(transaction=False)
    for fields in records:
        pipe.xadd(stream, fields)  # type: ignore[arg-type]
    return [i.decode() for i in pipe.execute()]


async def wait_for(
    predicate: Callable[[], Awaitable[bool] | bool],
    timeout: float = 20,  # noqa: ASYNC109
    interval: float = 0.05,
    what: str = "condition",
) -> None:
    """Poll until the predicate holds; fail the test with ``what`` at the deadline."""
    try:
        with trio.fail_after(timeout):
            while True:
                result = predicate()
                if not isinstance(result, bool):
                    result = await result
                if result:
                    return
                await trio.sleep(interval)
    except trio.TooSlowError:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None


def wait_for_sync(
    predicate: Callable[[], bool],
    timeout: float = 20,
    interval: float = 0.05,
    what: str = "condition",
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def count_rows(database_url: str, device_prefix: str = "") -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM positions WHERE device_id LIKE %s", (device_prefix + "%",)
        ).fetchone()
    assert row is not None
    return int(row[0])


def store_positions(database_url: str, positions: Iterable[Position]) -> None:
    """Put positions straight into ``positions``, as the writer commits them (no stream)."""
    with psycopg.connect(database_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO positions (device_id, ts, latitude, longitude, altitude, heading, speed,"
            " satellites, priority, event_io_id, fix_valid, attributes, received_at, derived)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s::jsonb)",
            [position_row(p) for p in positions],
        )


def waiting_on_advisory_lock(database_url: str) -> bool:
    """Whether some session waits for an advisory lock (a pass queued behind another)."""
    with psycopg.connect(database_url) as conn:
        [(waiting,)] = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ).fetchall()
    return bool(waiting)


def group_pending(client: redis.Redis, stream: str, group: str = "processor") -> int:
    for info in client.xinfo_groups(stream):
        if info["name"].decode() == group:
            return int(info["pending"])
    return 0


@attrs.define
class RunningApp:
    """An ``App`` running in a test's nursery; ``stop`` is SIGTERM's path, with a deadline."""

    app: App
    done: trio.Event
    exit_codes: list[int]

    async def stop(self) -> int:
        self.app.shutdown.begin("test")
        await wait_for(self.done.is_set, 15, what="app exit")
        return self.exit_codes[0]


async def start_app(
    nursery: trio.Nursery,
    settings: Settings,
    plugin_factories: Sequence[PluginFactory] | None = None,
    *,
    log: structlog.typing.FilteringBoundLogger | None = None,
) -> RunningApp:
    """Start the real nursery tree in-process and wait until it is ready (or fail)."""
    log = make_logger("warning") if log is None else log
    app = App.create(settings, log, plugin_factories=plugin_factories)
    running = RunningApp(app, trio.Event(), [])

    async def run() -> None:
        running.exit_codes.append(await app.run())
        running.done.set()

    nursery.start_soon(run)
    await wait_for(lambda: app.ready.is_set() or running.done.is_set(), 30, what="app ready")
    assert not running.done.is_set(), f"app exited early with {running.exit_codes}"
    return running
