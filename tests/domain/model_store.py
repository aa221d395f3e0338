"""An in-memory model of ``DomainStore.apply``'s SQL semantics, for pure-level tests.

Mirrors the upsert and delete rules of ``processor.domain.store`` (which the integration
test runs against PostgreSQL), so the late-data property can be checked fast and often.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs

from processor.core.model import Position
from processor.domain.results import Replace, StageResult, TimingRecord, Write, ZoneVisit
from processor.domain.timing import Fix
from tests.helpers import make_position


@attrs.define
class ModelStore:
    records: dict[tuple[int, int], TimingRecord] = attrs.field(factory=dict)
    visits: dict[tuple[int, int, datetime], ZoneVisit] = attrs.field(factory=dict)
    results: dict[tuple[int, int], StageResult] = attrs.field(factory=dict)

    def apply(self, write: Write) -> None:
        if isinstance(write, Replace):
            entries = set(write.entry_ids)
            keep_r = {r.key for r in write.records}
            keep_v = {v.key for v in write.visits}
            keep_s = {s.key for s in write.results}
            self.records = {
                k: v for k, v in self.records.items() if k[0] not in entries or k in keep_r
            }
            self.visits = {
                k: v for k, v in self.visits.items() if k[0] not in entries or k in keep_v
            }
            self.results = {
                k: v for k, v in self.results.items() if k[1] not in entries or k in keep_s
            }
            self.records.update((r.key, r) for r in write.records)
        else:
            for r in write.records:
                old = self.records.get(r.key)
                if old is None or r.crossed_at < old.crossed_at:
                    self.records[r.key] = r
        self.visits.update((v.key, v) for v in write.visits)
        self.results.update((s.key, s) for s in write.results)

    def rows(self) -> dict[str, Any]:
        return {"records": self.records, "visits": self.visits, "results": self.results}


def position_of(device_id: str, f: Fix) -> Position:
    return make_position(device_id, ts=f.ts, longitude=f.x, latitude=f.y, speed=f.speed)
