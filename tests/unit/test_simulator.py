"""The rally simulator's records, checked without Redis: the generator is pure and seeded.

What matters is that the processor is fed what the contract and the race domain say real
trackers send: every valid record decodes, every poison one is rejected with the kind it
was meant to have, cars move at possible speeds, late data is late and out of order, and
one seed always gives the same records.
"""

from __future__ import annotations

import argparse
import collections
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest

from processor.core.codec import decode
from processor.core.errors import PoisonRecord
from processor.core.model import Position
from processor.simulator import command, geo
from processor.simulator.devices import BOGUS_ODOMETER_EVERY
from processor.simulator.generator import Plan, SimRecord, generate
from processor.simulator.publisher import Summary, TokenBucket, publish
from processor.simulator.routes import (
    BUNDLED_TRACKS,
    Route,
    RouteError,
    build_routes,
    load_gpx,
)
from processor.simulator.tracker import Timing

START = datetime(2026, 5, 12, 9, 0, 0, tzinfo=UTC)
TOLERANCE_S = 600.0
# Which DLQ kind each poison variant is meant to produce.
EXPECTED_KIND = {
    "malformed_json": "malformed_payload",
    "bad_device_id": "invalid_field",
    "latitude_out_of_range": "invalid_field",
    "unknown_version": "unknown_version",
    "bad_bigint": "invalid_attribute",
    "bad_buffer": "invalid_attribute",
    "future_timestamp": "future_timestamp",
    "missing_field": "missing_field",
}


@cache
def routes() -> tuple[Route, ...]:
    return tuple(build_routes("mixed", seed=1))


def plan(**overrides: Any) -> Plan:
    values: dict[str, Any] = {"routes": routes(), "devices": 10, "seed": 42}
    values.update(overrides)
    return Plan(**values)


def records(n: int, start: datetime = START, **overrides: Any) -> list[SimRecord]:
    return list(itertools.islice(generate(plan(**overrides), start), n))


def decoded(recs: list[SimRecord]) -> Iterator[tuple[SimRecord, Position]]:
    for rec in recs:
        if rec.kind == "valid":
            yield rec, decode(rec.fields, now=rec.received, future_tolerance_s=TOLERANCE_S)


def payload(rec: SimRecord) -> dict[str, Any]:
    obj: dict[str, Any] = orjson.loads(rec.fields[b"payload"])
    return obj


# --- the contract -------------------------------------------------------------------


def test_every_valid_record_decodes_and_every_poison_record_is_rejected_as_meant() -> None:
    recs = records(6_000, poison_ratio=0.1)
    seen: collections.Counter[str] = collections.Counter()
    for rec in recs:
        if rec.kind == "valid":
            position = decode(rec.fields, now=rec.received, future_tolerance_s=TOLERANCE_S)
            assert position.device_id == rec.device_id
            assert position.received_at is not None
            assert position.ts <= position.received_at
            continue
        assert rec.variant is not None
        with pytest.raises(PoisonRecord) as info:
            decode(rec.fields, now=rec.received, future_tolerance_s=TOLERANCE_S)
        assert info.value.kind == EXPECTED_KIND[rec.variant], rec.variant
        seen[info.value.kind] += 1
    assert set(seen) == set(EXPECTED_KIND.values())
    assert 0.08 < sum(seen.values()) / len(recs) < 0.12


def test_no_poison_by_default() -> None:
    assert {rec.kind for rec in records(2_000)} == {"valid"}


