"""PostgreSQL adapter: the position write path and the rehydration read, Trio-side.

Write path, one transaction per batch: binary ``COPY`` into a per-connection temporary
staging table (``ON COMMIT DELETE ROWS``, so it empties itself), then ``INSERT ... SELECT
... ON CONFLICT (device_id, ts) DO NOTHING RETURNING device_id, ts``. The RETURNING list
tells inserted rows from re-deliveries.

Measured by ``python -m bench.write_paths`` (30k rows, 1000 per batch, two runs on this
2-core machine under load): the one-statement alternative ``INSERT ... SELECT FROM
unnest(<column arrays>)`` with psycopg's default text parameters reaches 11-13k rows/s at
44-52 µs of client CPU per row (its array dumper is Python); with binary parameters
36-46k rows/s at ~8 µs; COPY staging 35-47k rows/s at 8-9 µs. Binary unnest and COPY
are equal within noise; COPY is kept because psycopg formats its rows in C as they
stream, with no per-column arrays held in memory.

Most batches hold no row that is already stored (re-deliveries come after a crash, a
claim or an upstream resend), so the writer first tries the cheaper path: one binary
``COPY`` straight into ``positions``, which inserts every row or, on the first row whose
key exists (``UniqueViolation``), none; then the batch goes the staging way in a new
transaction. Measured on 50k rows in batches of 1000 (``python -m bench.write_paths``):
direct COPY ~140-150k rows/s at ~5.5 µs of PostgreSQL CPU per row, staging ~73-76k
rows/s at ~11 µs. After a conflict the next ``STAGED_AFTER_CONFLICT`` batches are staged
straight away: conflicts come in runs (a restart re-reading its pending entries, a claim),
and each failed direct attempt costs a wasted COPY.

The connection and the sorting of errors live in ``pg_session.PgSession``, shared with
the plug-ins' stores: the writer retries ``PostgresUnavailable`` with backoff and
bisects a batch on ``RowsRejected``; anything else is a bug or a broken schema and
propagates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from datetime import datetime
from typing import Any

import attrs
import psycopg
from psycopg.types.string import BytesBinaryDumper

from processor.core.codec import stored_json
from processor.core.model import AttributeValue, Position
from processor.core.pg_session import (  # re-exported: callers import them from here
    Contended,
    FastCancelConnection,
    PgSession,
    PostgresUnavailable,
    RowsRejected,
)

# A healthy batch write takes milliseconds; this long means PostgreSQL is stalled.
WRITE_TIMEOUT_S = 30.0

# What a Position holds, in row order (also what rehydration reads back).
_POSITION_COLUMNS = (
    "device_id, ts, latitude, longitude, altitude, heading, speed, satellites, "
    "priority, event_io_id, fix_valid, attributes, received_at"
)
# What the writer stores: a Position plus the named attributes an Enricher derived.
_COLUMNS = _POSITION_COLUMNS + ", derived"

# PostgreSQL types of _COLUMNS (the staging table's too).
COLUMN_TYPES = (
    "text",
    "timestamptz",
    "float8",
    "float8",
    "float8",
    "float8",
    "float8",
    "int2",
    "int2",
    "int4",
    "bool",
    "jsonb",
    "timestamptz",
    "jsonb",
)

# A binary COPY sends each field as its bytes and the server reads it with the column's
# own type, so the dumper psycopg picks only has to produce those bytes. jsonb's binary
# form is a version byte and the JSON text: the rows carry the JSON columns in that form
# already (``copy_row``), and psycopg sends them through its C bytes dumper, which takes
# bytes as they are, instead of calling a Python dumper per value (~110 ns per value,
# timed). The dumper psycopg has for bytea's oid is DB-API's ``Binary`` one, in Python,
# so each COPY's cursor is given the C one (``_copy_adapters``).
JSONB_V1 = b"\x01"
COPY_DUMP_TYPES = tuple("bytea" if kind == "jsonb" else kind for kind in COLUMN_TYPES)
# Staged batches after a direct COPY met a stored row, before trying direct again.
STAGED_AFTER_CONFLICT = 16

CREATE_STAGING = f"""
CREATE TEMP TABLE IF NOT EXISTS positions_staging (
    {", ".join(f"{c} {t}" for c, t in zip(_COLUMNS.split(", "), COLUMN_TYPES, strict=True))}
) ON COMMIT DELETE ROWS
"""
COPY_STAGING = f"COPY positions_staging ({_COLUMNS}) FROM STDIN (FORMAT BINARY)"
COPY_DIRECT = f"COPY positions ({_COLUMNS}) FROM STDIN (FORMAT BINARY)"
INSERT_FROM_STAGING = f"""
INSERT INTO positions ({_COLUMNS})
SELECT {_COLUMNS}
FROM positions_staging
ON CONFLICT (device_id, ts) DO NOTHING
RETURNING device_id, ts
"""

NEWEST_POSITIONS = f"""
SELECT {", ".join("p." + c for c in _POSITION_COLUMNS.split(", "))}
FROM unnest(%b::text[]) AS d(id)
CROSS JOIN LATERAL (
    SELECT * FROM positions WHERE device_id = d.id AND fix_valid ORDER BY ts DESC LIMIT 1
) AS p
"""


def copy_row(p: Position, derived: bytes | None = None) -> tuple[Any, ...]:
    """One ``positions`` row in ``_COLUMNS`` order as the COPY sends it: the JSON
    columns in jsonb's binary form (``JSONB_V1``); ``derived`` is JSON (UTF-8) or None."""
    return (
        p.device_id,
        p.ts,
        p.latitude,
        p.longitude,
        p.altitude,
        p.heading,
        p.speed,
        p.satellites,
        p.priority,
        p.event_io_id,
        p.fix_valid,
        JSONB_V1 + stored_json(p.attributes),
        p.received_at,
        None if derived is None else JSONB_V1 + derived,
    )


