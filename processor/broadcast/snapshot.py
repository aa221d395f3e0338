"""The snapshot sent on subscribe: the newest fix of every device entered in the event.

Memory first (the hub's last broadcast fix, the pipeline's hot state), PostgreSQL only
for the devices memory does not know (one indexed probe each). Memory is read again
after the query, so a fix broadcast while the query ran is in the snapshot rather than
behind it. If PostgreSQL is down the snapshot is what memory knows: a map with a few
devices missing until their next fix beats no map at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs
import structlog

from processor.broadcast import frames
from processor.broadcast.hub import Hub
from processor.broadcast.race_store import RaceStore
from processor.core.hot_state import DeviceStates
from processor.core.model import Position
from processor.core.pg_io import PostgresUnavailable


def newest(*fixes: Position | None) -> Position | None:
    best: Position | None = None
    for fix in fixes:
        if fix is not None and (best is None or fix.ts > best.ts):
            best = fix
    return best


@attrs.define
class Snapshots:
    hub: Hub
    states: DeviceStates
    store: RaceStore
    log: structlog.typing.FilteringBoundLogger

    async def build(self, event_id: str) -> tuple[list[Mapping[str, Any]], dict[str, datetime]]:
        """(``<position>`` bodies, device -> fix time) for the event's devices."""
        members = self.hub.roster.current.by_event.get(event_id, {})
        missing = [d for d in members if self._in_memory(d) is None]
        stored: dict[str, Position] = {}
        try:
            stored = {p.device_id: p for p in await self.store.newest_valid(missing)}
        except PostgresUnavailable as exc:
            self.log.warning("snapshot without stored fixes", event_id=event_id, error=str(exc))
        bodies: list[Mapping[str, Any]] = []
        floor: dict[str, datetime] = {}
        for device_id, entry_id in members.items():
            best = newest(self._in_memory(device_id), stored.get(device_id))
            if best is None:
                continue
            bodies.append(frames.position_body(best, entry_id, self.hub.attributes(best)))
            floor[device_id] = best.ts
        return bodies, floor

    def _in_memory(self, device_id: str) -> Position | None:
        state = self.states.get(device_id)
        committed = state.last_position if state is not None else None
        if committed is not None and not committed.fix_valid:
            committed = None
        return newest(self.hub.last.get(device_id), committed)
