"""The live path's decisions: feed a fix in order, or ask for a recomputation.

Pure. ``ingest``/``recomputed`` are the single-engine core: feed each device's new fixes
in order, or list it for a recomputation from its stored fixes (in time order). The
worker drives them through a ``TimingPass`` (``plan``), whose decisions are taken inside
the store's locked transaction against the durable ``timing_progress`` row, because with
several instances (one consumer group) each sees only part of a device's fixes.

A device is recomputed (the ``processor_domain_recomputes_total`` reasons) when
- ``cold``: it has no track yet (forgotten after a failed write);
- ``late``: a fix is older than the newest fix already fed: feeding it in arrival order
  would give a different answer than time order, so time order is rebuilt;
- ``shared``: someone else (another instance, ``processor replay``) wrote its timing since
  this engine did: the row's ``updated_at`` is not the token the engine remembers;
- ``interleaved``: more stored fixes lie between the track's last fix and the newest new
  one than the engine got: another instance committed fixes it has not timed yet;
- ``definition`` / ``catch-up``: the worker's sweeps (see ``plugin``).
Recomputation is idempotent, so an unnecessary one costs time, never correctness.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

import attrs

from processor.core.model import Position
from processor.domain.definition import RaceDefinition
from processor.domain.results import Replace, Update, Write
from processor.domain.timing import DeviceTrack, Fix, replay


@attrs.frozen
class Ingested:
    updates: list[Update]
    recompute: dict[str, str]  # device id -> reason ("cold" or "late")


Window = tuple[datetime | None, datetime | None]


@attrs.frozen
class Probe:
    """A device that may go on incrementally if ``count`` stored fixes are what it got.

    The store counts the device's valid stored fixes in ``(after, upto]`` inside
    ``[since, until]`` (open ends: ``None``); any other number means fixes of another
    instance interleave with the new ones.
    """

    device_id: str
    after: datetime | None
    upto: datetime
    since: datetime | None
    until: datetime | None
    count: int


@attrs.define
class LiveEngine:
    definition: RaceDefinition
    tracks: dict[str, DeviceTrack] = attrs.field(factory=dict)
    # Per track: the timing_progress.updated_at this engine wrote last (None: no row).
    tokens: dict[str, datetime | None] = attrs.field(factory=dict)

    def relevant(self, p: Position) -> bool:
        """Only valid fixes of devices with entries in loaded events matter to timing."""
        return p.fix_valid and p.device_id in self.definition.entries_by_device

    def reset(self, definition: RaceDefinition) -> None:
        """A new definition: every track is rebuilt (recomputed) on its next record."""
        self.definition = definition
        self.tracks.clear()
        self.tokens.clear()

    def forget(self, device_id: str) -> None:
        self.tracks.pop(device_id, None)
        self.tokens.pop(device_id, None)

    def plan(
        self,
        positions: Iterable[Position],
        force: Mapping[str, str] | None = None,
        *,
        window: Window | None = None,
        stage_id: int | None = None,
    ) -> TimingPass:
        """One unit of work: the relevant ``positions`` plus devices ``force``d to recompute
        (device id -> reason). ``window``/``stage_id`` narrow a recomputation (replay)."""
        incoming: dict[str, dict[int, Fix]] = {}
        for p in positions:
            if self.relevant(p):
                fix = Fix.of(p)
                incoming.setdefault(p.device_id, {})[fix.t_us] = fix
        return TimingPass(
            engine=self,
            incoming={d: sorted(fs.values(), key=lambda f: f.t_us) for d, fs in incoming.items()},
            force=dict(force or {}),
            window=window,
            stage_id=stage_id,
        )

    def events_of(self, device_ids: Iterable[str]) -> list[int]:
        return sorted(
            {
                e.event_id
                for d in device_ids
                for e in self.definition.entries_of(d)
                if e.event_id in self.definition.events
            }
        )

    def ingest(self, positions: Iterable[Position]) -> Ingested:
        by_device: dict[str, list[Fix]] = {}
        for p in positions:
            if self.relevant(p):
                by_device.setdefault(p.device_id, []).append(Fix.of(p))
        updates: list[Update] = []
        recompute: dict[str, str] = {}
        for device_id, fixes in by_device.items():
            track = self.tracks.get(device_id)
            if track is None:
                recompute[device_id] = "cold"
                continue
            fixes.sort(key=lambda f: f.t_us)
            if track.last is not None and fixes[0].t_us < track.last.t_us:
                recompute[device_id] = "late"
                continue
            for fix in fixes:
                if track.last is None or fix.t_us > track.last.t_us:
                    track.feed(fix)
            update = track.take_changes()
            if update:
                updates.append(update)
        return Ingested(updates, recompute)

    def window(self, device_id: str) -> tuple[datetime | None, datetime | None]:
        """The stored fixes a recomputation reads: the span of the device's events."""
        spans = [
            (
                self.definition.events[e.event_id].starts_at,
                self.definition.events[e.event_id].ends_at,
            )
            for e in self.definition.entries_of(device_id)
            if e.event_id in self.definition.events
        ]
        starts = [s for s, _ in spans]
        ends = [e for _, e in spans]
        since = None if not starts or None in starts else min(s for s in starts if s)
        until = None if not ends or None in ends else max(e for e in ends if e)
        return since, until

    def recomputed(self, device_id: str, fixes: Sequence[Fix]) -> Replace:
        """Install a track rebuilt from ``fixes`` (the stored ones); its rows replace all."""
        track = replay(self.definition, device_id, list(fixes))
        self.tracks[device_id] = track
        return track.snapshot()


