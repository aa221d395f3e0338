"""An in-memory model of ``DomainStore.apply``'s SQL semantics, for pure-level tests.

Mirrors the upsert and delete rules of ``processor.domain.store`` (which the integration
test runs against PostgreSQL), so the late-data property can be checked fast and often.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import attrs

from processor.core.model import Position
from processor.domain.live import Mark, Probe, Rebuild, StoredRows, TimingPass
from processor.domain.results import Replace, StageResult, TimingRecord, Write, ZoneVisit
from processor.domain.timing import EPOCH, Fix
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


@attrs.define
class ModelProgress:
    """``DomainStore.time`` in memory: ``timing_progress`` rows, counts, recompute reads.

    Passes run one at a time here, as the device locks make them run in PostgreSQL.
    """

    store: ModelStore
    stored: dict[str, list[Fix]]  # the positions table: every committed valid fix
    rows: dict[str, tuple[datetime, datetime]] = attrs.field(factory=dict)  # last_ts, token
    # The timing_progress columns ``definition`` and ``timed``.
    marks: dict[str, tuple[str | None, int | None]] = attrs.field(factory=dict)
    clock: int = 0
    rebuilds: int = 0  # devices a pass restored from the rows (``TimingPass.rebuilt``)

    def run(self, work: TimingPass) -> None:
        marks = {
            d: Mark(self.rows[d][1], self.rows[d][0], *self.marks.get(d, (None, None)))
            for d in work.devices
            if d in self.rows
        }
        probes = work.probes({d: m.token for d, m in marks.items()}, marks)
        counts = {p.device_id: len(self._between(p)) for p in probes}
        full = work.decide(counts)
        for r in work.rebuilds():
            if work.rebuilt(r.device_id, *self._rebuild_reads(r)):
                self.rebuilds += 1
            else:
                full.append((r.device_id, work.window_of(r.device_id)))
        for device_id, (since, until) in full:
            work.recomputed(device_id, stored_in(self.stored.get(device_id, []), since, until))
        for write in work.writes:
            self.store.apply(write)
        tokens: dict[str, datetime] = {}
        for device_id, last in work.progress():
            if last is None and device_id not in self.rows:
                continue
            self.clock += 1
            token = EPOCH + timedelta(microseconds=self.clock)
            self.rows[device_id] = (last or self.rows[device_id][0], token)
            self.marks[device_id] = (
                (work.definition_mark, work.timed(device_id)) if last is not None else (None, None)
            )
            tokens[device_id] = token
        work.done(tokens)

    def behind(self, windows: dict[str, tuple[datetime | None, datetime | None]]) -> list[str]:
        """``DomainStore.behind``: devices with a stored fix in window newer than progress."""
        out = []
        for device_id, (since, until) in sorted(windows.items()):
            last = self.rows.get(device_id, (None, None))[0]
            fixes = stored_in(self.stored.get(device_id, []), since, until)
            if fixes and (last is None or fixes[-1].ts > last):
                out.append(device_id)
        return out

    def _rebuild_reads(self, r: Rebuild) -> tuple[Fix | None, StoredRows, list[Fix]]:
        """``store._rebuild``: the fix at the mark, the entries' rows, the fixes after."""
        fixes = self.stored.get(r.device_id, [])
        last = next((f for f in fixes if f.ts == r.after), None)
        entries = set(r.entry_ids)
        rows = StoredRows(
            records=[v for k, v in self.store.records.items() if k[0] in entries],
            visits=[v for k, v in self.store.visits.items() if k[0] in entries],
            results=[v for k, v in self.store.results.items() if k[1] in entries],
        )
        after = [
            f
            for f in stored_in(fixes, r.since, r.until)
            if f.ts > r.after and (r.upto is None or f.ts <= r.upto)
        ]
        return last, rows, after

    def _between(self, p: Probe) -> list[Fix]:
        return [
            f
            for f in stored_in(self.stored.get(p.device_id, []), p.since, p.until)
            if (p.after is None or f.ts > p.after) and f.ts <= p.upto
        ]


def stored_in(fixes: list[Fix], since: datetime | None, until: datetime | None) -> list[Fix]:
    """``DomainStore.fixes``: the stored fixes in ``[since, until]``, in time order."""
    return sorted(
        (f for f in fixes if (since is None or f.ts >= since) and (until is None or f.ts <= until)),
        key=lambda f: f.t_us,
    )