def test_io_bag_carries_bigints_and_buffers_like_real_teltonika_units() -> None:
    recs = records(4_000, devices=BOGUS_ODOMETER_EVERY * 2)
    buffers = bogus_odometers = 0
    for rec, position in decoded(recs):
        raw = payload(rec)["attributes"]
        attrs = position.attributes
        assert {"239", "240", "21", "66", "67", "16", "11"} <= attrs.keys()
        assert attrs["239"] in (0, 1)
        assert attrs["240"] in (0, 1)
        assert 0 <= int(attrs["21"]) <= 5
        assert 12_000 <= int(attrs["66"]) <= 14_500  # millivolts
        assert 3_700 <= int(attrs["67"]) <= 4_200
        # The ICCID is beyond 2^53: it must travel as the __bigint sentinel, exactly.
        assert raw["11"] == {"__bigint": str(attrs["11"])}
        assert int(attrs["11"]) > 2**53
        if int(attrs["16"]) > 2**53:
            bogus_odometers += 1
            assert raw["16"] == {"__bigint": str(attrs["16"])}
        if "385" in attrs:
            buffers += 1
            assert position.codec == "8E"  # NX elements exist in Codec 8E only
            assert isinstance(attrs["385"], bytes)
            assert attrs["385"][0] == 0x11
            assert set(raw["385"]) == {"__buffer_b64"}
        if position.codec == "8":
            assert all(int(key) <= 255 for key in attrs)  # Codec 8 IO ids are one byte
    assert buffers > 100
    assert bogus_odometers > 100


def test_devices_have_distinct_valid_imeis() -> None:
    ids = {rec.device_id for rec in records(3_000, devices=40)}
    assert len(ids) == 40
    for imei in ids:
        assert len(imei) == 15
        assert imei.isdigit()
        digits = [int(c) for c in imei]
        total = sum(
            d if i % 2 == 0 else (d * 2 - 9 if d * 2 > 9 else d * 2) for i, d in enumerate(digits)
        )
        assert total % 10 == 0, f"{imei} fails the Luhn check"


def test_no_fix_records_are_zero_zero_with_no_satellites() -> None:
    no_fix = [
        p for _, p in decoded(records(4_000, timing=Timing(nofix_ratio=0.05))) if not p.fix_valid
    ]
    assert len(no_fix) > 50
    for p in no_fix:
        assert (p.latitude, p.longitude, p.satellites) == (0.0, 0.0, 0)
        assert p.attributes["69"] == 2  # GNSS on, no fix


def test_events_are_ignition_or_movement_changes() -> None:
    events: collections.Counter[int] = collections.Counter()
    last: dict[str, Position] = {}
    for _, p in decoded(records(6_000, timing=Timing(gap_share=0.0))):
        assert p.event_io_id in (0, 239, 240)
        assert p.priority == (1 if p.event_io_id else 0)
        if p.event_io_id and p.device_id in last:
            key = str(p.event_io_id)
            assert p.attributes[key] != last[p.device_id].attributes[key]
        events[p.event_io_id] += 1
        last[p.device_id] = p
    assert events[239] > 0
    assert events[240] > 0


# --- motion -------------------------------------------------------------------------


def test_speeds_are_realistic() -> None:
    by_device: dict[str, list[Position]] = collections.defaultdict(list)
    for _, p in decoded(records(8_000, timing=Timing(gap_share=0.1, gap_mean_s=60))):
        if p.fix_valid:
            by_device[p.device_id].append(p)
    speeds = []
    for fixes in by_device.values():
        fixes.sort(key=lambda p: p.ts)
        for a, b in itertools.pairwise(fixes):
            dt = (b.ts - a.ts).total_seconds()
            assert dt >= 1.0
            kmh = geo.distance_m(a.latitude, a.longitude, b.latitude, b.longitude) / dt * 3.6
            assert kmh < 250, f"{a.device_id} jumped at {kmh:.0f} km/h"
            assert 0 <= b.speed <= 160
            assert 6 <= b.satellites <= 14
            speeds.append(b.speed)
    assert max(speeds) >= 100  # cars do reach stage pace
    assert sum(s == 0 for s in speeds) > 0  # and they stop