def copy_rows(
    positions: Sequence[Position], derived: Sequence[bytes | None] | None = None
) -> list[tuple[Any, ...]]:
    """A batch's ``copy_row`` s; ``derived`` per position, or None for none at all."""
    return [
        copy_row(p, d) for p, d in zip(positions, derived or [None] * len(positions), strict=True)
    ]


def position_row(p: Position, derived: str | None = None) -> tuple[Any, ...]:
    """The same row for a parameterised query: JSON columns as text (cast them to jsonb)."""
    *head, attributes, received_at, _ = copy_row(p)
    return (*head, attributes[1:].decode(), received_at, derived)


def _stored_attribute(value: Any) -> AttributeValue:
    if isinstance(value, str) and value.startswith("\\x"):
        return bytes.fromhex(value[2:])
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    raise ValueError(f"unexpected stored attribute value {value!r}")


def position_from_row(row: Sequence[Any]) -> Position:
    (
        device_id,
        ts,
        lat,
        lon,
        alt,
        heading,
        speed,
        sats,
        priority,
        event_io_id,
        fix_valid,
        attributes,
        received_at,
    ) = row
    return Position(
        device_id=device_id,
        ts=ts,
        latitude=lat,
        longitude=lon,
        altitude=alt,
        heading=heading,
        speed=speed,
        satellites=sats,
        priority=priority,
        event_io_id=event_io_id,
        fix_valid=fix_valid,
        attributes={k: _stored_attribute(v) for k, v in (attributes or {}).items()},
        received_at=received_at,
    )


class AllRows(AbstractSet[tuple[str, datetime]]):
    """The keys of a batch that went in whole (the direct COPY: every key new, and
    distinct, or the unique index would have refused it), hashed only if asked: the
    writer only needs their number, and a set of 1,000 ``(device_id, ts)`` built per
    batch cost ~4 % of the pipeline's CPU without I/O (``python -m bench.record_path``).
    """

    def __init__(self, rows: Sequence[tuple[Any, ...]]) -> None:
        self._rows = rows
        self._keys: set[tuple[str, datetime]] | None = None

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: object) -> bool:
        return key in self._set()

    def __iter__(self) -> Iterator[tuple[str, datetime]]:
        return iter(self._set())

    @classmethod
    def _from_iterable(cls, keys: Iterable[Any]) -> set[Any]:
        return set(keys)  # what ``|``, ``&`` and ``-`` build: a plain set

    def _set(self) -> set[tuple[str, datetime]]:
        if self._keys is None:
            self._keys = {(row[0], row[1]) for row in self._rows}
        return self._keys


