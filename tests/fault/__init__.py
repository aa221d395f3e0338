"""Fault tests: ``processor run`` subprocesses against servers we stop, stall and restart.

Shared here: the workload (records with known, distinct row keys), publishing, and the
questions every fault test asks afterwards: which entries are pending, which rows exist,
is any record stored twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

import attrs
import psycopg
import redis

from processor.core.codec import encode
from tests.helpers import BASE_TIME, make_position

GROUP = "processor"
Key = tuple[str, datetime]


def id_key(entry_id: str | bytes) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


@attrs.frozen
class Workload:
    """``n`` valid records over ``devices`` devices, each with its own (device_id, ts)."""

    prefix: str
    keys: list[Key]
    fields: list[dict[bytes, bytes]]

    @classmethod
    def make(cls, n: int, devices: int = 200, prefix: str | None = None) -> Workload:
        prefix = prefix or f"W{uuid.uuid4().hex[:6]}"
        keys: list[Key] = []
        fields: list[dict[bytes, bytes]] = []
        template = encode(make_position(f"{prefix}-0000"))[b"payload"]
        base_device = f"{prefix}-0000".encode()
        base_ts = b"2026-05-12T09:31:02.000Z"
        for i in range(n):
            device, second = i % devices, i // devices
            device_id = f"{prefix}-{device:04d}"
            ts = BASE_TIME + timedelta(seconds=second)
            # Same record as encode(make_position(device_id, second)) with a constant
            # received_at: a plain substitution is 10x faster than encoding 50k records.
            stamp = ts.isoformat(timespec="milliseconds").replace("+00:00", "Z").encode()
            payload = template.replace(base_device, device_id.encode()).replace(base_ts, stamp)
            keys.append((device_id, ts))
            fields.append({b"payload": payload})
        return cls(prefix, keys, fields)


def publish_all(
    client: redis.Redis, stream: str, records: Sequence[dict[bytes, bytes]], chunk: int = 2000
) -> list[str]:
    ids: list[str] = []
    for start in range(0, len(records), chunk):
        pipe = client.pipeline(transaction=False)
        for fields in records[start : start + chunk]:
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
        ids.extend(i.decode() for i in pipe.execute())
    return ids


# -- Redis side ----------------------------------------------------------------------------


def group_info(client: redis.Redis, stream: str, group: str = GROUP) -> dict[str, object]:
    for info in client.xinfo_groups(stream):
        if info["name"].decode() == group:
            return info  # type: ignore[no-any-return]
    raise AssertionError(f"no group {group!r} on {stream!r}")


def last_delivered(client: redis.Redis, stream: str, group: str = GROUP) -> str:
    value = group_info(client, stream, group)["last-delivered-id"]
    return value.decode() if isinstance(value, bytes) else str(value)


def pending_count(client: redis.Redis, stream: str, group: str = GROUP) -> int:
    return int(group_info(client, stream, group)["pending"])  # type: ignore[call-overload]


def pending_ids(
    client: redis.Redis, stream: str, group: str = GROUP, consumer: str | None = None
) -> set[str]:
    """Every entry id in the group's pending list (or one consumer's), paged by id."""
    out: set[str] = set()
    start = "-"
    while True:
        rows = client.xpending_range(
            stream, group, min=start, max="+", count=10_000, consumername=consumer
        )
        if not rows:
            return out
        for row in rows:
            out.add(row["message_id"].decode())
        last = id_key(rows[-1]["message_id"])
        start = f"({last[0]}-{last[1]}"


def consumer_pending(client: redis.Redis, stream: str, consumer: str, group: str = GROUP) -> int:
    """Entries in one consumer's pending list; 0 once the consumer is gone from the group."""
    for info in client.xinfo_consumers(stream, group):
        if info["name"].decode() == consumer:
            return int(info["pending"])
    return 0


# -- PostgreSQL side -----------------------------------------------------------------------


def row_keys(database_url: str, prefix: str = "") -> set[Key]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT device_id, ts FROM positions WHERE device_id LIKE %s", (prefix + "%",)
        ).fetchall()
    return {(d, ts) for d, ts in rows}


def row_counts(database_url: str, prefix: str = "") -> tuple[int, int]:
    """(count(*), count of distinct (device_id, ts)) for the rows of this prefix."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT (device_id, ts)) FROM positions"
            " WHERE device_id LIKE %s",
            (prefix + "%",),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def count_rows_or_none(database_url: str, prefix: str = "") -> int | None:
    """The row count, or None while the table or server is not there (yet)."""
    try:
        return row_counts(database_url, prefix)[0]
    except (psycopg.OperationalError, psycopg.errors.UndefinedTable):
        return None


def keys_of(ids: Iterable[str], id_to_key: dict[str, Key]) -> set[Key]:
    return {id_to_key[i] for i in ids}