def _admitted(fix: Fix, window: Window) -> bool:
    since, until = window
    return (since is None or fix.ts >= since) and (until is None or fix.ts <= until)


@attrs.define
class TimingPass:
    """The decisions of one locked timing transaction (``DomainStore.time``), in order:
    ``probes`` (given the stored progress), ``decide`` (given the counts), ``recomputed``
    for each device it returns, then ``writes`` and ``progress`` are written, and after the
    commit ``done`` installs the new tokens. On any failure the caller forgets
    ``devices``: the tracks may be half advanced, and a recomputation is always right.
    """

    engine: LiveEngine
    incoming: dict[str, list[Fix]]
    force: dict[str, str]
    window: Window | None = None
    stage_id: int | None = None
    reasons: dict[str, str] = attrs.field(factory=dict)  # device -> why it was recomputed
    _probes: dict[str, Probe] = attrs.field(factory=dict)
    _writes: list[Write] = attrs.field(factory=list)

    @property
    def devices(self) -> list[str]:
        """Every device this pass may write, in lock order."""
        return sorted(self.incoming.keys() | self.force.keys())

    @property
    def events(self) -> list[int]:
        """Every event whose rows this pass may write, in lock order."""
        return self.engine.events_of(self.devices)

    def window_of(self, device_id: str) -> Window:
        return self.window if self.window is not None else self.engine.window(device_id)

    def probes(self, progress: Mapping[str, datetime]) -> list[Probe]:
        """``progress``: the stored ``updated_at`` per device (absent: no row)."""
        engine = self.engine
        for device_id in self.devices:
            track = engine.tracks.get(device_id)
            fixes = self.incoming.get(device_id, [])
            if device_id in self.force:
                self.reasons[device_id] = self.force[device_id]
            elif track is None:
                self.reasons[device_id] = "cold"
            elif engine.tokens.get(device_id) != progress.get(device_id):
                self.reasons[device_id] = "shared"  # someone else wrote it since
            elif track.last is not None and fixes[0].t_us <= track.last.t_us:
                self.reasons[device_id] = "late"
            else:
                window = self.window_of(device_id)
                self._probes[device_id] = Probe(
                    device_id=device_id,
                    after=None if track.last is None else track.last.ts,
                    upto=fixes[-1].ts,
                    since=window[0],
                    until=window[1],
                    count=sum(1 for f in fixes if _admitted(f, window)),
                )
        return list(self._probes.values())

    def decide(self, counts: Mapping[str, int]) -> list[tuple[str, Window]]:
        """Feed the probes whose count matched; the devices (and windows) to recompute."""
        for device_id, probe in self._probes.items():
            if counts.get(device_id, 0) != probe.count:
                self.reasons[device_id] = "interleaved"
                continue
            track = self.engine.tracks[device_id]
            for fix in self.incoming[device_id]:
                track.feed(fix)
            update = track.take_changes()
            if update:
                self._writes.append(update)
        return [(d, self.window_of(d)) for d in sorted(self.reasons)]

    def recomputed(self, device_id: str, fixes: Sequence[Fix]) -> None:
        write = self.engine.recomputed(device_id, fixes)
        if self.stage_id is not None:
            write = _only_stage(write, self.stage_id)
        self._writes.append(write)

    @property
    def writes(self) -> list[Write]:
        return list(self._writes)

    def progress(self) -> list[tuple[str, datetime | None]]:
        """Per device, its track's last fix time now: what ``timing_progress`` records."""
        out: list[tuple[str, datetime | None]] = []
        for device_id in self.devices:
            track = self.engine.tracks.get(device_id)
            out.append((device_id, None if track is None or track.last is None else track.last.ts))
        return out

    def done(self, tokens: Mapping[str, datetime]) -> None:
        """After the commit: ``tokens`` are the rows' new ``updated_at``."""
        for device_id in self.devices:
            if device_id in self.engine.tracks:
                self.engine.tokens[device_id] = tokens.get(device_id)


def _only_stage(write: Replace, stage_id: int) -> Replace:
    return Replace(
        entry_ids=write.entry_ids,
        event_ids=write.event_ids,
        stage_ids=(stage_id,),
        records=tuple(r for r in write.records if r.stage_id == stage_id),
        results=tuple(r for r in write.results if r.stage_id == stage_id),
    )