@attrs.define
class PositionStore:
    """The writer's PostgreSQL connection (and rehydration reads); see ``PgSession``.

    ``on_path`` hears which write path each batch took (``direct``, ``staged``,
    ``fallback``): the writer counts them in ``processor_write_batches_total``."""

    url: str
    on_path: Callable[[str], None] = lambda path: None
    direct: bool = True  # False: always stage (bench.write_paths compares the two)
    session: PgSession = attrs.field(init=False)
    _staging_generation: int = -1  # the connection generation that has the temp table
    _staged_left: int = 0  # batches to stage before trying a direct COPY again

    def __attrs_post_init__(self) -> None:
        self.session = PgSession(self.url, "processor", WRITE_TIMEOUT_S)

    @property
    def connected(self) -> bool:
        return self.session.connected

    async def connect(self) -> None:
        await self.session.connect()

    async def aclose(self) -> None:
        await self.session.aclose()

    async def insert(
        self, positions: Sequence[Position], derived: Sequence[bytes | None] | None = None
    ) -> AbstractSet[tuple[str, datetime]]:
        """Insert a batch; returns the keys that were new (the rest were already stored).
        ``derived``: each position's ``derived`` column as JSON (UTF-8), or None."""
        rows = copy_rows(positions, derived)
        await self.session.connect()
        direct = self.direct and self._staged_left == 0
        if direct:
            if await self.session.run(_copy_direct, rows):
                self.on_path("direct")
                return AllRows(rows)
            self._staged_left = STAGED_AFTER_CONFLICT
        elif self._staged_left:
            self._staged_left -= 1
        create = self._staging_generation != self.session.generation
        result = await self.session.run(_copy_insert, rows, create)
        self._staging_generation = self.session.generation
        self.on_path("fallback" if direct else "staged")
        return {(device_id, ts) for device_id, ts in result}

    async def newest(self, device_ids: Sequence[str]) -> list[Position]:
        """The newest stored valid fix of each device that has one (one indexed probe each;
        no-fix records are skipped, as hot state skips them)."""
        rows = await self.session.run(_fetch_all, NEWEST_POSITIONS, [list(device_ids)])
        return [position_from_row(r) for r in rows]


async def _fetch_all(
    conn: psycopg.AsyncConnection[Any], query: str, params: list[Any]
) -> list[tuple[Any, ...]]:
    async with conn.cursor() as cur:
        await cur.execute(query, params)
        return await cur.fetchall()


async def _copy_direct(conn: psycopg.AsyncConnection[Any], rows: list[tuple[Any, ...]]) -> bool:
    """COPY the batch into ``positions``: True if every row went in, False (nothing went
    in) if one's key was already stored or appeared twice in the batch.

    No ``BEGIN`` / ``COMMIT`` around it: the connection is in autocommit, so the COPY is
    a transaction of its own, all rows or none, committed (its WAL flushed) before it
    returns. The two statements were two more round trips per batch: 1,233 -> 991 ns
    of client CPU per row without them (2,000-row COPYs, six interleaved runs)."""
    try:
        async with conn.cursor() as cur:
            _copy_adapters(cur)
            async with cur.copy(COPY_DIRECT) as copy:
                copy.set_types(COPY_DUMP_TYPES)
                for row in rows:
                    await copy.write_row(row)
    except psycopg.errors.UniqueViolation:
        return False
    return True


def _copy_adapters(cur: psycopg.AsyncCursor[Any]) -> None:
    """The cursor's bytea dumper by oid: psycopg's C bytes dumper (see ``JSONB_V1``)."""
    cur.adapters.register_dumper(None, BytesBinaryDumper)


async def _copy_insert(
    conn: psycopg.AsyncConnection[Any], rows: list[tuple[Any, ...]], create_staging: bool
) -> list[tuple[Any, ...]]:
    async with conn.transaction(), conn.cursor() as cur:
        if create_staging:
            await cur.execute(CREATE_STAGING)
        _copy_adapters(cur)
        async with cur.copy(COPY_STAGING) as copy:
            copy.set_types(COPY_DUMP_TYPES)
            for row in rows:
                await copy.write_row(row)
        await cur.execute(INSERT_FROM_STAGING)
        return await cur.fetchall()


__all__ = [
    "AllRows",
    "Contended",
    "FastCancelConnection",
    "PositionStore",
    "PostgresUnavailable",
    "RowsRejected",
    "copy_row",
    "position_from_row",
    "position_row",
]
