"""``processor rehydrate DEVICE``: make running instances reload a device from storage.

A daemon's hot state is in its own memory, so the CLI cannot change it; it publishes a
request on the control channel (``core.control``) and each running instance drops the
device and reseeds it from PostgreSQL's newest row. Use it after correcting stored rows
(say, deleting a bogus far-future fix) so "last position" follows the database.

Pub/sub is fire-and-forget: the receiver count says how many instances got the request
(0 means none is running or subscribed, and nothing needed doing in memory).
"""

from __future__ import annotations

import argparse
from typing import Any

from processor.core.control import control_channel, rehydrate_message
from processor.core.model import Position
from processor.core.pg_io import PostgresUnavailable
from processor.operator import validate
from processor.operator.output import iso, pairs
from processor.operator.session import ENV_HELP, Context, Report, Subparsers


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "rehydrate",
        parents=[common],
        epilog=ENV_HELP,
        help="make running instances reload a device's state from PostgreSQL",
        description="Publish a rehydrate request for DEVICE on <stream>:control: every "
        "running instance drops the device's hot state and reseeds it from the newest "
        "stored row. Prints how many instances received it and that newest row.",
    )
    parser.add_argument("device", type=validate.device_id, metavar="DEVICE", help="device id")
    parser.set_defaults(handler=run, prog=parser.prog)


async def run(ctx: Context, args: argparse.Namespace) -> Report:
    channel = control_channel(ctx.settings.telemetry_stream)
    streams = await ctx.redis()
    receivers = await streams.publish(channel, rehydrate_message(args.device))
    try:
        newest = await (await ctx.postgres()).newest([args.device])
    except PostgresUnavailable as exc:
        raise PostgresUnavailable(
            f"{exc} (the request was still sent to {receivers} instance(s))"
        ) from exc
    data = {
        "device_id": args.device,
        "channel": channel,
        "receivers": receivers,
        "newest": position_json(newest[0]) if newest else None,
    }
    return Report(data, _text(data))


def position_json(p: Position) -> dict[str, Any]:
    return {
        "ts": iso(p.ts),
        "latitude": p.latitude,
        "longitude": p.longitude,
        "altitude": p.altitude,
        "heading": p.heading,
        "speed": p.speed,
        "satellites": p.satellites,
        "priority": p.priority,
        "event_io_id": p.event_io_id,
        "fix_valid": p.fix_valid,
        "received_at": iso(p.received_at) if p.received_at else None,
        "attributes": {
            k: f"\\x{v.hex()}" if isinstance(v, bytes) else v for k, v in p.attributes.items()
        },
    }


def _text(data: dict[str, Any]) -> str:
    n = data["receivers"]
    head = f"rehydrate {data['device_id']}: sent on {data['channel']}, received by {n} instance(s)"
    if n == 0:
        head += " (no instance is subscribed: nothing held in memory)"
    newest = data["newest"]
    if newest is None:
        held = ": the instances now hold no last position for it" if n else ""
        return head + "\nno stored fix for this device" + held
    rows = [(k, v) for k, v in newest.items() if k != "attributes"]
    return head + "\nnewest stored fix:\n" + pairs(rows)
