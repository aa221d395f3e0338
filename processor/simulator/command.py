"""``processor simulate``: arguments, where the simulated clock starts, and the run.

``processor.cli`` mounts it with ``add_arguments`` and ``main``; ``python -m
processor.simulator`` runs the same command standalone.

Where the clock starts: N devices produce about N / 3 records per simulated second. A
faster ``--rate`` makes simulated time run ahead of the wall clock, so for a bounded run
(``--count``, or ``--rate`` x ``--duration``) time zero is set in the past by the
difference, and the last fixes land near "now": every timestamp passes the processor's
future check and the data looks live at the end. An unbounded run starts at "now"; if
its rate is more than the devices can produce in real time, records wait for their
receive time (a warning says so). Either way the clock starts a few seconds back, so
the first records are due at once rather than after the devices' first interval.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import psycopg
import redis

from processor import exit_codes
from processor.config import Settings
from processor.core.control import control_channel, reload_message
from processor.core.redis_io import cluster_url
from processor.simulator.generator import Plan, generate
from processor.simulator.publisher import RedisSink, Summary, publish
from processor.simulator.race import create_race, describe, race_layout
from processor.simulator.routes import BUNDLED_TRACKS, RouteError, build_routes
from processor.simulator.tracker import Timing

# Slack on the estimated simulated span, so randomness rarely lets the clock overtake.
_SPAN_MARGIN: Final = 1.2
_SPAN_SLACK_S: Final = 5.0
# Say so when a bounded run's fixes start this far back (more devices would fix that).
_NOTE_BEHIND_S: Final = 3_600.0
# After a reload request, the feed waits this long: an instance times only the fixes it
# processes after the new race is loaded (tens of milliseconds), and pub/sub gives no
# acknowledgement to wait for. Without it the first records go untimed, by chance.
_RELOAD_GRACE_S: Final = 1.0

HELP: Final = "publish simulated rally tracker records to the telemetry stream"
DESCRIPTION: Final = (
    "Publish contract records for N simulated trackers driving real GPX tracks and"
    " synthetic loops: realistic speeds and Teltonika IO bags, no-fix records, coverage"
    " gaps uploaded late and out of order, and an optional share of poison records."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``simulate`` options, on ``parser`` (a subcommand parser or a standalone one)."""
    parser.add_argument(
        "--devices", type=_positive_int, default=10, metavar="N", help="trackers [10]"
    )
    parser.add_argument(
        "--rate",
        type=_non_negative_float,
        default=50.0,
        metavar="PER_S",
        help="records per second, all devices together; 0 = as fast as possible [50]",
    )
    stop = parser.add_mutually_exclusive_group()
    stop.add_argument(
        "--duration", type=_positive_float, metavar="S", help="stop after this many seconds"
    )
    stop.add_argument(
        "--count", type=_positive_int, metavar="N", help="stop after this many records"
    )
    parser.add_argument(
        "--seed", type=int, metavar="N", help="random seed; same seed, same records [random]"
    )
    parser.add_argument(
        "--poison-ratio",
        type=_ratio,
        default=0.0,
        metavar="R",
        help="share of records that break the contract, e.g. 0.01 [0]",
    )
    parser.add_argument(
        "--gap-share",
        type=_ratio,
        default=0.05,
        metavar="R",
        help="share of time a device is out of coverage (buffered, uploaded late); 0 = none [0.05]",
    )
    parser.add_argument(
        "--gap-seconds",
        type=_positive_float,
        default=120.0,
        metavar="S",
        help="mean coverage gap [120]",
    )
    parser.add_argument(
        "--no-fix-ratio",
        type=_ratio,
        default=0.005,
        metavar="R",
        help="share of no-fix records [0.005]",
    )
    parser.add_argument(
        "--routes",
        choices=("mixed", "gpx", "synthetic"),
        default="mixed",
        help="GPX tracks, synthetic loops, or both [mixed]",
    )
    parser.add_argument(
        "--tracks",
        type=Path,
        default=BUNDLED_TRACKS,
        metavar="DIR",
        help="directory of .gpx files [the bundled real tracks]",
    )
    parser.add_argument("--stream", metavar="KEY", help="stream key [REDIS_TELEMETRY_STREAM]")
    parser.add_argument("--maxlen", type=_positive_int, metavar="N", help="XADD MAXLEN ~ this many")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--create-race",
        action="store_true",
        help="first write the matching event, entries, stages and geofences into the "
        "Directus race tables at POSTGRES_URL (development and demos; creates the tables "
        "from the SQL fixture if missing), so timing and live timing frames demo too",
    )


def main(args: argparse.Namespace, settings: Settings) -> int:
    """Run a simulation; the exit code (0, 1 Redis refused, 2 bad arguments, 69 no Redis)."""
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    try:
        plan = _plan(args, seed)
    except (RouteError, ValueError) as exc:
        print(f"processor simulate: {exc}", file=sys.stderr)
        return exit_codes.CONFIG_ERROR
    try:
        client = _connect(settings)
    except redis.exceptions.RedisClusterException as exc:
        print(f"processor simulate: Redis unavailable: {exc}", file=sys.stderr)
        return exit_codes.UNAVAILABLE
    try:
        return _run(args, settings, plan, seed, client)
    finally:
        client.close()


