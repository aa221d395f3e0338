"""The writer's two write paths store the same rows; the fast one only when it may.

A batch first goes straight into ``positions`` with one COPY; when a row of it is
already stored (or twice in it), nothing of that COPY stays and the batch is staged
(``INSERT ... ON CONFLICT DO NOTHING RETURNING``). Both report per row what is new.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from processor import config
from processor.core.migrate import apply_migrations
from processor.core.pg_io import STAGED_AFTER_CONFLICT, PositionStore
from processor.logs import make_logger
from tests.helpers import make_position

STORED = """
SELECT device_id, ts, latitude, longitude, altitude, heading, speed, satellites, priority,
       event_io_id, fix_valid, attributes, jsonb_typeof(attributes), received_at, derived,
       jsonb_typeof(derived)
FROM positions WHERE device_id = ANY(%s) ORDER BY device_id, ts
"""


def stored(url: str, devices: list[str]) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(STORED, (devices,)).fetchall()


@pytest.fixture
async def store(bridge: None, settings: config.Settings) -> Any:
    await apply_migrations(settings.postgres_url, log=make_logger("warning"))
    paths: list[str] = []
    store = PositionStore(settings.postgres_url, on_path=paths.append)
    yield store, paths
    await store.aclose()


async def test_both_paths_store_identical_rows(settings: config.Settings, store: Any) -> None:
    """One device's rows written directly, another's through staging: same columns."""
    writer, paths = store
    a, b = f"A{uuid.uuid4().hex[:10]}", f"B{uuid.uuid4().hex[:10]}"
    derived = b'{"ignition":true,"odometer_km":12.5}'
    direct = [make_position(a, second=s) for s in (1, 2)]
    assert await writer.insert(direct, [derived, None]) == {p.key for p in direct}
    # b's batch repeats a's first row: a conflict, so it is staged.
    staged = [direct[0], *(make_position(b, second=s) for s in (1, 2))]
    assert await writer.insert(staged, [derived, derived, None]) == {p.key for p in staged[1:]}
    assert paths == ["direct", "fallback"]

    rows = stored(settings.postgres_url, [a, b])
    assert len(rows) == 4
    by_path = {device: [r[2:] for r in rows if r[0] == device] for device in (a, b)}
    assert by_path[a] == by_path[b]
    first = rows[0]
    # JSON columns hold objects (not a JSON string of the text), numbers exact, bytes as
    # bytea text, as the contract wants.
    assert first[11] == {"239": 1, "66": 12850, "16": 18446744073709551615, "10": "\\x010203"}
    assert first[12] == "object"
    assert (first[14], first[15]) == ({"ignition": True, "odometer_km": 12.5}, "object")
    assert rows[1][14] is None


async def test_a_twin_inside_one_batch_is_stored_once(
    settings: config.Settings, store: Any
) -> None:
    writer, paths = store
    device = f"T{uuid.uuid4().hex[:10]}"
    twin = make_position(device, second=3)
    batch = [twin, make_position(device, second=4), twin]
    assert await writer.insert(batch) == {twin.key, batch[1].key}
    assert paths == ["fallback"]
    assert len(stored(settings.postgres_url, [device])) == 2


async def test_after_a_conflict_batches_are_staged_for_a_while(store: Any) -> None:
    """Conflicts come in runs (a restart re-reading, a claim): stage the next batches
    rather than pay a wasted COPY for each, then try the direct path again."""
    writer, paths = store
    device = f"R{uuid.uuid4().hex[:10]}"
    first = make_position(device, second=0)
    await writer.insert([first])
    await writer.insert([first])  # re-delivered: conflict
    for s in range(1, STAGED_AFTER_CONFLICT + 2):
        assert await writer.insert([make_position(device, second=s)]) == {
            make_position(device, second=s).key
        }
    assert paths == ["direct", "fallback"] + ["staged"] * STAGED_AFTER_CONFLICT + ["direct"]
