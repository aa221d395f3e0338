"""The position-record contract (``/work/shared/spec/position-record.md``) as code.

Decoding is where untrusted bytes from another service become a typed ``Position``, so it
is the one place that enforces the contract. It must never fail in any way other than a
``PoisonRecord``: anything else would crash the pipeline (and a restart would re-read the
same entry and crash again), while a poison error gets the entry dead-lettered and acked.
That is why every check below looks at exact types (``type(v) is int`` also rejects
``bool``, which Python counts as an ``int``) and never hashes, formats or converts a value
it has not first checked.

It runs once per record at tens of thousands of records a second, so checks are inline
comparisons, the only regex is compiled once, and formatting happens on the error path
only.

Decisions where the contract is silent:

- Integer fields (satellites, priority, event_io_id) also accept an integral float such as
  ``12.0``: JSON and JavaScript have one number type, so ``12.0`` is the same number as
  ``12``. ``12.5`` is poison.
- ``event_io_id`` is at most 65535: IO ids are at most two bytes in every Teltonika codec,
  and a bound keeps an absurd value from failing the database insert instead of being
  dead-lettered.
- Timestamps must have the shape JavaScript and RFC 3339 write: ``YYYY-MM-DDTHH:MM:SS``,
  an optional fraction of 1-9 digits (truncated to microseconds), then ``Z`` or an offset
  ``+HH:MM`` (``+HHMM`` too). Other ISO-8601 forms (week dates, basic format, no seconds)
  and timestamps without an offset are poison, because Python's own parser is far more
  lenient than the contract and would otherwise guess.
- ``null`` for an optional field (``received_at``, ``codec``) means absent; ``null`` for
  a required field is an invalid value, not a missing field.
- Payload keys the contract does not name are ignored, like unknown stream fields, so the
  producer can add fields without breaking this consumer.

Two paths, one contract. A record as ingestion writes it is decoded by msgspec into
``payload.Payload`` (JSON parsing, types and bounds in one C pass) and finished here: ~2 µs
less per record than parsing with orjson and checking each field in Python. Anything
that path is not sure of (an unknown key, an integral float, a null, any failure at all)
goes to the field-by-field path, which is the reference: it accepts what the contract
allows and names the reason for everything else. The fast path never raises and never
accepts what the reference rejects (``tests/unit/test_codec.py`` checks every property
input against both).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from processor.core.errors import (
    FutureTimestamp,
    InvalidAttribute,
    InvalidField,
    MalformedPayload,
    MissingField,
    MissingPayload,
    PoisonRecord,
    UnknownVersion,
)
from processor.core.model import AttributeValue, Entry, Position, RawEntry
from processor.core.payload import FLOAT_MAX as _FLOAT_MAX
from processor.core.payload import IO_ID_MAX as _IO_ID_MAX
from processor.core.payload import Sentinel as _Sentinel
from processor.core.payload import decode_payload as _decode_payload
from processor.core.payload import payload_values as _payload_values

# Largest integer a JavaScript number holds exactly; beyond it the producer must (and we
# do) use the __bigint sentinel.
_JS_SAFE_INT: Final = 2**53 - 1
# How much of an offending value a poison reason quotes: enough to recognise it, never a
# whole payload in a log line or dead-letter entry.
_SHOW_MAX: Final = 80

_DEVICE_ID = re.compile(r"[0-9A-Za-z_-]{1,20}").fullmatch
_DEVICE_ID_BYTES = re.compile(rb"[0-9A-Za-z_-]{1,20}").fullmatch
_DEVICE_KEY: Final = b'"device_id"'
_DATETIME = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-](?:[01]\d|2[0-3]):?[0-5]\d)",
    re.ASCII,
).fullmatch
_CODECS: Final = frozenset({"8", "8E", "16"})
_MISSING: Final[Any] = object()
# Integers orjson reads exactly (beyond them it reads a float): the fast path leaves the
# rest to the reference path, so both store the same number.
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1
# Digits a __bigint may have on the fast path: far below Python's int-from-str limit.
_FAST_DIGITS: Final = 1000
# The calendar's whole span in seconds: a future tolerance this large (or infinite)
# accepts, or if negative rejects, every fix there can be (``latest_accepted``).
_CALENDAR_S: Final = (datetime.max - datetime.min).total_seconds()
_LAST_INSTANT: Final = datetime.max.replace(tzinfo=UTC)


def decode(fields: Mapping[bytes, bytes], *, now: datetime, future_tolerance_s: float) -> Position:
    """Turn one stream entry into a ``Position`` or say exactly why it is poison.

    ``now`` and ``future_tolerance_s`` come from the caller so the future-timestamp rule
    uses one clock reading per batch and tests can pin it.

    Raises only ``PoisonRecord`` subclasses, whatever ``fields`` holds.
    """
    return decode_bounded(fields, now, future_tolerance_s, latest_accepted(now, future_tolerance_s))


def decode_bounded(
    fields: Mapping[bytes, bytes], now: datetime, future_tolerance_s: float, latest: datetime | None
) -> Position:
    """``decode`` with the future bound already taken (``latest_accepted``): readers
    take it once per read, not once per record."""
    version = fields.get(b"v")
    if version is not None and version != b"1":
        raise UnknownVersion(f"v: {_show_raw(version)} is not a known contract version (1)")
    raw = fields.get(b"payload")
    if raw is None:
        raise MissingPayload("payload: the stream entry has no payload field")
    position = _fast(raw, latest) if latest is not None else None
    if position is not None:
        return position
    return _reference(raw, now, future_tolerance_s)


def latest_accepted(now: datetime, future_tolerance_s: float) -> datetime | None:
    """A fix time up to which the future-timestamp rule surely passes (None: none does).

    The rule is ``(ts - now).total_seconds() > future_tolerance_s``; comparing each fix
    with one bound instead costs a datetime comparison, not a subtraction and a float
    conversion (~0.2 µs per record). ``timedelta`` rounds the tolerance to microseconds,
    so the bound is stepped back until the rule itself accepts it: the fast path may
    leave a fix within a microsecond of the boundary to the reference, never accept
    one the reference rejects. A tolerance past ``datetime``'s range accepts every fix
    (as does NaN, which the rule never exceeds), or none if it is negative.
    """
    if not abs(future_tolerance_s) < _CALENDAR_S:  # infinite, NaN or past the calendar
        return None if future_tolerance_s < 0 else _LAST_INSTANT
    try:
        latest = now + timedelta(seconds=future_tolerance_s)
    except OverflowError:  # ``now`` near the calendar's end
        return None if future_tolerance_s < 0 else _LAST_INSTANT
    step = timedelta(microseconds=1)
    while (latest - now).total_seconds() > future_tolerance_s:
        latest -= step
    return latest


def decode_entries(
    raw: Sequence[RawEntry], now: datetime, future_tolerance_s: float, stream: str
) -> tuple[list[Entry], list[tuple[RawEntry, PoisonRecord | None]]]:
    """``decode`` over a read: the decoded entries, and each other entry with its error
    (None: Redis returned it without fields, i.e. it was trimmed before it was read).
    One loop here rather than in the caller, so it runs compiled with ``decode``."""
    good: list[Entry] = []
    bad: list[tuple[RawEntry, PoisonRecord | None]] = []
    latest = latest_accepted(now, future_tolerance_s)
    for item in raw:
        fields = item.fields
        if not fields:
            bad.append((item, None))
            continue
        try:
            position = decode_bounded(fields, now, future_tolerance_s, latest)
        except PoisonRecord as exc:
            bad.append((item, exc))
            continue
        good.append(Entry(item.entry_id, position, fields, stream))
    return good, bad


def _fast(raw: Any, latest: datetime) -> Position | None:
    """The payload as a ``Position`` if it is plainly valid and its fix time is not after
    ``latest`` (``latest_accepted``); None: ask ``_reference``."""
    try:
        p = _decode_payload(raw)
    except Exception:  # untrusted input, any parser failure: the reference path decides
        return None
    # All fields in one C call: an attribute read on a Struct from compiled code is a
    # generic lookup through the type (~150 instructions), a tuple index is not.
    (
        device_id,
        timestamp,
        latitude,
        longitude,
        altitude,
        angle,
        satellites,
        speed,
        priority,
        event_io_id,
        attributes,
        received_text,
        codec,
    ) = _payload_values(p)
    if not _device_id_ok(device_id):
        return None
    ts = _fast_instant(timestamp)
    if ts is None or ts > latest:
        return None
    received_at = None
    if received_text is not None:
        received_at = _fast_instant(received_text)
        if received_at is None:
            return None
    sentinels: list[str] | None = None  # sentinels become int / bytes below
    for key, value in attributes.items():
        if not (key.isdigit() and key.isascii()):
            return None
        kind = type(value)
        if kind is int:
            if not _INT_MIN <= value <= _INT_MAX:
                return None
        elif kind is _Sentinel:
            if sentinels is None:
                sentinels = []
            sentinels.append(key)
    if sentinels is not None:
        for key in sentinels:
            value = _fast_sentinel(attributes[key])
            if value is None:
                return None
            attributes[key] = value
    # Positional: matching 14 keyword names cost msgspec ~500 instructions per record.
    return Position(
        device_id,
        ts,
        latitude,
        longitude,
        altitude,
        angle,  # heading
        speed,
        satellites,
        priority,
        event_io_id,
        not (latitude == 0 and longitude == 0 and satellites == 0),  # fix_valid
        attributes,
        received_at,
        codec,
    )


def _device_id_ok(device_id: str) -> bool:
    """``_DEVICE_ID`` (1-20 of ``[0-9A-Za-z_-]``), with IMEIs and other plain ASCII
    letters-and-digits ids decided without the regex."""
    if 0 < len(device_id) <= 20 and device_id.isascii() and device_id.isalnum():
        return True
    return _DEVICE_ID(device_id) is not None


def _fast_sentinel(sentinel: _Sentinel) -> AttributeValue | None:
    """A sentinel's value, or None: then ``_unsentinel`` decides (and names the reason).
    msgspec has checked the keys and decoded the base64 (in C); two values, or none, or
    a bigint that is not plain digits go to the reference."""
    bigint, buffer = sentinel.bigint, sentinel.buffer
    if buffer is not None:
        return buffer if bigint is None else None
    if bigint is not None and bigint.isascii():
        digits = bigint[1:] if bigint[:1] == "-" else bigint
        if digits.isdigit() and len(digits) <= _FAST_DIGITS:
            return int(bigint)
    return None


def _fast_instant(text: str) -> datetime | None:
    """The contract's timestamp shape as an aware UTC datetime; None if it is not one.

    Nearly every timestamp is what JavaScript's ``Date.toJSON()`` writes
    (``2026-05-12T09:31:02.000Z``): in that layout ``fromisoformat`` itself checks what
    the regex would (digits, ranges), at half the cost of matching the regex first
    (two timestamps per record). ``tests/unit/test_codec.py`` holds it to ``_shaped_instant``.
    """
    if (
        len(text) == 24
        and text[23] == "Z"
        and text[19] == "."
        and text[10] == "T"
        and text[4] == "-"
        and text[7] == "-"
        and text[13] == ":"
        and text[16] == ":"
        and text.isascii()
    ):
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            return None
    return _shaped_instant(text)


def _shaped_instant(text: str) -> datetime | None:
    """Any timestamp of the contract's shape (the regex), offsets normalised to UTC."""
    if _DATETIME(text) is None:
        return None
    try:
        parsed = datetime.fromisoformat(text)
        return parsed if parsed.tzinfo is UTC else parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _reference(raw: Any, now: datetime, future_tolerance_s: float) -> Position:
    """Field by field: the contract's rules, each with its own reason."""
    try:
        obj = orjson.loads(raw)
    except Exception as exc:  # untrusted input: any parser failure is poison
        raise MalformedPayload(f"payload: {_show_raw(raw)} is not JSON ({exc})") from None
    if type(obj) is not dict:
        raise MalformedPayload(f"payload: {_show(obj)} is not a JSON object")

    device_id = obj.get("device_id", _MISSING)
    if type(device_id) is not str or _DEVICE_ID(device_id) is None:
        if device_id is _MISSING:
            raise MissingField("device_id: required field is missing")
        raise InvalidField(f"device_id: {_show(device_id)} is not 1-20 of [0-9A-Za-z_-]")

    ts = _instant(obj, "timestamp")
    if ts is None:
        if "timestamp" in obj:
            raise InvalidField("timestamp: null is not a date-time")
        raise MissingField("timestamp: required field is missing")
    if (ts - now).total_seconds() > future_tolerance_s:
        raise FutureTimestamp(
            f"timestamp: {_show(obj['timestamp'])} is more than {future_tolerance_s:g} s"
            f" ahead of this processor's clock ({now.isoformat()})"
        )
    received_at = _instant(obj, "received_at")

    latitude = _real(obj, "latitude", -90.0, 90.0)
    longitude = _real(obj, "longitude", -180.0, 180.0)
    altitude = _real(obj, "altitude", -_FLOAT_MAX, _FLOAT_MAX)
    heading = _real(obj, "angle", 0.0, 360.0)
    speed = _real(obj, "speed", -_FLOAT_MAX, _FLOAT_MAX)
    satellites = _integer(obj, "satellites", 0, 255)
    priority = _integer(obj, "priority", 0, 2)
    event_io_id = _integer(obj, "event_io_id", 0, _IO_ID_MAX)

    codec = obj.get("codec")
    if codec is not None and (type(codec) is not str or codec not in _CODECS):
        raise InvalidField(f"codec: {_show(codec)} is not one of '8', '8E', '16'")

    attributes = obj.get("attributes", _MISSING)
    if type(attributes) is not dict:
        if attributes is _MISSING:
            raise MissingField("attributes: required field is missing")
        raise InvalidField(f"attributes: {_show(attributes)} is not a JSON object")

    return Position(
        device_id=device_id,
        ts=ts,
        latitude=latitude,
        longitude=longitude,
        altitude=altitude,
        heading=heading,
        speed=speed,
        satellites=satellites,
        priority=priority,
        event_io_id=event_io_id,
        fix_valid=not (latitude == 0 and longitude == 0 and satellites == 0),
        attributes=_attributes(attributes),
        received_at=received_at,
        codec=codec,
    )