def _connect(settings: Settings) -> redis.Redis | redis.RedisCluster:
    """One client for the whole run. A single Redis connects on its first command; a
    cluster client asks a node for the slot map at once (``RedisClusterException``)."""
    if settings.cluster:
        return redis.RedisCluster.from_url(
            cluster_url(settings.redis_url), socket_connect_timeout=5
        )
    return redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5)


def _run(
    args: argparse.Namespace,
    settings: Settings,
    plan: Plan,
    seed: int,
    client: redis.Redis | redis.RedisCluster,
) -> int:
    if args.create_race:
        layout = race_layout(plan)
        try:
            event_id = create_race(settings.postgres_url, layout)
        except psycopg.Error as exc:
            print(f"processor simulate: cannot create the race: {exc}", file=sys.stderr)
            return exit_codes.UNAVAILABLE
        print(describe(layout, event_id))
        _announce_race(settings, client)
    total: int | None = args.count
    if args.duration and args.rate:
        total = round(args.rate * args.duration)
    now = datetime.now(UTC)
    start = start_time(plan, now, total=total, rate=args.rate)
    _warn_about_time(plan, total=total, rate=args.rate, behind_s=(now - start).total_seconds())
    records = generate(plan, start)
    stream = args.stream or settings.telemetry_stream
    shards = () if args.stream else settings.telemetry_streams
    shown = stream if len(shards) < 2 else f"{len(shards)} shards {shards[0]}..{shards[-1]}"
    summary = Summary(stream=shown, devices=plan.devices, seed=seed)
    try:
        publish(
            itertools.islice(records, args.count) if args.count else records,
            RedisSink(client, stream, args.maxlen, shards),
            summary,
            rate=args.rate,
            duration_s=args.duration,
        )
    except KeyboardInterrupt:
        summary.interrupted = True
    except redis.ConnectionError as exc:
        print(f"processor simulate: Redis unavailable: {exc}", file=sys.stderr)
        return exit_codes.UNAVAILABLE
    except redis.RedisError as exc:
        print(f"processor simulate: Redis refused: {exc}", file=sys.stderr)
        return exit_codes.FAILED
    print(json.dumps(summary.as_dict()) if args.json else summary.text())
    return exit_codes.OK


def _announce_race(settings: Settings, client: redis.Redis | redis.RedisCluster) -> None:
    """Ask running instances to load the new race now, not at their next refresh.

    On the run's own client, so a Redis Cluster URL works here too (a cluster forwards
    PUBLISH to every node; the receiver count is that of the node asked)."""
    try:
        receivers = client.publish(control_channel(settings.telemetry_stream), reload_message())
        print(f"race: reload requested from {receivers} running instance(s)")
    except redis.RedisError as exc:
        print(f"race: could not ask running instances to reload ({exc})", file=sys.stderr)
        return
    if receivers or settings.cluster:  # a cluster node counts only its own subscribers
        time.sleep(_RELOAD_GRACE_S)


def _plan(args: argparse.Namespace, seed: int) -> Plan:
    return Plan(
        routes=build_routes(args.routes, seed=seed, tracks=args.tracks),
        devices=args.devices,
        seed=seed,
        poison_ratio=args.poison_ratio,
        timing=Timing(
            nofix_ratio=args.no_fix_ratio, gap_share=args.gap_share, gap_mean_s=args.gap_seconds
        ),
    )


def _warn_about_time(plan: Plan, *, total: int | None, rate: float, behind_s: float) -> None:
    """Say when the devices cannot make the asked rate in real time (see the docstring)."""
    real_time = plan.records_per_second
    if total is None and (rate == 0 or rate > real_time):
        print(
            f"processor simulate: {plan.devices} devices produce about {real_time:.1f}"
            " records/s in real time; without --count or --duration the rate is held to"
            " that (add devices for more)",
            file=sys.stderr,
        )
    elif behind_s > _NOTE_BEHIND_S:
        print(
            f"processor simulate: fix times start {behind_s / 3600:.1f} h ago, as"
            f" {plan.devices} devices produce only {real_time:.1f} records/s in real time",
            file=sys.stderr,
        )


def start_time(plan: Plan, now: datetime, *, total: int | None, rate: float) -> datetime:
    """Time zero of the simulated clock: early enough that the last fix is not ahead of
    the wall clock when ``total`` records go out at ``rate`` (see the module docstring)."""
    if total is None:
        return now - timedelta(seconds=_SPAN_SLACK_S)
    span_s = total / plan.records_per_second * _SPAN_MARGIN + _SPAN_SLACK_S
    wall_s = total / rate if rate > 0 else 0.0
    return now - timedelta(seconds=max(0.0, span_s - wall_s))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a number >= 0")
    return value


def _ratio(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1)")
    return value
