"""The timing engine of one device: fixes in time order -> crossings, clocks, zone visits.

Pure and synchronous. The live path feeds each device's new fixes as they commit; a
recomputation builds a fresh track and feeds it the stored fixes in order. Both run this
same code, which is why they agree.

Rules (``/work/shared/spec/race-domain.md``): a crossing is interpolated linearly in time
along the fix segment and kept to the millisecond; for each geofence the first crossing
counts; the start opens the entry's stage clock, a checkpoint counts only while the clock
is open, the finish closes it. A crossing outside the stage's window does not belong to
the stage. Several crossings on one segment are taken in the order they happen along it.
Only fixes inside an event's span (``starts_at``..``ends_at``) take part in its timing,
so a segment from a fix before the span to one inside it crosses nothing.
Zone visits start at the first fix inside and end at the first fix outside, keeping the
highest speed seen inside.

Everything a track remembers is in the rows it writes, plus its last fix: clocks are the
start/finish records and the count of checkpoint records of a stage (``checkpoints``
only counts those), an open visit is the zone_events row without ``exited_at``, and
whether a fix sits on a line is decided from the previous fix alone. So ``restore`` can
rebuild a track from stored rows exactly, instead of feeding every stored fix again.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import attrs
import msgspec

from processor.core.model import Position
from processor.domain.definition import EntryRef, EventCourse, RaceDefinition, Stage
from processor.domain.geofence import (
    NEIGHBOURHOOD_DEG,
    Geofence,
    Neighbourhood,
    contains,
    segment_crossing,
)
from processor.domain.results import Replace, StageResult, TimingRecord, Update, ZoneVisit

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# When one segment crosses several lines at the same instant, this is their order.
_KIND_ORDER = {"start": 0, "checkpoint": 1, "finish": 2}
_NOTHING = Update()


class Fix(msgspec.Struct, frozen=True, gc=False):
    """A valid fix, reduced to what timing needs (one per fix timed: a Struct is built
    in C, where the frozen attrs class was 12 % of the hot path in ``__init__``)."""

    ts: datetime
    t_us: int  # microseconds since the epoch: exact, cheap arithmetic
    x: float  # longitude
    y: float  # latitude
    speed: float  # km/h

    @classmethod
    def of(cls, p: Position) -> Fix:
        return cls(p.ts, (p.ts - EPOCH) // _MICROSECOND, p.longitude, p.latitude, p.speed)


def _crossing_order(c: tuple[float, int, int, int, Geofence]) -> tuple[float, int, int, int]:
    """Crossings of one segment by instant, then kind, sequence and id (ties are rare)."""
    return c[:4]


def interpolate(a: Fix, b: Fix, t: float) -> datetime:
    """The instant at fraction ``t`` of the way from ``a`` to ``b``, to the millisecond."""
    us = a.t_us + round(t * (b.t_us - a.t_us))
    return EPOCH + timedelta(milliseconds=(us + 500) // 1000)


@attrs.define
class _Clock:
    entry: EntryRef
    stage: Stage
    started: TimingRecord | None = None
    finished: TimingRecord | None = None
    checkpoints: int = 0

    def result(self) -> StageResult:
        assert self.started is not None
        finished_at = self.finished.crossed_at if self.finished else None
        elapsed = None
        if finished_at is not None:
            elapsed = (finished_at - self.started.crossed_at) // timedelta(milliseconds=1)
        return StageResult(
            event_id=self.entry.event_id,
            stage_id=self.stage.id,
            entry_id=self.entry.id,
            started_at=self.started.crossed_at,
            finished_at=finished_at,
            elapsed_ms=elapsed,
            checkpoints_passed=self.checkpoints,
            checkpoints_total=self.stage.checkpoints_total,
            status="finished" if self.finished else "running",
        )


@attrs.define
class DeviceTrack:
    """Timing state of one device for the entries it carries in loaded events."""

    device_id: str
    courses: tuple[tuple[EntryRef, EventCourse], ...]
    last: Fix | None = None
    records: dict[tuple[int, int], TimingRecord] = attrs.field(factory=dict)
    visits: dict[tuple[int, int, datetime], ZoneVisit] = attrs.field(factory=dict)
    _open: dict[tuple[int, int], ZoneVisit] = attrs.field(factory=dict)
    _clocks: dict[tuple[int, int], _Clock] = attrs.field(factory=dict)
    _dirty_records: set[tuple[int, int]] = attrs.field(factory=set)
    _dirty_visits: set[tuple[int, int, datetime]] = attrs.field(factory=set)
    _dirty_clocks: set[tuple[int, int]] = attrs.field(factory=set)
    _hoods: dict[int, Neighbourhood] = attrs.field(factory=dict)  # per course: nearby fences

    @classmethod
    def create(cls, definition: RaceDefinition, device_id: str) -> DeviceTrack:
        courses = tuple(
            (e, definition.events[e.event_id])
            for e in definition.entries_of(device_id)
            if e.event_id in definition.events
        )
        return cls(device_id, courses)

    @property
    def entry_ids(self) -> tuple[int, ...]:
        return tuple(e.id for e, _ in self.courses)

    def feed(self, fix: Fix) -> None:
        """Take the next fix; it must be newer than every fix fed before."""
        prev = self.last
        if prev is not None and fix.t_us <= prev.t_us:
            raise ValueError(f"fix at {fix.ts} is not after {prev.ts}")
        self.last = fix
        for i, (entry, course) in enumerate(self.courses):
            if not course.admits(fix.ts):
                continue
            before = prev if prev is not None and course.admits(prev.ts) else None
            near = self._near(i, course, before or fix, fix)
            crossings: list[tuple[float, int, int, int, Geofence]] = []
            zones: dict[int, Geofence] = {}
            for g in near:
                if not g.is_line:
                    zones[g.id] = g
                elif before is not None:
                    t = segment_crossing(before.x, before.y, fix.x, fix.y, g.pieces)
                    if t is not None:
                        crossings.append((t, _KIND_ORDER[g.kind], g.sequence, g.id, g))
            self._zones(entry, course, zones, fix)
            if len(crossings) > 1:
                crossings.sort(key=_crossing_order)
            for t, _, _, _, g in crossings:
                assert before is not None
                self._cross(entry, course, g, interpolate(before, fix, t), fix)

    def _near(self, i: int, course: EventCourse, a: Fix, b: Fix) -> list[Geofence]:
        hood = self._hoods.get(i)
        if hood is None or not hood.covers(a.x, a.y, b.x, b.y):
            dx, dy = b.x - a.x, b.y - a.y
            margin = max(NEIGHBOURHOOD_DEG, abs(dx) + abs(dy))
            # The box is centred ahead of the fix, in its direction of travel, so the
            # next fixes stay in it ~1.5x as long (one lookup per ~10 fixes instead of
            # ~7 at 150 km/h every 5 s); it still covers this segment, from a to b.
            step = max(abs(dx), abs(dy))
            ahead = 0.45 * margin / step if 0.0 < step <= margin / 2 else 0.0
            hood = self._hoods[i] = course.index.around(b.x + dx * ahead, b.y + dy * ahead, margin)
        return hood.near(a.x, a.y, b.x, b.y)

    def _cross(
        self, entry: EntryRef, course: EventCourse, g: Geofence, at: datetime, fix: Fix
    ) -> None:
        assert g.stage_id is not None
        stage = course.stages.get(g.stage_id)
        if stage is None or not stage.admits(at) or (entry.id, g.id) in self.records:
            return
        key = (entry.id, stage.id)
        clock = self._clocks.get(key)
        if g.kind == "start":
            if clock is not None:
                return  # the first start crossing opened the clock; later ones don't count
            clock = self._clocks[key] = _Clock(entry, stage)
        elif clock is None or clock.finished is not None:
            return  # a checkpoint or finish only counts while the clock is open
        record = TimingRecord(
            event_id=entry.event_id,
            stage_id=stage.id,
            entry_id=entry.id,
            device_id=self.device_id,
            geofence_id=g.id,
            kind=g.kind,
            crossed_at=at,
            source_ts=fix.ts,
        )
        if g.kind == "start":
            clock.started = record
        elif g.kind == "checkpoint":
            clock.checkpoints += 1
        else:
            clock.finished = record
        self.records[record.key] = record
        self._dirty_records.add(record.key)
        self._dirty_clocks.add(key)

    def _zones(
        self, entry: EntryRef, course: EventCourse, near: dict[int, Geofence], fix: Fix
    ) -> None:
        for entry_id, zone_id in list(self._open):
            if entry_id == entry.id and zone_id not in near:
                zone = course.index.get(zone_id)
                if zone is not None:
                    near[zone_id] = zone  # a zone we are in is always re-checked
        for zone in near.values():
            key = (entry.id, zone.id)
            visit: ZoneVisit | None = self._open.get(key)
            inside = contains(zone, fix.x, fix.y)
            if inside and visit is None:
                visit = ZoneVisit(
                    event_id=entry.event_id,
                    entry_id=entry.id,
                    geofence_id=zone.id,
                    entered_at=fix.ts,
                    exited_at=None,
                    max_speed_kmh=fix.speed,
                )
            elif inside and visit is not None and fix.speed > visit.max_speed_kmh:
                visit = msgspec.structs.replace(visit, max_speed_kmh=fix.speed)
            elif not inside and visit is not None:
                visit = msgspec.structs.replace(visit, exited_at=fix.ts)
            else:
                continue
            if inside:
                self._open[key] = visit
            else:
                del self._open[key]
            self.visits[visit.key] = visit
            self._dirty_visits.add(visit.key)

    def restore(
        self,
        last: Fix,
        records: Iterable[TimingRecord],
        visits: Iterable[ZoneVisit],
        results: Iterable[StageResult],
    ) -> bool:
        """Take the state that wrote these rows (this device's entries) and ``last``.

        False if the rows are not what this track, under its definition, could have
        written (then the track is unusable and the caller replays the stored fixes).
        """
        courses = {e.id: (e, c) for e, c in self.courses}
        self.last = last
        for r in sorted(records, key=lambda r: _KIND_ORDER.get(r.kind, 3)):  # starts first
            ec = courses.get(r.entry_id)
            if ec is None or r.device_id != self.device_id or r.event_id != ec[0].event_id:
                return False
            g = ec[1].index.get(r.geofence_id)
            stage = ec[1].stages.get(r.stage_id)
            if g is None or stage is None or g.kind != r.kind or g.stage_id != r.stage_id:
                return False
            key = (r.entry_id, r.stage_id)
            clock = self._clocks.get(key)
            if r.kind == "start":
                clock = self._clocks[key] = _Clock(ec[0], stage, started=r)
            elif clock is None:
                return False  # a checkpoint or finish is only ever taken while a clock runs
            elif r.kind == "checkpoint":
                clock.checkpoints += 1
            else:
                clock.finished = r
            self.records[r.key] = r
        if sorted(self.results(), key=lambda s: s.key) != sorted(results, key=lambda s: s.key):
            return False
        for v in visits:
            ec = courses.get(v.entry_id)
            if ec is None or v.event_id != ec[0].event_id or v.key in self.visits:
                return False
            zone = ec[1].index.get(v.geofence_id)
            if zone is None or zone.is_line or v.max_speed_kmh is None:
                return False
            if v.exited_at is None:
                if (v.entry_id, v.geofence_id) in self._open:
                    return False  # one visit per zone is open at a time
                self._open[(v.entry_id, v.geofence_id)] = v
            self.visits[v.key] = v
        return True

    def results(self) -> list[StageResult]:
        return [c.result() for c in self._clocks.values() if c.started is not None]

    def take_changes(self) -> Update:
        """Rows changed since the last call (the live path writes these)."""
        if not (self._dirty_records or self._dirty_visits or self._dirty_clocks):
            return _NOTHING
        update = Update(
            records=tuple(map(self.records.__getitem__, sorted(self._dirty_records))),
            visits=tuple(map(self.visits.__getitem__, sorted(self._dirty_visits))),
            results=tuple(self._clocks[k].result() for k in sorted(self._dirty_clocks)),
        )
        self._dirty_records.clear()
        self._dirty_visits.clear()
        self._dirty_clocks.clear()
        return update

    def snapshot(self) -> Replace:
        """Every row of this device's entries (a recomputation writes this)."""
        self.take_changes()
        return Replace(
            entry_ids=self.entry_ids,
            event_ids=tuple(sorted({e.event_id for e, _ in self.courses})),
            records=tuple(self.records[k] for k in sorted(self.records)),
            visits=tuple(self.visits[k] for k in sorted(self.visits)),
            results=tuple(sorted(self.results(), key=lambda r: r.key)),
        )


def replay(definition: RaceDefinition, device_id: str, fixes: list[Fix]) -> DeviceTrack:
    """A fresh track fed ``fixes`` in time order (duplicates of an instant dropped)."""
    track = DeviceTrack.create(definition, device_id)
    for fix in sorted(fixes, key=lambda f: f.t_us):
        if track.last is None or fix.t_us > track.last.t_us:
            track.feed(fix)
    return track
