"""The race definition: Directus rows -> one immutable snapshot the hot path reads.

``build_definition`` is pure: the store fetches ``RawRows``, this turns them into typed,
validated objects and lists the rows it had to reject (bad geometry, bad mapping, line
geofence without a stage...). A rejected row is skipped, never fatal: one typo in
Directus must not stop timing for everybody. The snapshot is replaced as a whole on
refresh, so readers never see half an update.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs

from processor.domain.geofence import Geofence, GeofenceIndex, GeometryError, parse_geometry
from processor.domain.io_mapping import InvalidMapping, IoMapping, IoMappings, IoRule

Row = Mapping[str, Any]


@attrs.frozen(kw_only=True)
class RawRows:
    """The Directus rows one load read, table by table (dicts keyed by column)."""

    events: Sequence[Row] = ()
    devices: Sequence[Row] = ()
    entries: Sequence[Row] = ()  # with the device's imei joined in as ``imei``
    stages: Sequence[Row] = ()
    geofences: Sequence[Row] = ()
    io_mappings: Sequence[Row] = ()

    def fingerprint(self) -> str:
        """Changes iff a row changed: a refresh with the same fingerprint is a no-op."""
        digest = hashlib.sha256()
        for table in (
            self.events,
            self.devices,
            self.entries,
            self.stages,
            self.geofences,
            self.io_mappings,
        ):
            for row in sorted(repr(sorted(r.items())) for r in table):
                digest.update(row.encode())
            digest.update(b"\x00")
        return digest.hexdigest()


@attrs.frozen(kw_only=True)
class Rejected:
    table: str
    id: Any
    reason: str


@attrs.frozen(kw_only=True)
class Stage:
    id: int
    event_id: int
    name: str
    sequence: int
    opens_at: datetime | None
    closes_at: datetime | None
    checkpoints_total: int = 0

    def admits(self, moment: datetime) -> bool:
        """A crossing at ``moment`` belongs to this stage's window (open ends admit all)."""
        if self.opens_at is not None and moment < self.opens_at:
            return False
        return self.closes_at is None or moment <= self.closes_at


@attrs.frozen(kw_only=True)
class EntryRef:
    id: int
    event_id: int
    device_id: str  # the imei, as in the stream
    number: str | None = None


@attrs.frozen(kw_only=True, eq=False)
class EventCourse:
    """One event: its stages, geofences and their spatial index."""

    id: int
    name: str
    starts_at: datetime | None
    ends_at: datetime | None
    stages: Mapping[int, Stage]
    index: GeofenceIndex

    def admits(self, moment: datetime) -> bool:
        """A fix at ``moment`` is inside the event's span (open ends admit all).

        Timing sees only these fixes, live and in a recomputation alike: the stored fixes
        a recomputation reads are bounded by the same span (``LiveEngine.window``), so a
        fix the live path fed from outside it would make the two disagree.
        """
        if self.starts_at is not None and moment < self.starts_at:
            return False
        return self.ends_at is None or moment <= self.ends_at


@attrs.frozen(kw_only=True, eq=False)
class RaceDefinition:
    events: Mapping[int, EventCourse] = attrs.field(factory=dict)
    entries_by_device: Mapping[str, tuple[EntryRef, ...]] = attrs.field(factory=dict)
    models: Mapping[str, str] = attrs.field(factory=dict)  # imei -> device model
    io: IoMappings = attrs.field(factory=IoMappings)
    fingerprint: str = ""

    def entries_of(self, device_id: str) -> tuple[EntryRef, ...]:
        return self.entries_by_device.get(device_id, ())

    def mapping_of(self, device_id: str) -> IoMapping:
        """The IO mapping of the device's model (the defaults for an unknown device)."""
        return self.io.for_model(self.models.get(device_id))


EMPTY = RaceDefinition()


@attrs.frozen
class Built:
    definition: RaceDefinition
    rejected: list[Rejected]


