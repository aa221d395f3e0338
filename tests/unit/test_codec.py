"""The codec against the position-record contract.

Each poison rule has a case here because the dead-letter stream is only useful if the
reason names the field an operator has to fix. The property tests exist because the
decoder's real promise is negative: no input, however broken, may raise anything but a
PoisonRecord (anything else would crash the pipeline on the same entry forever).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor.core import codec
from processor.core.errors import (
    POISON_KINDS,
    FutureTimestamp,
    InvalidAttribute,
    InvalidField,
    MalformedPayload,
    MissingField,
    MissingPayload,
    PoisonRecord,
    UnknownVersion,
)
from processor.core.model import Position, evolve
from processor.core.payload import Payload

NOW = datetime(2026, 5, 12, 9, 35, 0, tzinfo=UTC)
TOLERANCE_S = 600.0
_latest = codec.latest_accepted(NOW, TOLERANCE_S)
assert _latest is not None
LATEST = _latest

# Verbatim from the contract.
EXAMPLE_PAYLOAD = b"""{
  "device_id": "356307042441013",
  "timestamp": "2026-05-12T09:31:02.000Z",
  "received_at": "2026-05-12T09:31:03.412Z",
  "latitude": 41.3279533,
  "longitude": 19.8186983,
  "altitude": 110,
  "angle": 270,
  "satellites": 12,
  "speed": 87,
  "priority": 0,
  "event_io_id": 0,
  "codec": "8E",
  "attributes": {
    "239": 1,
    "66": 12850,
    "16": {"__bigint": "18446744073709551615"},
    "10": {"__buffer_b64": "AQID"}
  }
}"""

EXAMPLE_POSITION = Position(
    device_id="356307042441013",
    ts=datetime(2026, 5, 12, 9, 31, 2, tzinfo=UTC),
    received_at=datetime(2026, 5, 12, 9, 31, 3, 412000, tzinfo=UTC),
    latitude=41.3279533,
    longitude=19.8186983,
    altitude=110.0,
    heading=270.0,
    satellites=12,
    speed=87.0,
    priority=0,
    event_io_id=0,
    codec="8E",
    fix_valid=True,
    attributes={"239": 1, "66": 12850, "16": 18446744073709551615, "10": b"\x01\x02\x03"},
)

REQUIRED = [
    "device_id",
    "timestamp",
    "latitude",
    "longitude",
    "altitude",
    "angle",
    "satellites",
    "speed",
    "priority",
    "event_io_id",
    "attributes",
]


def example() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(EXAMPLE_PAYLOAD)
    return result


def decode_payload(payload: dict[str, Any] | bytes, **extra: bytes) -> Position:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    fields = {b"payload": raw, **{k.encode(): v for k, v in extra.items()}}
    return codec.decode(fields, now=NOW, future_tolerance_s=TOLERANCE_S)


def with_field(name: str, value: Any) -> dict[str, Any]:
    payload = example()
    payload[name] = value
    return payload


def with_attribute(key: str, value: Any) -> dict[str, Any]:
    payload = example()
    payload["attributes"][key] = value
    return payload


def assert_poison(payload: dict[str, Any] | bytes, error: type[PoisonRecord], name: str) -> None:
    with pytest.raises(error) as caught:
        decode_payload(payload)
    assert type(caught.value) is error
    assert name in caught.value.reason
    assert len(caught.value.reason) < 400


# --- accepted records -------------------------------------------------------------------


def test_contract_example_decodes_exactly() -> None:
    position = decode_payload(EXAMPLE_PAYLOAD)
    assert position == EXAMPLE_POSITION
    assert type(position.attributes["16"]) is int
    assert position.ts.tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    [
        "2026-05-12T11:31:02.000+02:00",
        "2026-05-12T11:31:02+0200",
        "2026-05-12T04:01:02.000-05:30",
        "2026-05-12T09:31:02Z",
        "2026-05-12T09:31:02.000000-00:00",
    ],
)
def test_offset_timestamps_are_normalised_to_utc(text: str) -> None:
    position = decode_payload(with_field("timestamp", text))
    assert position.ts == datetime(2026, 5, 12, 9, 31, 2, tzinfo=UTC)
    assert position.ts.tzinfo is UTC
    assert position.ts.utcoffset() == timedelta(0)


def test_sub_microsecond_fraction_is_truncated() -> None:
    position = decode_payload(with_field("timestamp", "2026-05-12T09:31:02.123456789Z"))
    assert position.ts == datetime(2026, 5, 12, 9, 31, 2, 123456, tzinfo=UTC)


def test_no_fix_record_is_marked() -> None:
    payload = example() | {"latitude": 0, "longitude": 0.0, "satellites": 0}
    assert decode_payload(payload).fix_valid is False


def test_zero_position_with_satellites_is_a_fix() -> None:
    payload = example() | {"latitude": 0, "longitude": 0, "satellites": 3}
    assert decode_payload(payload).fix_valid is True


def test_integral_float_is_accepted_for_integer_fields() -> None:
    position = decode_payload(example() | {"satellites": 12.0, "event_io_id": 2e2})
    assert (position.satellites, position.event_io_id) == (12, 200)
    assert type(position.satellites) is int


def test_optional_fields_absent_or_null() -> None:
    payload = example()
    del payload["received_at"], payload["codec"]
    position = decode_payload(payload)
    assert position.received_at is None
    assert position.codec is None
    position = decode_payload(example() | {"received_at": None, "codec": None})
    assert position.received_at is None
    assert position.codec is None


def test_version_one_and_unknown_stream_fields_and_payload_keys_are_accepted() -> None:
    payload = example() | {"firmware": "03.28.07"}
    assert decode_payload(payload, v=b"1", trace=b"x") == EXAMPLE_POSITION


def test_sentinel_edge_values() -> None:
    payload = example()
    payload["attributes"] = {
        "1": {"__bigint": "-18446744073709551616"},
        "2": {"__bigint": "5"},
        "3": {"__buffer_b64": ""},
        "4": 1e21,
        "5": -0.5,
        "6": 18446744073709551615,
    }
    assert decode_payload(payload).attributes == {
        "1": -18446744073709551616,
        "2": 5,
        "3": b"",
        "4": 1e21,
        "5": -0.5,
        "6": 18446744073709551615,
    }


def test_timestamp_within_tolerance_is_accepted() -> None:
    ahead = (NOW + timedelta(seconds=TOLERANCE_S - 1)).isoformat()
    assert decode_payload(with_field("timestamp", ahead)).ts > NOW


# --- poison rules -----------------------------------------------------------------------


def test_missing_payload() -> None:
    with pytest.raises(MissingPayload, match="payload"):
        codec.decode({b"v": b"1"}, now=NOW, future_tolerance_s=TOLERANCE_S)


@pytest.mark.parametrize("version", [b"2", b"", b"01", b"1 ", b"\xff"])
def test_unknown_version(version: bytes) -> None:
    fields = {b"payload": EXAMPLE_PAYLOAD, b"v": version}
    with pytest.raises(UnknownVersion, match=r"^v: "):
        codec.decode(fields, now=NOW, future_tolerance_s=TOLERANCE_S)


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe{}",
        b'{"device_id": "\xc3\x28"}',
        b"{",
        b"",
        b"NaN",
        b'{"latitude": Infinity}',
        b'{"latitude": 1e400}',
        b"[1, 2]",
        b'"text"',
        b"null",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
    ],
)
def test_malformed_payload(raw: bytes) -> None:
    assert_poison(raw, MalformedPayload, "payload")


@pytest.mark.parametrize("name", REQUIRED)
def test_missing_required_field(name: str) -> None:
    payload = example()
    del payload[name]
    assert_poison(payload, MissingField, name)


@pytest.mark.parametrize("name", REQUIRED)
def test_null_required_field_is_invalid(name: str) -> None:
    assert_poison(with_field(name, None), InvalidField, name)


@pytest.mark.parametrize(
    "value", ["", "x" * 21, "356 307", "IMEI:1", "ÄBC", "٣٥٦", 356307042441013, True, ["a"]]
)
def test_invalid_device_id(value: Any) -> None:
    assert_poison(with_field("device_id", value), InvalidField, "device_id")


BAD_TIMESTAMPS = [
    "2026-05-12T09:31:02.000",  # naive
    "2026-05-12",
    "2026-05-12T09:31Z",
    "2026-05-12 09:31:02Z",
    "2026-05-12x09:31:02Z",
    "20260512T093102Z",
    "2026-W19-2T09:31:02Z",
    "2026-05-12T09:31:02.000z",
    "2026-05-12T09:31:02.000Z\x00",
    "2026-13-01T00:00:00Z",
    "2026-02-30T00:00:00Z",
    "2026-05-12T24:00:00Z",
    "2026-05-12T09:31:02+24:00",
    "2026-05-12T09:31:02.1234567890Z",
    "0001-01-01T00:00:00+01:00",  # before year 1 once in UTC
    "9999-12-31T23:59:59-01:00",  # after year 9999 once in UTC
    "yesterday",
    1778578262000,
    True,
    {"$date": "2026-05-12T09:31:02.000Z"},
]


@pytest.mark.parametrize("value", BAD_TIMESTAMPS)
def test_invalid_timestamp(value: Any) -> None:
    assert_poison(with_field("timestamp", value), InvalidField, "timestamp")


@pytest.mark.parametrize("value", BAD_TIMESTAMPS)
def test_invalid_received_at(value: Any) -> None:
    assert_poison(with_field("received_at", value), InvalidField, "received_at")


def test_future_timestamp() -> None:
    ahead = (NOW + timedelta(seconds=TOLERANCE_S + 1)).isoformat()
    assert_poison(with_field("timestamp", ahead), FutureTimestamp, "timestamp")


def test_future_tolerance_boundary_is_more_than_not_at_least() -> None:
    # "more than FUTURE_TOLERANCE ahead" is poison: exactly the tolerance is not.
    at = NOW + timedelta(seconds=TOLERANCE_S)
    assert decode_payload(with_field("timestamp", at.isoformat())).ts == at
    past = at + timedelta(milliseconds=1)
    assert_poison(
        with_field("timestamp", past.isoformat(timespec="milliseconds")),
        FutureTimestamp,
        "timestamp",
    )


def test_future_rule_compares_the_instant_not_the_local_time() -> None:
    # 11:40+02:00 is 09:40Z, 5 min ahead of NOW: fine, although 11:40 reads as hours ahead.
    assert decode_payload(with_field("timestamp", "2026-05-12T11:40:00.000+02:00")).ts > NOW
    # 05:50-05:00 is 10:50Z, 75 min ahead: poison, although 05:50 reads as the past.
    assert_poison(
        with_field("timestamp", "2026-05-12T05:50:00.000-05:00"), FutureTimestamp, "timestamp"
    )


def test_tolerance_comes_from_the_caller() -> None:
    ahead = with_field("timestamp", (NOW + timedelta(seconds=30)).isoformat())
    raw = {b"payload": json.dumps(ahead).encode()}
    assert codec.decode(raw, now=NOW, future_tolerance_s=60).ts > NOW
    with pytest.raises(FutureTimestamp):
        codec.decode(raw, now=NOW, future_tolerance_s=10)


def test_received_at_is_not_subject_to_the_future_rule() -> None:
    # The rule protects partitions and "last position", both keyed on the fix time.
    later = (NOW + timedelta(days=2)).isoformat()
    assert decode_payload(with_field("received_at", later)).received_at == NOW + timedelta(days=2)


def test_the_fast_path_relies_on_the_structs_field_order() -> None:
    # ``_fast`` unpacks ``payload_values`` and builds ``Position`` by position: a field
    # added or moved in either struct must be mirrored there (the property tests would
    # then also see the two paths disagree).
    assert Payload.__struct_fields__ == (
        "device_id", "timestamp", "latitude", "longitude", "altitude", "angle",
        "satellites", "speed", "priority", "event_io_id", "attributes", "received_at",
        "codec",
    )  # fmt: skip
    assert Position.__struct_fields__ == (
        "device_id", "ts", "latitude", "longitude", "altitude", "heading", "speed",
        "satellites", "priority", "event_io_id", "fix_valid", "attributes", "received_at",
        "codec",
    )  # fmt: skip


def _rule_passes(ts: datetime, now: datetime, tolerance_s: float) -> bool:
    """The future-timestamp rule as the reference path states it."""
    return not (ts - now).total_seconds() > tolerance_s


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
    st.floats(min_value=-1e7, max_value=1e7) | st.sampled_from([0.0, 5e-7, 1.5e-6, 600.0]),
    st.integers(min_value=-3, max_value=3),
)
def test_the_fast_paths_future_bound_is_the_rule_to_the_microsecond(
    now: datetime, tolerance_s: float, offset_us: int
) -> None:
    # Every fix up to the bound passes the rule (the fast path is never looser), and
    # the bound is at most a microsecond short of the rule's own boundary.
    latest = codec.latest_accepted(now, tolerance_s)
    assert latest is not None
    ts = latest + timedelta(microseconds=offset_us)
    if offset_us <= 0:
        assert _rule_passes(ts, now, tolerance_s)
    elif offset_us >= 2:
        assert not _rule_passes(ts, now, tolerance_s)


@pytest.mark.parametrize(
    ("tolerance_s", "accepts"),
    [(float("inf"), "every"), (float("nan"), "every"), (1e300, "every"), (float("-inf"), "none")],
)
def test_a_tolerance_beyond_the_calendar_bounds_every_fix_or_none(
    tolerance_s: float, accepts: str
) -> None:
    latest = codec.latest_accepted(NOW, tolerance_s)
    if accepts == "none":
        assert latest is None
        assert not _rule_passes(datetime.min.replace(tzinfo=UTC), NOW, tolerance_s)
    else:
        assert latest == datetime.max.replace(tzinfo=UTC)
        assert _rule_passes(latest, NOW, tolerance_s)


def test_a_clock_at_the_calendars_end_bounds_nothing_it_cannot_represent() -> None:
    end = datetime.max.replace(tzinfo=UTC)
    now = end - timedelta(seconds=1)
    assert codec.latest_accepted(now, 600.0) == end  # now + 600 s is past year 9999
    assert _rule_passes(end, now, 600.0)
    assert codec.latest_accepted(now, -600.0) == now - timedelta(seconds=600)


def test_a_record_past_a_negative_tolerance_is_poison_by_the_reference() -> None:
    raw = {b"payload": json.dumps(with_field("timestamp", "2026-05-12T09:30:00.000Z")).encode()}
    with pytest.raises(FutureTimestamp):
        codec.decode(raw, now=NOW, future_tolerance_s=float("-inf"))
    assert codec.decode(raw, now=NOW, future_tolerance_s=-299.0).ts < NOW


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("latitude", 90.0001),
        ("latitude", -91),
        ("latitude", "41.3"),
        ("latitude", True),
        ("latitude", 1e300),
        ("longitude", 180.5),
        ("longitude", -181),
        ("longitude", False),
        ("longitude", [19.8]),
        ("altitude", "110"),
        ("altitude", True),
        ("altitude", {"m": 110}),
        ("angle", -1),
        ("angle", 360.5),
        ("angle", True),
        ("speed", "87"),
        ("speed", False),
        ("satellites", 256),
        ("satellites", -1),
        ("satellites", 12.5),
        ("satellites", True),
        ("satellites", "12"),
        ("priority", 3),
        ("priority", -1),
        ("priority", 0.5),
        ("priority", False),
        ("event_io_id", -1),
        ("event_io_id", 1.5),
        ("event_io_id", 65536),
        ("event_io_id", 18446744073709551615),
        ("event_io_id", True),
        ("codec", "8e"),
        ("codec", "9"),
        ("codec", 8),
        ("codec", ["8E"]),
        ("codec", {"8E": 1}),
        ("attributes", []),
        ("attributes", "239=1"),
        ("attributes", 0),
    ],
)
def test_invalid_field(name: str, value: Any) -> None:
    assert_poison(with_field(name, value), InvalidField, name)


@pytest.mark.parametrize("key", ["", "abc", "-1", "1.5", " 1", "١٢", "²", "0x10"])
def test_invalid_attribute_key(key: str) -> None:
    assert_poison(with_attribute(key, 1), InvalidAttribute, "attributes")


@pytest.mark.parametrize(
    "value",
    [
        "1",
        True,
        None,
        [],
        [1],
        {},
        {"x": 1},
        {"__bigint": "1", "x": 1},
        {"__bigint": "1", "__buffer_b64": "AQID"},
        {"__bigint": "1.5"},
        {"__bigint": "+1"},
        {"__bigint": " 1"},
        {"__bigint": ""},
        {"__bigint": "-"},
        {"__bigint": "1e5"},
        {"__bigint": "٣"},
        {"__bigint": "1" * 5000},
        {"__bigint": 12},
        {"__bigint": None},
        {"__buffer_b64": "AQI"},
        {"__buffer_b64": "AQID="},
        {"__buffer_b64": "AQ==AQ=="},
        {"__buffer_b64": "!!!!"},
        {"__buffer_b64": "AQID\n"},
        {"__buffer_b64": "AQ-_"},
        {"__buffer_b64": "é"},
        {"__buffer_b64": 5},
        {"__buffer_b64": ["AQID"]},
        {"__BIGINT": "1"},
    ],
)
def test_invalid_attribute_value(value: Any) -> None:
    assert_poison(with_attribute("16", value), InvalidAttribute, "attributes[16]")


def test_reason_quotes_long_values_truncated() -> None:
    with pytest.raises(InvalidField) as caught:
        decode_payload(with_field("device_id", "é" * 100_000))
    assert caught.value.reason.startswith("device_id: ")
    assert len(caught.value.reason) < 200


def test_reason_survives_values_too_deep_to_print() -> None:
    deep = b'{"device_id": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    assert_poison(deep, InvalidField, "device_id")
    deep_attribute = EXAMPLE_PAYLOAD.replace(b'"239": 1', b'"239": ' + b"[" * 1000 + b"]" * 1000)
    assert_poison(deep_attribute, InvalidAttribute, "attributes[239]")


def test_every_raised_kind_is_registered() -> None:
    # The dead-letter router labels metrics by kind; an unregistered type would be unseen.
    assert {MissingPayload, UnknownVersion, MalformedPayload, MissingField} <= set(POISON_KINDS)
    assert {InvalidField, InvalidAttribute, FutureTimestamp} <= set(POISON_KINDS)


# --- encode and stored_json -------------------------------------------------------------


def test_encode_writes_the_contract_form() -> None:
    position = evolve(
        EXAMPLE_POSITION,
        ts=datetime(2026, 5, 12, 11, 31, 2, 123999, tzinfo=timezone(timedelta(hours=2))),
        attributes={"1": 2**53 - 1, "2": 2**53, "3": -(2**53), "4": b"\x01\x02\x03"},
    )
    fields = codec.encode(position)
    assert set(fields) == {b"payload"}
    payload = json.loads(fields[b"payload"])
    assert payload["timestamp"] == "2026-05-12T09:31:02.123Z"
    assert payload["received_at"] == "2026-05-12T09:31:03.412Z"
    assert payload["angle"] == 270.0
    assert payload["attributes"] == {
        "1": 2**53 - 1,
        "2": {"__bigint": str(2**53)},
        "3": {"__bigint": str(-(2**53))},
        "4": {"__buffer_b64": "AQID"},
    }


def test_stored_json_reverses_sentinels() -> None:
    text = codec.stored_json(EXAMPLE_POSITION.attributes)
    assert json.loads(text) == {
        "239": 1,
        "66": 12850,
        "16": 18446744073709551615,
        "10": "\\x010203",
    }
    assert b'"\\\\x010203"' in text  # JSON-escaped backslash, so ->> yields \x010203


def test_stored_json_beyond_64_bits() -> None:
    text = codec.stored_json({"1": 2**70, "2": -(2**64), "3": b"\xff\x00", "4": 0.1})
    assert json.loads(text) == {"1": 2**70, "2": -(2**64), "3": "\\xff00", "4": 0.1}


# --- properties -------------------------------------------------------------------------

EDGE_INTS = [0, 2**53 - 1, 2**53, -(2**53 - 1), -(2**53), 2**63 - 1, 2**63, 2**64 - 1, 2**64]
attribute_values = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from(EDGE_INTS + [-i for i in EDGE_INTS]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.binary(max_size=40),
)
attribute_maps = st.dictionaries(
    st.from_regex(r"[0-9]{1,5}", fullmatch=True), attribute_values, max_size=8
)
ms_datetimes = st.datetimes(
    min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
).map(lambda moment: moment.replace(microsecond=moment.microsecond // 1000 * 1000))
finite = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def positions(draw: st.DrawFn) -> Position:
    latitude = draw(st.floats(-90, 90) | st.just(0.0))
    longitude = draw(st.floats(-180, 180) | st.just(0.0))
    satellites = draw(st.integers(0, 255) | st.just(0))
    return Position(
        device_id=draw(st.from_regex(r"[0-9A-Za-z_-]{1,20}", fullmatch=True)),
        ts=draw(ms_datetimes),
        received_at=draw(st.none() | ms_datetimes),
        latitude=latitude,
        longitude=longitude,
        altitude=draw(finite),
        heading=draw(st.floats(0, 360)),
        speed=draw(finite),
        satellites=satellites,
        priority=draw(st.integers(0, 2)),
        event_io_id=draw(st.integers(0, 65535)),
        codec=draw(st.sampled_from([None, "8", "8E", "16"])),
        fix_valid=not (latitude == 0 and longitude == 0 and satellites == 0),
        attributes=draw(attribute_maps),
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
contract_shaped = st.fixed_dictionaries(
    {},
    optional={name: json_values for name in [*REQUIRED, "received_at", "codec"]}
    | {"attributes": st.dictionaries(st.text(max_size=6), json_values, max_size=4)},
)

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decodes_or_poison(fields: dict[bytes, bytes]) -> None:
    outcome: Position | PoisonRecord
    try:
        outcome = codec.decode(fields, now=NOW, future_tolerance_s=TOLERANCE_S)
    except PoisonRecord as exc:
        outcome = exc
    if isinstance(outcome, PoisonRecord):
        assert type(outcome) in POISON_KINDS
        assert outcome.reason
    else:
        assert type(outcome) is Position
    if b"payload" in fields:
        paths_agree(fields[b"payload"])


def paths_agree(raw: Any) -> Position | None:
    """The fast path either gives up or decodes exactly what the reference path does
    (types of attribute values included); it never accepts what the reference rejects.
    Returns the fast path's result."""
    fast = codec._fast(raw, LATEST)
    try:
        reference: Position | None = codec._reference(raw, NOW, TOLERANCE_S)
    except PoisonRecord:
        reference = None
    if fast is not None:
        assert fast == reference
        assert reference is not None
        assert [type(v) for v in fast.attributes.values()] == [
            type(v) for v in reference.attributes.values()
        ]
        assert list(fast.attributes) == list(reference.attributes)
    return fast


