"""PostgreSQL reads of the broadcast: who is entered where, and the newest fix per device.

Modeled on ``processor.core.pg_io``: one connection of its own (a snapshot query must
not wait behind a batch write), every call through ``bridge.call`` with a deadline, and
errors split into ``PostgresUnavailable`` (retry later) and ``RaceTablesMissing`` (a dev
database without the Directus tables: no events, not a crash). Calls are serialised by
a lock because several clients may subscribe at once and a cancelled statement throws
the connection away, which must not break a neighbour's query.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import psycopg
import psycopg.errors
import trio

from processor.core.model import Position
from processor.core.pg_io import position_from_row
from processor.core.pg_session import PgSession

# Both queries are index probes returning at most a few thousand rows.
QUERY_TIMEOUT_S = 10.0

ROSTER = """
SELECT d.imei, e.event_id::text, e.id
FROM entries AS e JOIN devices AS d ON d.id = e.device_id
"""

# The newest fix *with* a GPS fix: a no-fix record is never broadcast, so never snapshot.
NEWEST_VALID = """
SELECT p.device_id, p.ts, p.latitude, p.longitude, p.altitude, p.heading, p.speed,
       p.satellites, p.priority, p.event_io_id, p.fix_valid, p.attributes, p.received_at
FROM unnest(%b::text[]) AS d(id)
CROSS JOIN LATERAL (
    SELECT * FROM positions WHERE device_id = d.id AND fix_valid ORDER BY ts DESC LIMIT 1
) AS p
"""


class RaceTablesMissing(Exception):
    """``entries`` or ``devices`` does not exist (Directus schema not there yet)."""


@attrs.define
class RaceStore:
    url: str
    session: PgSession = attrs.field(init=False)
    # The roster keeper and snapshot queries share the one connection, one at a time.
    _lock: trio.Lock = attrs.field(factory=trio.Lock)

    def __attrs_post_init__(self) -> None:
        self.session = PgSession(self.url, "processor-broadcast", QUERY_TIMEOUT_S)

    async def roster_rows(self) -> list[tuple[str, str, int]]:
        """(imei, event id, entry id) for every entry."""
        try:
            rows = await self._fetch(ROSTER, None)
        except psycopg.errors.UndefinedTable as exc:
            raise RaceTablesMissing(str(exc).splitlines()[0]) from exc
        return [(str(imei), str(event), int(entry)) for imei, event, entry in rows]

    async def newest_valid(self, device_ids: Sequence[str]) -> list[Position]:
        if not device_ids:
            return []
        rows = await self._fetch(NEWEST_VALID, [list(device_ids)])
        return [position_from_row(r) for r in rows]

    async def aclose(self) -> None:
        await self.session.aclose()

    async def _fetch(self, query: str, params: list[Any] | None) -> list[tuple[Any, ...]]:
        async with self._lock:
            return await self.session.run(_fetch_all, query, params)


async def _fetch_all(
    conn: psycopg.AsyncConnection[Any], query: str, params: list[Any] | None
) -> list[tuple[Any, ...]]:
    async with conn.cursor() as cur:
        await cur.execute(query, params)
        return await cur.fetchall()