def test_heading_points_along_the_road() -> None:
    checked = 0
    by_device: dict[str, list[Position]] = collections.defaultdict(list)
    for _, p in decoded(records(3_000, timing=Timing(gap_share=0.0, nofix_ratio=0.0))):
        by_device[p.device_id].append(p)
    for fixes in by_device.values():
        for a, b in itertools.pairwise(fixes):
            if geo.distance_m(a.latitude, a.longitude, b.latitude, b.longitude) < 20:
                continue
            expected = geo.bearing_deg(a.latitude, a.longitude, b.latitude, b.longitude)
            diff = abs((b.heading - expected + 180) % 360 - 180)
            assert diff <= 1.0
            checked += 1
    assert checked > 1_000


# --- coverage gaps ------------------------------------------------------------------


def test_gaps_upload_late_records_out_of_order() -> None:
    recs = records(6_000, timing=Timing(gap_share=0.2, gap_mean_s=60))
    late = [(rec, p) for rec, p in decoded(recs) if rec.late]
    assert len(late) > 300
    for _, p in late:
        assert p.received_at is not None
        assert p.attributes["21"] == 0  # no GSM signal while it was recorded
    # Late means received long after the fix, not just network latency.
    assert max((p.received_at - p.ts).total_seconds() for _, p in late if p.received_at) > 30
    # Out of order: a device's fix times go backwards somewhere in stream order.
    by_device: dict[str, list[datetime]] = collections.defaultdict(list)
    for _, p in decoded(recs):
        by_device[p.device_id].append(p.ts)
    backwards = sum(
        any(b < a for a, b in itertools.pairwise(times)) for times in by_device.values()
    )
    assert backwards >= 5


def test_stream_order_is_receive_order() -> None:
    recs = records(3_000, poison_ratio=0.05, timing=Timing(gap_share=0.2, gap_mean_s=60))
    received = [rec.received for rec in recs]
    assert received == sorted(received)


def test_no_gaps_means_no_late_records_and_fix_times_in_order() -> None:
    by_device: dict[str, list[datetime]] = collections.defaultdict(list)
    for rec, p in decoded(records(3_000, timing=Timing(gap_share=0.0))):
        assert not rec.late
        by_device[p.device_id].append(p.ts)
    for times in by_device.values():
        assert times == sorted(times)


# --- determinism --------------------------------------------------------------------


def _without_times(rec: SimRecord) -> tuple[str, dict[bytes, bytes] | dict[str, Any]]:
    if rec.kind == "poison":
        return (rec.variant or "", rec.fields)
    obj = payload(rec)
    del obj["timestamp"], obj["received_at"]
    return ("valid", obj)


def test_same_seed_same_records_whatever_the_start_time() -> None:
    later = START + timedelta(days=3, milliseconds=123)
    a = records(2_000, seed=7, poison_ratio=0.05)
    b = records(2_000, later, seed=7, poison_ratio=0.05)
    assert [_without_times(r) for r in a if r.kind == "valid"] == [
        _without_times(r) for r in b if r.kind == "valid"
    ]
    assert [r.kind for r in a] == [r.kind for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert rb.received - ra.received == later - START
        if ra.kind == "valid":
            ta = datetime.fromisoformat(payload(ra)["timestamp"])
            tb = datetime.fromisoformat(payload(rb)["timestamp"])
            assert tb - ta == later - START


def test_same_seed_same_start_identical_bytes() -> None:
    assert [r.fields for r in records(1_000, seed=3, poison_ratio=0.1)] == [
        r.fields for r in records(1_000, seed=3, poison_ratio=0.1)
    ]


def test_different_seed_different_records() -> None:
    assert [r.fields for r in records(100, seed=1)] != [r.fields for r in records(100, seed=2)]


def test_valid_records_do_not_depend_on_the_poison_ratio() -> None:
    clean = [r.fields for r in records(1_000, seed=5)]
    mixed = [r.fields for r in records(1_100, seed=5, poison_ratio=0.05) if r.kind == "valid"]
    assert mixed[: len(clean) - 100] == clean[: len(clean) - 100]


def test_plan_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="device"):
        plan(devices=0)
    with pytest.raises(ValueError, match="poison_ratio"):
        plan(poison_ratio=1.0)
    with pytest.raises(ValueError, match="gap_share"):
        plan(timing=Timing(gap_share=1.0))