@PROPERTY
@given(positions())
def test_round_trip(position: Position) -> None:
    encoded = codec.encode(position)
    decoded = codec.decode(encoded, now=position.ts, future_tolerance_s=0)
    assert decoded == position
    for key, value in position.attributes.items():
        assert type(decoded.attributes[key]) is type(value)
    if position.ts <= NOW and all(
        not isinstance(v, int) or -(2**63) <= v < 2**64 for v in position.attributes.values()
    ):  # what ingestion writes takes the fast path
        assert paths_agree(encoded[b"payload"]) == position


@PROPERTY
@given(st.binary(max_size=200), st.none() | st.binary(max_size=3))
def test_arbitrary_bytes_never_crash(raw: bytes, version: bytes | None) -> None:
    fields = {b"payload": raw} if version is None else {b"payload": raw, b"v": version}
    decodes_or_poison(fields)


@PROPERTY
@given(json_values | contract_shaped)
def test_arbitrary_json_never_crashes(value: Any) -> None:
    decodes_or_poison({b"payload": json.dumps(value).encode()})


def drop(payload: dict[str, Any], name: str, _: Any) -> None:
    payload.pop(name, None)


def replace(payload: dict[str, Any], name: str, value: Any) -> None:
    payload[name] = value


def replace_attribute(payload: dict[str, Any], name: str, value: Any) -> None:
    attributes = payload["attributes"]
    key = next(iter(attributes), name)
    attributes[key] = value


