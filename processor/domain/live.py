"""The live path's decisions: feed a fix in order, or ask for a recomputation.

Pure: the plug-in's worker owns an engine, gives it each committed batch, writes the
``Update`` it returns, and for every device listed in ``recompute`` reads that device's
stored fixes (in time order) and hands them to ``recomputed``, writing the ``Replace``.

A device is recomputed when
- it has no track yet (first record since start or since a definition change): this is
  the rehydration, and it also covers fixes committed before a crash but never timed;
- a fix is older than the newest fix already fed (late data): feeding it in arrival
  order would give a different answer than time order, so time order is rebuilt.
Recomputation is idempotent, so an unnecessary one costs time, never correctness.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

import attrs

from processor.core.model import Position
from processor.domain.definition import RaceDefinition
from processor.domain.results import Replace, Update
from processor.domain.timing import DeviceTrack, Fix, replay


@attrs.frozen
class Ingested:
    updates: list[Update]
    recompute: dict[str, str]  # device id -> reason ("cold" or "late")


@attrs.define
class LiveEngine:
    definition: RaceDefinition
    tracks: dict[str, DeviceTrack] = attrs.field(factory=dict)

    def relevant(self, p: Position) -> bool:
        """Only valid fixes of devices with entries in loaded events matter to timing."""
        return p.fix_valid and p.device_id in self.definition.entries_by_device

    def reset(self, definition: RaceDefinition) -> None:
        """A new definition: every track is rebuilt (recomputed) on its next record."""
        self.definition = definition
        self.tracks.clear()

    def forget(self, device_id: str) -> None:
        self.tracks.pop(device_id, None)

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