# --- routes -------------------------------------------------------------------------


def test_bundled_gpx_tracks_load_as_real_routes() -> None:
    visnjan = load_gpx(BUNDLED_TRACKS / "around-visnjan-with-car.gpx")
    cerknica = load_gpx(BUNDLED_TRACKS / "cerknicko-jezero.gpx")
    assert visnjan.closed  # the car drive ends where it started
    assert not cerknica.closed
    assert 2_500 < visnjan.length_m < 3_000
    assert 13_000 < cerknica.length_m < 14_500
    assert 45.27 < visnjan.points[0][0] < 45.28
    assert visnjan.points[0][2] == pytest.approx(211.15)  # altitude from <ele>


def test_open_route_is_driven_there_and_back_without_jumps() -> None:
    route = load_gpx(BUNDLED_TRACKS / "cerknicko-jezero.gpx")
    step = 25.0
    previous = route.locate(0.0)
    for i in range(1, int(route.length_m * 3 / step)):
        here = route.locate(i * step)
        assert geo.distance_m(*previous[:2], *here[:2]) <= step * 1.001
        previous = here
    assert route.locate(route.length_m * 2)[:2] == pytest.approx(route.locate(0.0)[:2])


def test_closed_loop_wraps_round_and_backwards() -> None:
    route = build_routes("synthetic", seed=9, synthetic=1)[0]
    assert route.closed
    a = route.locate(10.0)
    assert route.locate(10.0 + route.length_m)[:2] == pytest.approx(a[:2])
    assert route.locate(10.0 - route.length_m)[:2] == pytest.approx(a[:2])


def test_route_sources() -> None:
    assert len(build_routes("gpx", seed=1)) == 2
    assert [r.name for r in build_routes("synthetic", seed=1, synthetic=3)] == [
        "loop-1",
        "loop-2",
        "loop-3",
    ]
    assert len(build_routes("mixed", seed=1)) == 6


def test_bad_gpx_is_a_route_error(tmp_path: Path) -> None:
    (tmp_path / "broken.gpx").write_text("<gpx><trk><trkseg><trkpt lat=")
    with pytest.raises(RouteError, match=r"broken\.gpx"):
        load_gpx(tmp_path / "broken.gpx")
    (tmp_path / "one.gpx").write_text(
        '<gpx><trk><trkseg><trkpt lat="1" lon="2"/></trkseg></trk></gpx>'
    )
    with pytest.raises(RouteError, match="fewer than two"):
        load_gpx(tmp_path / "one.gpx")
    with pytest.raises(RouteError, match=r"no \.gpx"):
        build_routes("gpx", seed=1, tracks=tmp_path / "nothing")


# --- pacing -------------------------------------------------------------------------