def peek_device_id(fields: Mapping[bytes, bytes]) -> str | None:
    """A record's device id read without decoding it, or None if it cannot be that cheaply.

    For readers that skip most records by device (the broadcast tail skips devices that
    no event enters): two byte searches instead of a JSON parse. Never wrong for a
    payload that ``decode`` accepts: ``"device_id"`` must occur exactly once (JSON's
    duplicate keys keep the last, this would see the first; inside a JSON string the
    quotes would be escaped, so every occurrence is a key), be followed by ``:"`` (the
    compact form ingestion writes) and then by a valid device id as it stands (an
    escape sequence fails the pattern). Anything else is None: decode the record to know.
    """
    raw = fields.get(b"payload")
    if type(raw) is not bytes:
        return None
    key = raw.find(_DEVICE_KEY)
    if key < 0 or raw.find(_DEVICE_KEY, key + 1) >= 0:
        return None
    start = key + len(_DEVICE_KEY)
    if raw[start : start + 2] != b':"':
        return None
    start += 2
    end = raw.find(b'"', start, start + 21)
    if end < 0 or _DEVICE_ID_BYTES(raw, start, end) is None:
        return None
    return raw[start:end].decode("ascii")


def encode(position: Position) -> dict[bytes, bytes]:
    """Write a ``Position`` the way the ingestion service would publish it.

    Exists so tests, the benchmark and the simulator feed the processor real contract
    bytes rather than a second, hand-written idea of them. Timestamps are written with
    JavaScript's millisecond precision, so only millisecond positions round-trip exactly.
    The position is trusted: validating is ``decode``'s job (a NaN would be written as
    ``null`` and rejected there).
    """
    payload: dict[str, object] = {
        "device_id": position.device_id,
        "timestamp": _js_time(position.ts),
    }
    if position.received_at is not None:
        payload["received_at"] = _js_time(position.received_at)
    payload.update(
        latitude=position.latitude,
        longitude=position.longitude,
        altitude=position.altitude,
        angle=position.heading,
        satellites=position.satellites,
        speed=position.speed,
        priority=position.priority,
        event_io_id=position.event_io_id,
    )
    if position.codec is not None:
        payload["codec"] = position.codec
    payload["attributes"] = {k: _sentinel(v) for k, v in position.attributes.items()}
    return {b"payload": orjson.dumps(payload)}