def add_attribute(payload: dict[str, Any], name: str, value: Any) -> None:
    payload["attributes"][name] = value


Mutation = Callable[[dict[str, Any], str, Any], None]


@PROPERTY
@given(
    positions(),
    st.lists(
        st.tuples(
            st.sampled_from([drop, replace, replace_attribute, add_attribute]),
            st.sampled_from([*REQUIRED, "received_at", "codec"]) | st.text(max_size=6),
            json_values,
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_mutated_payload_never_crashes(
    position: Position, mutations: list[tuple[Mutation, str, Any]]
) -> None:
    payload = orjson.loads(codec.encode(position)[b"payload"])
    for mutate, name, value in mutations:
        if (
            mutate in (replace_attribute, add_attribute)
            and type(payload.get("attributes")) is not dict
        ):
            continue
        mutate(payload, name, value)
    decodes_or_poison({b"payload": json.dumps(payload).encode()})


@PROPERTY
@given(attribute_maps)
def test_stored_json_is_exact(attributes: dict[str, int | float | bytes]) -> None:
    stored = json.loads(codec.stored_json(attributes))
    expected = {
        key: "\\x" + value.hex() if isinstance(value, bytes) else value
        for key, value in attributes.items()
    }
    assert stored == expected
    for key, value in attributes.items():
        if isinstance(value, int):
            assert type(stored[key]) is int


# --- peek_device_id: the device without decoding ------------------------------------------


@PROPERTY
@given(positions())
def test_peek_reads_the_device_of_every_encoded_record(position: Position) -> None:
    assert codec.peek_device_id(codec.encode(position)) == position.device_id


def agrees_with_decode(fields: dict[bytes, bytes]) -> None:
    """Whatever peek says is what decode would say, or decode rejects the record."""
    peeked = codec.peek_device_id(fields)
    if peeked is None:
        return
    try:
        decoded = codec.decode(fields, now=NOW, future_tolerance_s=TOLERANCE_S)
    except PoisonRecord:
        return
    assert decoded.device_id == peeked


@PROPERTY
@given(st.binary(max_size=200))
def test_peek_of_arbitrary_bytes_never_raises(raw: bytes) -> None:
    agrees_with_decode({b"payload": raw})


@PROPERTY
@given(
    positions(),
    st.lists(st.tuples(st.sampled_from(["device_id", "x", "attributes"]), json_values), max_size=3),
    st.booleans(),
)
def test_peek_agrees_with_decode_on_mutated_payloads(
    position: Position, changes: list[tuple[str, Any]], compact: bool
) -> None:
    payload = orjson.loads(codec.encode(position)[b"payload"])
    for name, value in changes:
        payload[name] = value
    separators = (",", ":") if compact else (", ", ": ")
    agrees_with_decode({b"payload": json.dumps(payload, separators=separators).encode()})


GOOD = b'{"device_id":"356307042441013","timestamp":"2026-01-01T00:00:00Z"}'


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (GOOD.replace(b"{", b'{"device_id":"other",', 1), "a duplicate key: JSON keeps the last"),
        (GOOD.replace(b'"device_id":', b'"device_id": '), "not the compact form"),
        (GOOD.replace(b"3563", b"\\u0033563"), "an escape in the value"),
        (GOOD.replace(b'"device_id":"356307042441013"', b'"device_id":356'), "not a string"),
        (GOOD.replace(b"356307042441013", b"3" * 21), "too long"),
    ],
)
def test_peek_gives_up_where_a_byte_search_could_be_wrong(raw: bytes, why: str) -> None:
    assert codec.peek_device_id({b"payload": GOOD}) == "356307042441013"
    assert codec.peek_device_id({b"payload": raw}) is None, why


def test_a_peeked_device_that_is_not_the_records_own_is_poison_to_decode() -> None:
    """Only a nested key is found: the reader skips or decodes it, and decode rejects it."""
    fields = {b"payload": b'{"attributes":{"1":{"device_id":"x"}}}'}
    assert codec.peek_device_id(fields) == "x"
    with pytest.raises(PoisonRecord):
        codec.decode(fields, now=NOW, future_tolerance_s=TOLERANCE_S)
    assert codec.peek_device_id({}) is None
    assert codec.peek_device_id({b"payload": b'{"device_id":"abc'}) is None


sentinel_texts = (
    st.text(alphabet="ABCDEFabcdef0123456789+/=-", max_size=12)
    | st.text(max_size=8)
    | st.binary(max_size=9).map(lambda b: base64.b64encode(b).decode())
    | st.integers(-(2**80), 2**80).map(str)
)


@PROPERTY
@given(st.sampled_from(["__bigint", "__buffer_b64", "other"]), sentinel_texts)
def test_the_fast_sentinel_decoder_agrees_with_the_reference(tag: str, text: str) -> None:
    """Gives up, or returns what ``_unsentinel`` returns (same type); never accepts what
    it rejects."""
    try:
        parsed = msgspec.json.decode(orjson.dumps({tag: text}), type=codec._Sentinel)
    except msgspec.ValidationError:
        fast = None  # msgspec refused it: the whole payload goes to the reference
    else:
        fast = codec._fast_sentinel(parsed)
    try:
        reference: object = codec._unsentinel("1", {tag: text})
    except PoisonRecord:
        reference = None
    if fast is not None:
        assert fast == reference
        assert type(fast) is type(reference)
    if tag != "other" and text.isascii() and (
        (tag == "__bigint" and text.lstrip("-").isdigit() and text.count("-") <= 1
         and not text.startswith("--"))
        or (tag == "__buffer_b64" and reference is not None
            and base64.b64encode(base64.b64decode(text)).decode() == text)
    ):  # fmt: skip
        assert fast is not None, "what ingestion writes takes the fast path"


# The Date.toJSON() layout with any character (digits favoured) in each digit position,
# and near misses of the layout: the shortcut must agree with the regex path on all.
_LAYOUT = "dddd-dd-ddTdd:dd:dd.dddZ"
_DIGIT_OR_NOT = st.one_of(
    st.sampled_from("0123456789"), st.sampled_from("0123456789"), st.characters()
)


@st.composite
def _layout_like(draw: st.DrawFn) -> str:
    chars = [draw(_DIGIT_OR_NOT) if c == "d" else c for c in _LAYOUT]
    if draw(st.booleans()):  # then disturb one position, or the length
        at = draw(st.integers(0, len(chars) - 1))
        how = draw(st.sampled_from(["replace", "insert", "delete"]))
        if how == "delete":
            del chars[at]
        else:
            # What ISO 8601 allows and the contract does not: ',' or ' ' or 't' as
            # separators, lower-case 'z', offsets.
            other = draw(st.one_of(st.sampled_from(" ,tTzZ+-:.0"), st.characters()))
            chars[at : at + (how == "replace")] = [other]
    return "".join(chars)


@settings(max_examples=2000, deadline=None)
@given(_layout_like())
def test_timestamp_shortcut_agrees_with_the_regex_path(text: str) -> None:
    assert codec._fast_instant(text) == codec._shaped_instant(text)
    parsed = codec._fast_instant(text)
    assert parsed is None or parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    [
        "2026-12-02T06:09:52,349Z",  # ISO's comma
        "2026-12-02 06:09:52.349Z",  # a space for the T
        "2026-12-02t06:09:52.349Z",
        "2026-12-02T06:09:52.349z",
        "2026-W49-3T06:09:52.349Z",  # an ISO week date, the same length
        "2026-12-02T0609:52.3491Z",
        "2026-12-02T06:0952.3491Z",
        "20261202T06:09:52.34910Z",
        "2026-12-02T06:09:52.349+",
        "2026-12-02T06:09:52.3491",  # no zone at all: a naive datetime
    ],
)
def test_timestamp_shortcut_refuses_what_iso_allows_and_the_contract_does_not(
    text: str,
) -> None:
    assert codec._fast_instant(text) is None
    assert codec._shaped_instant(text) is None


