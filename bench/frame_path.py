"""The broadcast's own CPU per delivered frame, without sockets, Redis or the event loop.

``python -m bench.frame_path [--clients 500] [--events 20] [--devices 2000] [--repeat 5]``:
the real ``Hub.publish_many`` -> ``Subscription.offer_many`` -> ``Client.push_many`` ->
``Outbox`` over fixes of entered devices in the tail's bursts of ``--tick`` fixes, every
subscribed client's outbox taken after each burst as its writer takes it (``get_many``'s
take, up to ``WRITE_BATCH_BYTES``), in one process. What it leaves out: the tail's read
and decode, the writers' task switches and their socket writes.

Why it exists: ``bench.fanout``'s latency and loss follow how much CPU each process gets
on a shared 2-core machine far more than the broadcast's own cost, so a change to the
per-frame path cannot be seen there. Here the same work repeats within a few %.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
import trio
from prometheus_client import CollectorRegistry

from bench.harness import machine, print_table, write_json
from processor.broadcast.client import WRITE_BATCH_BYTES, Client
from processor.broadcast.hub import Hub
from processor.broadcast.metrics import BroadcastMetrics
from processor.broadcast.roster import Roster, RosterKeeper
from processor.broadcast.subscription import Subscription
from processor.cli import _tune_gc as tune_gc
from tests.helpers import make_position  # the tests' fix, as bench.fanout uses their Directus stub


def run(
    clients: int, events: int, devices: int, seconds: int, tick: int, repeat: int
) -> dict[str, Any]:
    metrics = BroadcastMetrics.create(CollectorRegistry())
    keeper = RosterKeeper(store=None, interval_s=30, log=structlog.get_logger())  # type: ignore[arg-type]
    keeper.current = Roster.from_rows((f"dev{d}", f"e{d % events}", d) for d in range(devices))
    hub = Hub(keeper, metrics)
    recipients = []
    for c in range(clients):
        client = Client(
            ws=None,  # type: ignore[arg-type]  # nothing here writes to a socket
            user_id=f"u{c}",
            outbox_capacity=256,
            metrics=metrics,
            ping_interval_s=25,
            ping_timeout_s=10,
            send_deadline_s=10,
        )
        sub = Subscription(client, f"e{c % events}")
        sub.release("{}", {})
        hub.add(sub)
        recipients.append(client)
    fixes = [make_position(f"dev{d}", s) for s in range(1, seconds + 1) for d in range(devices)]
    # The tail's bursts (its reads, as ``StreamTail`` builds them: fix, entry id).
    bursts = [[(p, None) for p in fixes[i : i + tick]] for i in range(0, len(fixes), tick)]
    ns_per_frame: list[float] = []
    frames = 0

    def one_pass() -> None:
        nonlocal frames
        hub.last.clear()  # every pass delivers the same fixes again
        frames = 0
        started = time.process_time()
        for burst in bursts:  # as the tail hands them over, then its writers take
            hub.publish_many(burst)
            for client in recipients:
                frames += len(client.outbox._take(WRITE_BATCH_BYTES))
        ns_per_frame.append((time.process_time() - started) / frames * 1e9)

    async def main() -> None:  # Outbox holds a trio.Event: made inside a run
        for _ in range(repeat):
            one_pass()

    tune_gc()  # the daemon's collector settings
    trio.run(main)
    return {
        "clients": clients,
        "events": events,
        "devices": devices,
        "fixes": len(fixes),
        "tick": tick,
        "frames_per_pass": frames,
        "expected_frames_per_pass": len(fixes) * clients // events,
        "ns_per_frame": ns_per_frame,
        "best_ns_per_frame": min(ns_per_frame),
        "median_ns_per_frame": statistics.median(ns_per_frame),
        "machine": machine(),
        "at": datetime.now(UTC).isoformat(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--devices", type=int, default=2_000)
    parser.add_argument("--seconds", type=int, default=6, help="fixes per device")
    parser.add_argument(
        "--tick", type=int, default=60, help="fixes per burst (between writer takes)"
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    result = run(args.clients, args.events, args.devices, args.seconds, args.tick, args.repeat)
    if result["frames_per_pass"] != result["expected_frames_per_pass"]:
        print(f"delivered {result['frames_per_pass']} frames, expected "
              f"{result['expected_frames_per_pass']}")  # fmt: skip
        return 1
    print_table(
        "broadcast CPU per delivered frame, no sockets (Hub.publish -> outbox -> take)",
        ["clients", "events", "frames/pass", "best ns/frame", "median ns/frame"],
        [[args.clients, args.events, f"{result['frames_per_pass']:,}",
          f"{result['best_ns_per_frame']:,.0f}", f"{result['median_ns_per_frame']:,.0f}"]],
    )  # fmt: skip
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
