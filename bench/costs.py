"""Cost of correctness and of the plug-ins, as throughput lost, within one run.

**Switches** (the same records through a fresh processor per variant, variants
interleaved over ``--rounds`` rounds, ratio to ``defaults`` of the same round). The
records are published into the *running* processor (``live``; ``--backlog`` publishes
first): the broadcast plug-in's tail starts at the stream's newest entry, so only live
records show its cost.

- ``defaults``: everything on (claimer every 10 s, race domain, WebSocket broadcast);
- ``claimer idle``: ``CLAIM_INTERVAL_MS=3600000`` (one sweep at start, then asleep);
- ``domain off`` / ``ws off`` / ``plug-ins off``: ``DOMAIN_ENABLED`` / ``WS_ENABLED`` false
  (with no Directus tables the domain is the IO mapping per record; the broadcast with no
  client connected is its stream tail).

**Rehydration** (no switch): ``--rehydrate-devices`` distinct devices, one record each,
through one running processor (defaults), three passes, ``--rounds`` times with new
devices:

- ``first sight``: every device is new: one rehydration lookup each, finding no row;
- ``warm``: the same devices again (1 s later) in the same process: no lookup at all;
- ``after restart``: again, in a fresh process: every device is looked up and found.

Each pass's rate is N / (last - first ``ingested_at`` of its rows) (records are published
as fast as Redis takes them, so the processor always has a backlog).

The dead-letter router has no switch: it only wakes when a dead letter arrives, so its
idle cost is nil by construction; ``bench.profile`` shows its sample share (0).
JSON: ``bench/results/costs.json``.

    python -m bench.costs [--records 100000] [--rounds 3] [--rehydrate-devices 50000]
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.harness import (
    RESULTS_DIR,
    Sandbox,
    add_common_args,
    distinct_device_fields,
    exit_on_bench_error,
    fleet_fields,
    fmt_spread,
    install_sigterm,
    log,
    machine,
    parse_env,
    print_table,
    spread,
    write_json,
)
from bench.run import pg_connect, publish, rate, wait_drained

VARIANTS: dict[str, dict[str, str]] = {
    "defaults": {},
    "claimer idle": {"CLAIM_INTERVAL_MS": "3600000"},
    "domain off": {"DOMAIN_ENABLED": "false"},
    "ws off": {"WS_ENABLED": "false"},
    "plug-ins off": {"DOMAIN_ENABLED": "false", "WS_ENABLED": "false"},
}
TARGET_COST = 0.05


def _rehydrations(url: str | None) -> float | None:
    if not url:
        return None
    with urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("processor_rehydrations_total"):
                return float(line.rpartition(" ")[2])
    return None


def rehydration_passes(
    sb: Sandbox, devices: int, first: int, env: dict[str, str]
) -> dict[str, dict[str, Any]]:
    stream, group = sb.stream(f"rehydrate-{first}"), "bench"
    ts0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
    out: dict[str, dict[str, Any]] = {}
    proc = sb.start(stream, group, env)
    try:
        for k, name in enumerate(("first sight", "warm", "after restart")):
            if name == "after restart":
                sb.stop(proc)
                proc = sb.start(stream, group, env, name="bench-2")
            http = proc.wait_event("http listening", 60).get("url")
            proc.wait_event("ready", 60)
            before = _rehydrations(http) or 0.0
            ts = ts0 + timedelta(seconds=k)
            fields = distinct_device_fields(first, devices, ts)
            publish(sb.r, stream, fields)
            wait_drained(sb.r, stream, group, devices, alive=proc.alive)
            with pg_connect(sb.url) as conn:
                count, lo, hi = conn.execute(
                    "SELECT count(*), min(ingested_at), max(ingested_at) FROM positions"
                    " WHERE ts = %s AND device_id >= %s AND device_id <= %s",
                    (ts, f"35{first:013d}", f"35{first + devices - 1:013d}"),
                ).fetchone()  # type: ignore[misc]
            if count != devices:
                log(f"rehydration pass {name}: {count} rows, expected {devices}")
            time.sleep(0.3)
            after = _rehydrations(http) or 0.0
            out[name] = {
                "records": devices,
                "records_per_s": rate(devices, (hi - lo).total_seconds()),
                "rehydrated_found": after - before,
            }
            log(f"rehydration {name}: {out[name]['records_per_s']:,.0f} rec/s")
        sb.stop(proc)
    finally:
        proc.kill()
        sb.drop_stream(stream)
    return out


def run(args: argparse.Namespace) -> int:
    extra = parse_env(args.processor_env)
    runs: list[dict[str, Any]] = []
    rehydration: list[dict[str, Any]] = []
    result: dict[str, Any] = {
        "machine": machine(),
        "params": {
            "records": args.records,
            "devices": args.devices,
            "rounds": args.rounds,
            "rehydrate_devices": args.rehydrate_devices,
            "live": args.live,
            "processor_env": extra,
            "variants": VARIANTS,
        },
        "runs": runs,
        "rehydration": rehydration,
    }
    with Sandbox.open(args.admin_url, args.redis_url) as sb:
        _, fields = fleet_fields(args.records, args.devices)
        for k in range(args.rounds):
            names = list(VARIANTS)
            if k % 2:
                names.reverse()
            for name in names:
                r = sb.drain(
                    fields, VARIANTS[name] | extra, label=name.replace(" ", "-"), live=args.live
                )
                runs.append({"round": k, "variant": name, **r})
        sb.truncate()
        if args.rehydrate_devices:
            for k in range(args.rounds):
                passes = rehydration_passes(
                    sb, args.rehydrate_devices, k * args.rehydrate_devices, extra
                )
                rehydration.append({"round": k, **passes})
    table: list[dict[str, Any]] = []
    for name in VARIANTS:
        mine = {r["round"]: r for r in runs if r["variant"] == name}
        base = {r["round"]: r for r in runs if r["variant"] == "defaults"}
        ratios = [mine[k]["records_per_s"] / base[k]["records_per_s"] for k in mine]
        cpu_us = [
            r["cpu_percent"]["processor"] / 100 / r["records_per_s"] * 1e6 for r in mine.values()
        ]
        table.append(
            {
                "variant": name,
                "env": VARIANTS[name],
                "records_per_s": spread([r["records_per_s"] for r in mine.values()]),
                "ratio_to_defaults": spread(ratios),
                "processor_cpu_us_per_record": spread(cpu_us),
            }
        )
    result["table"] = table
    print_table(
        f"cost of correctness / plug-ins: {args.records:,} records, {args.devices:,} devices, "
        f"{args.rounds} interleaved rounds (median [min-max])",
        ("variant", "records/s", "rate / defaults", "processor CPU µs/rec"),
        [
            (t["variant"], fmt_spread(t["records_per_s"]),
             fmt_spread(t["ratio_to_defaults"], "", 3),
             fmt_spread(t["processor_cpu_us_per_record"], "", 1))
            for t in table
        ],
    )  # fmt: skip
    if rehydration:
        pass_names = ("first sight", "warm", "after restart")
        rows: list[tuple[str, str, str, str]] = []
        summary: dict[str, Any] = {}
        for p in pass_names:
            rates = [r[p]["records_per_s"] for r in rehydration]
            vs_warm = [r[p]["records_per_s"] / r["warm"]["records_per_s"] for r in rehydration]
            found = [r[p]["rehydrated_found"] for r in rehydration]
            summary[p] = {"records_per_s": spread(rates), "ratio_to_warm": spread(vs_warm)}
            rows.append(
                (p, fmt_spread(spread(rates)), fmt_spread(spread(vs_warm), "", 3),
                 f"{sum(found) / len(found):,.0f}")
            )  # fmt: skip
        result["rehydration_summary"] = summary
        print_table(
            f"rehydration: {args.rehydrate_devices:,} distinct devices, one record each, "
            f"{args.rounds} rounds",
            ("pass", "records/s", "rate / warm", "rows found by rehydration"),
            rows,
        )
    write_json(Path(args.out), result)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.costs", description=__doc__.split("\n\n", 1)[0]
    )
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--devices", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rehydrate-devices", type=int, default=50_000)
    parser.add_argument(
        "--backlog",
        dest="live",
        action="store_false",
        help="publish before the processor starts (the broadcast tail then sees nothing)",
    )
    parser.add_argument("--out", default=str(RESULTS_DIR / "costs.json"))
    add_common_args(parser)
    args = parser.parse_args(argv)
    install_sigterm()
    return exit_on_bench_error(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