@pytest.mark.parametrize("escaped", [True, False], ids=["escaped", "utf-8"])
@pytest.mark.parametrize(
    "field", ["device_id", "timestamp", "received_at", "key", "bigint"]
)  # fmt: skip
def test_a_non_ascii_digit_is_never_taken_for_an_ascii_one(field: str, escaped: bool) -> None:
    """A digit such as U+0661 (isdigit, isalnum) in any field the fast path reads as
    digits, written as an escape or as UTF-8, goes to the reference, which rejects it."""
    digit = "\u0661"
    payload = example()
    if field in ("timestamp", "received_at"):
        payload[field] = "2026-05-12T09:31:0" + digit + ".000Z"
    elif field == "device_id":
        payload[field] = "35630704244101" + digit
    elif field == "key":
        payload["attributes"]["1" + digit] = 1
    else:
        payload["attributes"]["78"] = {"__bigint": "9" * 20 + digit}
    raw = json.dumps(payload, ensure_ascii=escaped).encode()
    assert (b"\\u0661" in raw) == escaped
    assert codec._fast(raw, LATEST) is None
    with pytest.raises(PoisonRecord):
        codec._reference(raw, NOW, TOLERANCE_S)


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=24) | st.text(alphabet="0123456789AZaz_-", min_size=0, max_size=22))
def test_device_id_shortcut_agrees_with_the_regex(device_id: str) -> None:
    assert codec._device_id_ok(device_id) == (codec._DEVICE_ID(device_id) is not None)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("", 1),  # vanishes from a join of the keys
        ("\u0661", 1),  # an Arabic-Indic digit: isdigit, not ASCII
        ("1a", 1),
        ("1", 2**64),  # beyond uint64: orjson (the reference) reads a float
        ("1", {"__bigint": "1", "__buffer_b64": "AQID"}),
        ("1", {}),
        ("1", {"__bigint": None}),
    ],
)
def test_the_fast_path_leaves_doubtful_attributes_to_the_reference(key: str, value: Any) -> None:
    raw = json.dumps(with_attribute(key, value)).encode()
    assert codec._fast(raw, LATEST) is None
    paths_agree(raw)