def exact_json(value: Any, default: Callable[[Any], Any]) -> bytes:
    """Compact JSON (UTF-8) with every integer exact: orjson, and the stdlib encoder for
    the rare integer beyond 64 bits that orjson refuses (a contract ``__bigint`` may have
    thousands of digits). ``default`` as for both encoders."""
    try:
        return orjson.dumps(value, default=default)
    except TypeError:
        return json.dumps(value, default=default, separators=(",", ":")).encode()


def stored_json(value: Any) -> bytes:
    """The JSON (UTF-8) stored in a jsonb column: a record's IO elements, derived attributes.

    JSONB numbers are arbitrary-precision, so a 64-bit IO value is stored as the exact
    number, not a sentinel; bytes become the text form of a ``bytea`` (``\\x`` + hex) so SQL
    can get them back with ``decode(substr(..., 3), 'hex')``.
    """
    return exact_json(value, _bytea_text)


def _instant(obj: dict[str, Any], name: str) -> datetime | None:
    """A contract timestamp as an aware UTC datetime, or None if absent or null."""
    value = obj.get(name)
    if value is None:
        return None
    if type(value) is str and (parsed := _fast_instant(value)) is not None:
        return parsed
    raise InvalidField(
        f"{name}: {_show(value)} is not an ISO-8601 date-time with seconds and Z or an offset"
    )


