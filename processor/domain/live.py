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
- ``definition`` / ``catch-up``: the worker's sweeps (see ``plugin``);
- ``backlog``: committed fixes the worker had no room to queue, or that came while the
  writer drained a backlog (``commits.Commits``).
Recomputation is idempotent, so an unnecessary one costs time, never correctness.

A ``cold``, ``shared`` or ``interleaved`` device is ``rebuilt`` instead (the reason
counted then) when its stored rows say exactly what a full recomputation would start
from: the device has a ``timing_progress`` row written under this very definition
(``Mark.definition``), and no new fix is at or before its ``last_ts``. The track is then
restored from the rows of its entries and the fix at ``last_ts`` (``DeviceTrack.restore``)
and fed the stored fixes after it up to the newest new one: a read bounded by the chunk
(and other instances' untimed fixes), not by the device's history. New fixes at or before
``last_ts`` are not late if the row's ``timed`` equals the count of stored fixes up to
``last_ts``: then whoever wrote it read them (another instance's pass fed them with its
own), and the rebuild only feeds what follows. The worker's sweeps (``definition`` at
start or after a reload, ``catch-up``) may meet stored fixes nobody timed, also before
``last_ts`` (a crash between commit and timing): they rebuild only when ``timed`` equals
the count of stored fixes up to ``last_ts``, and then feed every stored fix after it. So
a restart with an unchanged definition restores each device from its rows instead of
replaying its whole race. A late fix (one not reflected), a sweep that finds a fix
untimed before ``last_ts``, a changed definition (the rows' mark differs), the replay
tool's narrowed passes, and rows that do not fit the definition replay everything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

import attrs

from processor.core.model import Position
from processor.domain.definition import RaceDefinition
from processor.domain.results import Replace, StageResult, TimingRecord, Update, Write, ZoneVisit
from processor.domain.timing import DeviceTrack, Fix, replay

# The reasons a recomputation may be a rebuild from stored rows (see the module docstring).
REBUILDABLE = frozenset({"cold", "shared", "interleaved"})
# The worker's sweeps: rebuilt too, but only once the row's ``timed`` count shows that no
# stored fix up to its ``last_ts`` went untimed.
SWEEPS = frozenset({"definition", "catch-up", "backlog"})


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


@attrs.frozen
class Mark:
    """A device's ``timing_progress`` row as a pass reads it."""

    token: datetime  # updated_at
    last_ts: datetime
    definition: str | None  # the fingerprint of the definition its rows follow
    timed: int | None = None  # how many stored fixes (valid, in window, <= last_ts) they reflect


@attrs.frozen
class Rebuild:
    """A device to restore from its stored rows: the store reads, for ``entry_ids``, their
    timing_records, zone_events and stage_results, the valid stored fix at ``after`` and
    the valid ones in ``(after, upto]`` inside ``[since, until]`` (``None``: open)."""

    device_id: str
    entry_ids: tuple[int, ...]
    after: datetime
    upto: datetime | None
    since: datetime | None
    until: datetime | None


@attrs.frozen
class StoredRows:
    """The rows of one device's entries, as the store read them."""

    records: Sequence[TimingRecord] = ()
    visits: Sequence[ZoneVisit] = ()
    results: Sequence[StageResult] = ()


@attrs.define
class LiveEngine:
    definition: RaceDefinition
    tracks: dict[str, DeviceTrack] = attrs.field(factory=dict)
    # Per track: the timing_progress.updated_at this engine wrote last (None: no row).
    tokens: dict[str, datetime | None] = attrs.field(factory=dict)
    # Per track: the commit sequence number (``plugin.Fixes.seq``) up to which every
    # committed fix was read by a full replay of the device, so queued chunks numbered up
    # to it carry nothing new for it. Without this a replay that read ahead of the queue
    # made every queued chunk look late, and each one cost a rebuild or another replay.
    covered: dict[str, int] = attrs.field(factory=dict)

    def _relevant_fixes(self, positions: Iterable[Position]) -> dict[str, list[Fix]]:
        """Per device, in arrival order, the fixes that matter to timing: valid fixes of
        devices with entries in loaded events (tested inline: it runs once per fix)."""
        by_device: dict[str, list[Fix]] = {}
        entered = self.definition.entries_by_device
        for p in positions:
            if p.fix_valid and p.device_id in entered:
                fixes = by_device.get(p.device_id)
                if fixes is None:
                    by_device[p.device_id] = [Fix.of(p)]
                else:
                    fixes.append(Fix.of(p))
        return by_device

    def reset(self, definition: RaceDefinition) -> None:
        """A new definition: every track is rebuilt (recomputed) on its next record."""
        self.definition = definition
        self.tracks.clear()
        self.tokens.clear()
        self.covered.clear()

    def forget(self, device_id: str) -> None:
        self.tracks.pop(device_id, None)
        self.tokens.pop(device_id, None)
        self.covered.pop(device_id, None)

    def uncovered(self, seq: int, positions: Iterable[Position]) -> list[Position]:
        """The positions of a chunk numbered ``seq`` not already read by a full replay."""
        covered = self.covered
        return [p for p in positions if seq > covered.get(p.device_id, 0)]

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
        incoming = {  # one fix per instant: the last delivered
            d: sorted({f.t_us: f for f in fixes}.values(), key=_fix_time)
            for d, fixes in self._relevant_fixes(positions).items()
        }
        return TimingPass(
            engine=self,
            incoming=incoming,
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
        updates: list[Update] = []
        recompute: dict[str, str] = {}
        for device_id, fixes in self._relevant_fixes(positions).items():
            track = self.tracks.get(device_id)
            if track is None:
                recompute[device_id] = "cold"
                continue
            if len(fixes) > 1:
                fixes.sort(key=_fix_time)
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


def _fix_time(fix: Fix) -> int:
    return fix.t_us


def _admitted(fix: Fix, window: Window) -> bool:
    since, until = window
    return (since is None or fix.ts >= since) and (until is None or fix.ts <= until)


@attrs.define
class TimingPass:
    """The decisions of one locked timing transaction (``DomainStore.time``), in order:
    ``probes`` (given the stored progress), ``decide`` (given the counts), ``rebuilt`` for
    each of ``rebuilds`` (given their stored rows), ``recomputed`` for each device
    ``decide`` returns and each rebuild that failed, then ``writes``, ``progress`` and
    ``timed`` are written, and after the commit ``done`` installs the new tokens. On any
    failure the caller forgets
    ``devices``: the tracks may be half advanced, and a recomputation is always right.
    """

    engine: LiveEngine
    incoming: dict[str, list[Fix]]
    force: dict[str, str]
    window: Window | None = None
    stage_id: int | None = None
    reasons: dict[str, str] = attrs.field(factory=dict)  # device -> why it was recomputed
    fixes_read: int = 0  # stored fixes handed to ``recomputed``/``rebuilt`` (a cost gauge)
    # Devices rebuilt from every stored fix of their window: what they read covers every
    # fix committed before the pass began (``LiveEngine.covered``).
    replayed: set[str] = attrs.field(factory=set)
    _probes: dict[str, Probe] = attrs.field(factory=dict)
    _marks: dict[str, Mark] = attrs.field(factory=dict)
    _covers: dict[str, Probe] = attrs.field(factory=dict)
    _counts: dict[str, int] = attrs.field(factory=dict)
    _rebuilds: dict[str, Rebuild] = attrs.field(factory=dict)
    _timed: dict[str, int | None] = attrs.field(factory=dict)
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

    @property
    def definition_mark(self) -> str | None:
        """What ``timing_progress.definition`` records: the definition whose rows this
        pass leaves complete, or None when it narrowed them (replay with a window)."""
        if self.window is not None or self.stage_id is not None:
            return None
        return self.engine.definition.fingerprint or None

    def probes(
        self, progress: Mapping[str, datetime], marks: Mapping[str, Mark] | None = None
    ) -> list[Probe]:
        """``progress``: the stored ``updated_at`` per device (absent: no row); ``marks``:
        the whole rows, for a store that can serve ``rebuilds`` (else none are asked)."""
        engine = self.engine
        self._marks = dict(marks or {})
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
        for device_id, reason in self.reasons.items():
            cover = self._cover(device_id, reason)
            if cover is not None:
                self._covers[device_id] = cover
        return [*self._probes.values(), *self._covers.values()]

    def _cover(self, device_id: str, reason: str) -> Probe | None:
        """For new fixes at or before the row's ``last_ts``: a count that tells whether the
        rows already reflect every stored fix up to it (then those fixes were timed by
        whoever read them, e.g. another instance's pass that fed its own and these)."""
        mark = self._marks.get(device_id)
        if mark is None or mark.timed is None or not self._valid(mark):
            return None
        fixes = self.incoming.get(device_id, [])
        if reason not in SWEEPS and (
            reason not in REBUILDABLE | {"late"} or not fixes or fixes[0].ts > mark.last_ts
        ):
            return None
        since, until = self.window_of(device_id)
        return Probe(device_id, None, mark.last_ts, since, until, mark.timed)

    def _valid(self, mark: Mark) -> bool:
        return mark.definition is not None and mark.definition == self.definition_mark

    def decide(self, counts: Mapping[str, int]) -> list[tuple[str, Window]]:
        """Feed the probes whose count matched; the devices (and windows) to recompute
        from every stored fix (the others, ``rebuilds``, are restored from their rows)."""
        self._counts = dict(counts)
        for device_id, probe in self._probes.items():
            if counts.get(device_id, 0) != probe.count:
                self.reasons[device_id] = "interleaved"
                continue
            mark = self._marks.get(device_id)
            if mark is not None and mark.timed is not None:
                self._timed[device_id] = mark.timed + probe.count
            track = self.engine.tracks[device_id]
            for fix in self.incoming[device_id]:
                track.feed(fix)
            update = track.take_changes()
            if update:
                self._writes.append(update)
        full: list[tuple[str, Window]] = []
        for device_id in sorted(self.reasons):
            rebuild = self._rebuild(device_id)
            if rebuild is None:
                full.append((device_id, self.window_of(device_id)))
            else:
                self._rebuilds[device_id] = rebuild
        return full

    def _rebuild(self, device_id: str) -> Rebuild | None:
        mark = self._marks.get(device_id)
        cover = self._covers.get(device_id)
        fixes = self.incoming.get(device_id, [])
        if mark is None or not self._valid(mark):
            return None
        if self.reasons[device_id] in SWEEPS or (fixes and fixes[0].ts <= mark.last_ts):
            # Only if the rows already reflect every stored fix up to last_ts.
            if cover is None or self._counts.get(device_id) != cover.count:
                return None
        elif self.reasons[device_id] not in REBUILDABLE:
            return None
        since, until = self.window_of(device_id)
        entry_ids = tuple(
            e.id
            for e in self.engine.definition.entries_of(device_id)
            if e.event_id in self.engine.definition.events
        )
        upto = fixes[-1].ts if fixes else None
        return Rebuild(device_id, entry_ids, mark.last_ts, upto, since, until)

    def rebuilds(self) -> list[Rebuild]:
        """After ``decide``: the devices to restore from stored rows (``rebuilt``)."""
        return [self._rebuilds[d] for d in sorted(self._rebuilds)]

    def rebuilt(
        self, device_id: str, last: Fix | None, rows: StoredRows, fixes: Sequence[Fix]
    ) -> bool:
        """Restore ``device_id`` from ``rows`` and ``last`` (the stored fix at the mark's
        ``last_ts``; None: not stored) and feed it ``fixes``; False if the rows do not
        fit, and then the caller recomputes it (``recomputed``) from all stored fixes."""
        self.fixes_read += len(fixes) + (last is not None)
        if last is None:
            return False
        track = DeviceTrack.create(self.engine.definition, device_id)
        if not track.restore(last, rows.records, rows.visits, rows.results):
            return False
        fed = 0
        for fix in sorted(fixes, key=lambda f: f.t_us):
            assert track.last is not None
            if fix.t_us > track.last.t_us:
                track.feed(fix)
                fed += 1
        mark = self._marks[device_id]
        self._timed[device_id] = None if mark.timed is None else mark.timed + fed
        if self._rebuilds[device_id].upto is None:
            # A sweep's rebuild read every stored fix after last_ts, and the rows cover
            # the rest: like a replay (rebuilds only run in passes not narrowed to a window),
            # it saw every fix committed before the pass.
            self.replayed.add(device_id)
        self.engine.tracks[device_id] = track
        self.reasons[device_id] = "rebuilt"
        update = track.take_changes()
        if update:
            self._writes.append(update)
        return True

    def recomputed(self, device_id: str, fixes: Sequence[Fix]) -> None:
        self.fixes_read += len(fixes)
        if self.window is None and self.stage_id is None:
            self.replayed.add(device_id)
        self._timed[device_id] = len({f.t_us for f in fixes})
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

    def timed(self, device_id: str) -> int | None:
        """What ``timing_progress.timed`` records (None: unknown, no late fix is skipped)."""
        return self._timed.get(device_id)

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