class FakeClock:
    """Monotonic time that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


class ListSink:
    def __init__(self) -> None:
        self.batches: list[list[dict[bytes, bytes]]] = []

    def send(self, batch: list[dict[bytes, bytes]]) -> None:
        self.batches.append(batch)


def _publish(recs: list[SimRecord], **kwargs: Any) -> tuple[FakeClock, ListSink, Summary]:
    clock, sink = FakeClock(), ListSink()
    summary = Summary(stream="s", devices=10, seed=1)
    far_future = START + timedelta(days=365)  # every record is long received
    publish(recs, sink, summary, clock=clock, sleep=clock.sleep, wall=lambda: far_future, **kwargs)
    return clock, sink, summary


def test_token_bucket_holds_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(100.0, 5, clock, clock.sleep)
    for _ in range(200):
        bucket.take(5)
    assert clock.now == pytest.approx((1_000 - 5) / 100)


def test_publish_paces_batches_and_counts() -> None:
    recs = records(1_000, poison_ratio=0.1, timing=Timing(gap_share=0.2, gap_mean_s=60))
    clock, sink, summary = _publish(recs, rate=200.0)
    assert clock.now == pytest.approx(5.0, abs=0.1)
    assert {len(b) for b in sink.batches} == {10}  # 1/20 s worth
    assert [f for b in sink.batches for f in b] == [r.fields for r in recs]
    assert summary.published == 1_000
    assert summary.valid + summary.poison == 1_000
    assert summary.poison == sum(r.kind == "poison" for r in recs)
    assert summary.late == sum(r.late for r in recs)
    assert sum(summary.variants.values()) == summary.poison
    assert summary.as_dict()["rate_per_s"] == pytest.approx(200, rel=0.02)


def test_publish_stops_at_the_duration() -> None:
    clock, _, summary = _publish(records(1_000), rate=100.0, duration_s=2.0)
    assert 195 <= summary.published <= 205
    assert clock.now == pytest.approx(2.0, abs=0.1)


def test_rate_zero_sends_without_waiting() -> None:
    clock, sink, summary = _publish(records(1_200), rate=0.0)
    assert clock.now == 0.0
    assert [len(b) for b in sink.batches] == [500, 500, 200]
    assert summary.published == 1_200


def test_records_are_not_sent_before_they_are_received() -> None:
    recs = records(100)
    clock, sink = FakeClock(), ListSink()
    summary = Summary(stream="s", devices=10, seed=1)
    publish(
        recs,
        sink,
        summary,
        rate=0.0,
        clock=clock,
        sleep=clock.sleep,
        wall=lambda: START + timedelta(seconds=clock.now),
    )
    assert clock.now == pytest.approx((recs[-1].received - START).total_seconds())


# --- the command --------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(argv)


def test_arguments_and_defaults() -> None:
    args = parse()
    assert (args.devices, args.rate, args.poison_ratio, args.count, args.duration) == (
        10,
        50.0,
        0.0,
        None,
        None,
    )
    assert args.tracks == BUNDLED_TRACKS
    args = parse("--devices", "3", "--rate", "0", "--count", "5", "--seed", "9", "--json")
    assert (args.devices, args.rate, args.count, args.seed, args.json) == (3, 0.0, 5, 9, True)


@pytest.mark.parametrize(
    "argv",
    [
        ("--count", "5", "--duration", "1"),
        ("--devices", "0"),
        ("--rate", "-1"),
        ("--poison-ratio", "1"),
        ("--gap-share", "-0.1"),
        ("--duration", "0"),
        ("--routes", "moon"),
    ],
)
def test_bad_arguments_are_refused(argv: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit):
        parse(*argv)


@pytest.mark.parametrize(("total", "rate"), [(2_000, 1_000.0), (5_000, 0.0), (300, 5.0)])
def test_bounded_run_never_has_fixes_ahead_of_the_wall_clock(total: int, rate: float) -> None:
    p = plan(poison_ratio=0.05)
    now = datetime(2026, 5, 12, 12, 0, tzinfo=UTC)
    start = command.start_time(p, now, total=total, rate=rate)
    recs = list(itertools.islice(generate(p, start), total))
    wall_s = total / rate if rate else 0.0
    # The last record is due no later than the wall clock when it goes out...
    assert recs[-1].received <= now + timedelta(seconds=wall_s)
    # ...and the run still ends near "now", not hours in the past.
    assert now + timedelta(seconds=wall_s) - recs[-1].received < timedelta(seconds=600)


def test_unbounded_run_starts_now() -> None:
    now = datetime(2026, 5, 12, 12, 0, tzinfo=UTC)
    start = command.start_time(plan(), now, total=None, rate=50.0)
    assert timedelta(0) < now - start <= timedelta(seconds=10)


def test_bad_tracks_directory_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from processor import config, exit_codes

    args = parse("--tracks", str(tmp_path), "--routes", "gpx", "--count", "1")
    assert command.main(args, config.load({})) == exit_codes.CONFIG_ERROR
    assert "no .gpx" in capsys.readouterr().err