def _real(obj: dict[str, Any], name: str, low: float, high: float) -> float:
    value = obj.get(name, _MISSING)
    kind = type(value)
    # NaN fails every comparison, so it falls through to the error like any out-of-range.
    if (kind is float or kind is int) and low <= value <= high:
        return float(value)
    if value is _MISSING:
        raise MissingField(f"{name}: required field is missing")
    raise InvalidField(f"{name}: {_show(value)} is not a number in [{low:g}, {high:g}]")


def _integer(obj: dict[str, Any], name: str, low: int, high: int) -> int:
    value = obj.get(name, _MISSING)
    kind = type(value)
    if kind is int and low <= value <= high:
        return int(value)
    if kind is float and low <= value <= high and value.is_integer():
        return int(value)
    if value is _MISSING:
        raise MissingField(f"{name}: required field is missing")
    raise InvalidField(f"{name}: {_show(value)} is not an integer in [{low}, {high}]")


def _attributes(raw: dict[str, Any]) -> dict[str, AttributeValue]:
    out: dict[str, AttributeValue] = {}
    for key, value in raw.items():
        if not (key.isdigit() and key.isascii()):
            raise InvalidAttribute(f"attributes: key {_show(key)} is not a decimal IO id")
        kind = type(value)
        if kind is int:
            out[key] = value
        elif kind is float:
            if not math.isfinite(value):  # orjson never yields these; keep it that way
                raise InvalidAttribute(f"attributes[{key}]: {value!r} is not finite")
            out[key] = value
        elif kind is dict and len(value) == 1:
            out[key] = _unsentinel(key, value)
        else:
            raise InvalidAttribute(
                f"attributes[{key}]: {_show(value)} is not a number or a sentinel object"
            )
    return out


