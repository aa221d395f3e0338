"""What timing produces, and the two ways it is written.

``Update`` is the live path's increment: rows that changed since the last batch, written
as upserts (a timing record only moves earlier, see ``store``). ``Replace`` is a
recomputation's answer for some entries: the complete set of their rows, written so the
table ends up holding exactly that set (stale rows deleted). Late data, restarts and the
replay tool all produce ``Replace``; that the two kinds converge to the same rows is what
``tests/domain/test_late_data.py`` checks.

The rows and both writes are frozen msgspec Structs: one is built per crossing, zone
event and result change on the live path, and a Struct is built in C, where a frozen
attrs class sets each field through ``object.__setattr__`` (``bench.domain``'s hot
path, under callgrind). ``msgspec.structs.replace`` is their ``evolve``.
"""

from __future__ import annotations

from datetime import datetime

import msgspec


class TimingRecord(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    event_id: int
    stage_id: int
    entry_id: int
    device_id: str
    geofence_id: int
    kind: str
    crossed_at: datetime
    source_ts: datetime  # the fix after the crossing

    @property
    def key(self) -> tuple[int, int]:
        return (self.entry_id, self.geofence_id)


class ZoneVisit(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    event_id: int
    entry_id: int
    geofence_id: int
    entered_at: datetime
    exited_at: datetime | None
    max_speed_kmh: float

    @property
    def key(self) -> tuple[int, int, datetime]:
        return (self.entry_id, self.geofence_id, self.entered_at)


class StageResult(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    event_id: int
    stage_id: int
    entry_id: int
    started_at: datetime
    finished_at: datetime | None
    elapsed_ms: int | None
    checkpoints_passed: int
    checkpoints_total: int
    status: str  # running | finished

    @property
    def key(self) -> tuple[int, int]:
        return (self.stage_id, self.entry_id)


class Update(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    records: tuple[TimingRecord, ...] = ()
    visits: tuple[ZoneVisit, ...] = ()
    results: tuple[StageResult, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.records or self.visits or self.results)


class Replace(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Every row of ``entry_ids``; rows of those entries not listed here are deleted.

    With ``stage_ids`` only those stages' timing records and results are in scope (zone
    visits, which belong to no stage, are then left alone). ``event_ids`` are the events of
    ``entry_ids``: the write locks them even when no row is left (see ``store``).
    """

    entry_ids: tuple[int, ...]
    event_ids: tuple[int, ...] = ()
    stage_ids: tuple[int, ...] | None = None
    records: tuple[TimingRecord, ...] = ()
    visits: tuple[ZoneVisit, ...] = ()
    results: tuple[StageResult, ...] = ()


Write = Update | Replace


def stages_of(write: Write) -> set[int]:
    """Stages whose ranking a write may change."""
    return {r.stage_id for r in write.results}


def events_of(write: Write) -> set[int]:
    """Events whose rows a write touches."""
    events = {r.event_id for r in write.records}
    events |= {v.event_id for v in write.visits}
    events |= {r.event_id for r in write.results}
    if isinstance(write, Replace):
        events |= set(write.event_ids)
    return events
