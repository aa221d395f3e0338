"""Which devices are entered in which events (``entries`` joined to ``devices``).

The reader asks "which events does this device's fix go to" for every record, so the
map is an in-memory dict swapped whole on each refresh (every ``WS_ENTRIES_REFRESH_S``):
readers never see half a refresh, and a change in Directus shows up without a restart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs
import structlog
import trio

from processor.broadcast.race_store import RaceStore, RaceTablesMissing
from processor.core.pg_io import PostgresUnavailable


@attrs.frozen
class Roster:
    # imei -> ((event id, entry id), ...)
    by_device: Mapping[str, tuple[tuple[str, int], ...]] = attrs.field(factory=dict)
    # event id -> {imei: entry id}
    by_event: Mapping[str, Mapping[str, int]] = attrs.field(factory=dict)

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, str, int]]) -> Roster:
        by_device: dict[str, list[tuple[str, int]]] = {}
        by_event: dict[str, dict[str, int]] = {}
        for imei, event_id, entry_id in rows:
            by_device.setdefault(imei, []).append((event_id, entry_id))
            by_event.setdefault(event_id, {})[imei] = entry_id
        return cls({d: tuple(e) for d, e in by_device.items()}, by_event)


@attrs.define
class RosterKeeper:
    """Holds the current ``Roster`` and reloads it on an interval."""

    store: RaceStore
    interval_s: float
    log: structlog.typing.FilteringBoundLogger
    current: Roster = attrs.field(factory=Roster)
    _missing_logged: bool = False

    async def refresh(self) -> None:
        """Reload once; keeps the previous roster when PostgreSQL is unavailable."""
        try:
            rows = await self.store.roster_rows()
        except RaceTablesMissing as exc:
            if not self._missing_logged:
                self.log.warning("race tables missing: no events to broadcast", error=str(exc))
                self._missing_logged = True
            self.current = Roster()
            return
        except PostgresUnavailable as exc:
            self.log.warning("roster refresh failed; keeping the previous one", error=str(exc))
            return
        self._missing_logged = False
        self.current = Roster.from_rows(rows)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load once before ``started()`` (clients subscribe against it), then refresh."""
        await self.refresh()
        task_status.started()
        while True:
            await trio.sleep(self.interval_s)
            await self.refresh()