def _unsentinel(key: str, value: dict[str, Any]) -> AttributeValue:
    ((tag, text),) = value.items()
    if type(text) is str:
        if tag == "__bigint":
            digits = text[1:] if text.startswith("-") else text
            if digits.isdigit() and digits.isascii():
                try:
                    return int(text)
                except ValueError:  # beyond Python's int-from-str digit limit
                    pass
        elif tag == "__buffer_b64" and len(text) % 4 == 0:
            # validate=True rejects stray characters and misplaced padding, but not
            # surplus padding after a whole quantum ("AQID="); the length check does.
            try:
                return base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                pass
    raise InvalidAttribute(f"attributes[{key}]: {_show(value)} is not a valid sentinel")


def _sentinel(value: AttributeValue) -> object:
    if isinstance(value, bytes):
        return {"__buffer_b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, int):
        value = int(value)  # a bool would otherwise be written as true
        if -_JS_SAFE_INT <= value <= _JS_SAFE_INT:
            return value
        return {"__bigint": str(value)}
    return value


def _js_time(moment: datetime) -> str:
    """``Date.prototype.toJSON``'s form: UTC, milliseconds, ``Z``."""
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: the contract needs an instant")
    utc = moment.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="milliseconds") + "Z"


def _bytea_text(value: object) -> str:
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    raise TypeError(f"cannot store {type(value).__name__} in attributes")


def _show(value: object) -> str:
    """A value as JSON text, cut short: for poison reasons only (never the hot path)."""
    if type(value) is str and len(value) > _SHOW_MAX:
        value = value[:_SHOW_MAX]
    try:
        text = orjson.dumps(value).decode()
    except Exception:  # e.g. nested too deep to print: the type will do
        return f"<{type(value).__name__}>"
    return text if len(text) <= _SHOW_MAX else text[:_SHOW_MAX] + "..."


def _show_raw(value: object) -> str:
    """Raw stream bytes for a poison reason, cut short."""
    if isinstance(value, bytes | bytearray | str):
        value = value[:_SHOW_MAX]
    return repr(value)