def build_definition(raw: RawRows) -> Built:
    """Validate and assemble ``raw``; bad rows are listed in ``rejected`` and left out."""
    rejected: list[Rejected] = []
    io = _io_mappings(raw.io_mappings, rejected)
    models = {str(r["imei"]): str(r["model"]) for r in raw.devices if r.get("model")}
    events = {int(r["id"]): r for r in raw.events}
    stages: dict[int, Stage] = {}
    for r in raw.stages:
        if r["event_id"] not in events:
            continue
        stages[int(r["id"])] = Stage(
            id=int(r["id"]),
            event_id=int(r["event_id"]),
            name=str(r["name"]),
            sequence=int(r["sequence"]),
            opens_at=r.get("opens_at"),
            closes_at=r.get("closes_at"),
        )
    geofences = _geofences(raw.geofences, events, stages, rejected)
    for stage_id, stage in list(stages.items()):
        total = sum(1 for g in geofences if g.stage_id == stage_id and g.kind == "checkpoint")
        stages[stage_id] = attrs.evolve(stage, checkpoints_total=total)
    courses = {
        event_id: EventCourse(
            id=event_id,
            name=str(row["name"]),
            starts_at=row.get("starts_at"),
            ends_at=row.get("ends_at"),
            stages={s.id: s for s in stages.values() if s.event_id == event_id},
            index=GeofenceIndex(tuple(g for g in geofences if g.event_id == event_id)),
        )
        for event_id, row in events.items()
    }
    by_device: dict[str, list[EntryRef]] = {}
    for r in raw.entries:
        if r["event_id"] not in courses:
            continue
        entry = EntryRef(
            id=int(r["id"]),
            event_id=int(r["event_id"]),
            device_id=str(r["imei"]),
            number=r.get("number"),
        )
        by_device.setdefault(entry.device_id, []).append(entry)
    definition = RaceDefinition(
        events=courses,
        entries_by_device={d: tuple(sorted(e, key=lambda e: e.id)) for d, e in by_device.items()},
        models=models,
        io=io,
        fingerprint=raw.fingerprint(),
    )
    return Built(definition, rejected)


def _io_mappings(rows: Sequence[Row], rejected: list[Rejected]) -> IoMappings:
    rules: list[tuple[str, IoRule]] = []
    for r in rows:
        try:
            model = r.get("model")
            if type(model) is not str or not model.strip():
                raise InvalidMapping(f"model {model!r} is empty")
            rule = IoRule.checked(r.get("io_id"), r.get("name"), r.get("scale"), r.get("kind"))
        except InvalidMapping as exc:
            rejected.append(Rejected(table="io_mappings", id=r.get("id"), reason=str(exc)))
            continue
        rules.append((model.strip(), rule))
    return IoMappings.from_rules(rules)


def _geofences(
    rows: Sequence[Row],
    events: Mapping[int, Row],
    stages: Mapping[int, Stage],
    rejected: list[Rejected],
) -> list[Geofence]:
    out: list[Geofence] = []
    for r in sorted(rows, key=lambda r: (r["sequence"], r["id"])):
        if r["event_id"] not in events:
            continue
        kind = str(r["kind"])
        stage_id = r.get("stage_id")
        try:
            if kind != "zone" and stage_id is None:
                raise GeometryError(f"a {kind} line needs a stage")
            if stage_id is not None and stages.get(stage_id, None) is None:
                raise GeometryError(f"stage {stage_id} is not a stage of event {r['event_id']}")
            if stage_id is not None and stages[stage_id].event_id != r["event_id"]:
                raise GeometryError(f"stage {stage_id} belongs to another event")
            shape, pieces = parse_geometry(kind, r["geometry"])
        except GeometryError as exc:
            rejected.append(Rejected(table="geofences", id=r.get("id"), reason=str(exc)))
            continue
        limit = r.get("speed_limit_kmh")
        out.append(
            Geofence(
                id=int(r["id"]),
                event_id=int(r["event_id"]),
                stage_id=stage_id,
                kind=kind,
                name=str(r.get("name") or ""),
                sequence=int(r["sequence"]),
                speed_limit_kmh=None if limit is None else float(limit),
                shape=shape,
                pieces=pieces,
            )
        )
    return out
