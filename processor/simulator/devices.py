"""Simulated Teltonika trackers: who they are and the IO element bag they report.

The IO bag is where the contract's awkward cases live, so every record carries them:

- 11 (ICCID, first part) is an 8-byte value above 2^53: every record needs the
  ``__bigint`` sentinel, as real FMB/FMC units do.
- 16 (total odometer, metres): some devices report a bogus 8-byte value (a firmware
  glitch seen in the field), also beyond 2^53.
- 385 (BLE beacon list) is a Codec 8E variable-length NX element: bytes, so the
  ``__buffer_b64`` sentinel. Only Codec 8E devices can send it.
- 66 / 67 are millivolts (external supply, internal battery), 21 is GSM signal 0-5,
  239 / 240 ignition and movement, 69 GNSS status, 181 / 182 PDOP / HDOP in tenths.
"""

from __future__ import annotations

import random
from typing import Final

import attrs

from processor.core.model import AttributeValue

# Two models the race-domain spec names, with a TAC (first 8 IMEI digits) and the codec
# they are configured for. The FMB920 speaks Codec 8: one-byte IO ids, no NX elements.
MODELS: Final = (("FMC130", "35209311", "8E"), ("FMB920", "35630704", "8"))
# Every this-many-th device (the last of each group) has the bogus 8-byte odometer.
BOGUS_ODOMETER_EVERY: Final = 5
_BOGUS_HIGH: Final = 0xFFFF_FFFF << 32
_BEACON_SHARE: Final = 0.2  # records of an 8E device that saw beacons nearby


@attrs.frozen(kw_only=True)
class Device:
    index: int
    imei: str
    model: str
    codec: str
    iccid: int
    bogus_odometer: bool
    beacons: tuple[bytes, ...]  # UUID + major + minor of beacons on the crew's kit


def make_device(index: int, rng: random.Random, serial_base: int) -> Device:
    """Device ``index`` of a run; ``serial_base`` (one per run) keeps IMEIs unique."""
    model, tac, codec = MODELS[index % len(MODELS)]
    body = f"{tac}{(serial_base + index) % 1_000_000:06d}"
    return Device(
        index=index,
        imei=body + _luhn_digit(body),
        model=model,
        codec=codec,
        iccid=int("8938" + "".join(rng.choice("0123456789") for _ in range(15))),
        bogus_odometer=index % BOGUS_ODOMETER_EVERY == BOGUS_ODOMETER_EVERY - 1,
        beacons=tuple(rng.randbytes(20) for _ in range(rng.randint(1, 3))),
    )


@attrs.define(kw_only=True)
class Telemetry:
    """The slowly changing readings behind the IO bag (signal, voltages, odometer)."""

    odometer_m: float
    signal: int = 4
    battery_mv: int = 4100

    def io_bag(
        self,
        device: Device,
        rng: random.Random,
        *,
        ignition: bool,
        moving: bool,
        fix: bool,
        covered: bool,
    ) -> dict[str, AttributeValue]:
        """One record's IO elements (key = IO id as a decimal string, the contract's form)."""
        self.signal = max(1, min(5, self.signal + rng.choice((-1, 0, 0, 0, 1))))
        self.battery_mv = max(3700, min(4200, self.battery_mv + rng.randint(-5, 5)))
        odometer = int(self.odometer_m)
        bag: dict[str, AttributeValue] = {
            "239": int(ignition),
            "240": int(moving),
            "21": self.signal if covered else 0,
            "69": 1 if fix else 2,
            "181": rng.randint(8, 20) if fix else 0,
            "182": rng.randint(6, 15) if fix else 0,
            "66": rng.randint(13_600, 14_400) if ignition else rng.randint(12_200, 12_700),
            "67": self.battery_mv,
            "16": _BOGUS_HIGH | odometer if device.bogus_odometer else odometer,
            "11": device.iccid,
        }
        if device.codec == "8E" and rng.random() < _BEACON_SHARE:
            bag["385"] = beacon_list(device, rng)
        return bag


def beacon_list(device: Device, rng: random.Random) -> bytes:
    """IO 385 as Teltonika lays it out: 0x11, then per beacon flags, iBeacon id, RSSI."""
    out = bytearray(b"\x11")
    for beacon in device.beacons:
        out += b"\x21" + beacon + rng.randint(-95, -40).to_bytes(1, "big", signed=True)
    return bytes(out)


def _luhn_digit(body: str) -> str:
    """The IMEI check digit (Luhn over the first 14 digits)."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return str((10 - total % 10) % 10)
