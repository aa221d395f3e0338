"""Poison records: broken versions of real ones, one of each kind the contract rejects.

Each variant breaks one rule, as a buggy ingestion release or a corrupted packet would,
so the dead-letter stream fills with several error kinds (malformed payload, invalid
field, unknown version, invalid attribute, future timestamp, missing field) rather than
one, and the DLQ tooling and metrics get exercised per kind.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Final

import orjson

Fields = dict[bytes, bytes]
_Mutate = Callable[[random.Random, dict[str, Any]], Fields]


def _payload(obj: dict[str, Any]) -> Fields:
    return {b"payload": orjson.dumps(obj)}


def _malformed_json(rng: random.Random, obj: dict[str, Any]) -> Fields:
    # Cut mid-object, as a truncated write would: never valid JSON.
    raw = orjson.dumps(obj)
    return {b"payload": raw[: rng.randint(1, len(raw) // 2)]}


def _bad_device_id(rng: random.Random, obj: dict[str, Any]) -> Fields:
    imei = obj["device_id"]
    obj["device_id"] = rng.choice((f"IMEI:{imei}", f"{imei[:7]} {imei[7:]}", imei * 2, ""))
    return _payload(obj)


def _latitude_out_of_range(rng: random.Random, obj: dict[str, Any]) -> Fields:
    obj["latitude"] = rng.choice((1, -1)) * rng.uniform(90.001, 180.0)
    return _payload(obj)


def _unknown_version(rng: random.Random, obj: dict[str, Any]) -> Fields:
    return {**_payload(obj), b"v": b"2"}


def _bad_bigint(rng: random.Random, obj: dict[str, Any]) -> Fields:
    obj["attributes"]["16"] = {"__bigint": rng.choice(("18446744073709551615x", "1e19", "0x10"))}
    return _payload(obj)


def _bad_buffer(rng: random.Random, obj: dict[str, Any]) -> Fields:
    obj["attributes"]["385"] = {"__buffer_b64": rng.choice(("not base64!", "AQI", "AQID="))}
    return _payload(obj)


def _future_timestamp(rng: random.Random, obj: dict[str, Any]) -> Fields:
    # A tracker whose clock jumped years ahead: beyond any plausible FUTURE_TOLERANCE_S.
    ts = datetime.fromisoformat(obj["timestamp"]) + timedelta(days=rng.randint(3_650, 7_300))
    obj["timestamp"] = ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return _payload(obj)


def _missing_field(rng: random.Random, obj: dict[str, Any]) -> Fields:
    del obj[rng.choice(("timestamp", "latitude", "satellites", "attributes"))]
    return _payload(obj)


VARIANTS: Final[dict[str, _Mutate]] = {
    "malformed_json": _malformed_json,
    "bad_device_id": _bad_device_id,
    "latitude_out_of_range": _latitude_out_of_range,
    "unknown_version": _unknown_version,
    "bad_bigint": _bad_bigint,
    "bad_buffer": _bad_buffer,
    "future_timestamp": _future_timestamp,
    "missing_field": _missing_field,
}
_NAMES: Final = tuple(VARIANTS)


def spoil(rng: random.Random, valid: Fields) -> tuple[str, Fields]:
    """A poison version of a valid record's fields, and the name of the variant used."""
    name = rng.choice(_NAMES)
    return name, VARIANTS[name](rng, orjson.loads(valid[b"payload"]))
