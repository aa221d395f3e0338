"""Latency vs batching: BATCH_LINGER_MS x BATCH_MAX, p50/p99 at a steady rate, max rate.

For every combination of ``--lingers`` x ``--batches`` (default {5, 20, 50, 100} ms x
{250, 1000}) one fresh ``processor run`` is started with those settings and

1. drains a backlog of ``--backlog`` records (default 60,000): its records/s is the
   **max sustainable rate** with that setting (under a backlog batches fill up to
   BATCH_MAX and the linger never fires, so this is the most the setting can keep up with);
2. then, idle, gets ``--rate`` records/s (default 2,000) for ``--seconds`` (default 10):
   XADD -> committed-row latency per record, exactly ``bench.run``'s latency phase
   (``phase_latency``: latency = ``ingested_at`` - the entry id's millisecond time).

The default setting (50 ms, 1000) is measured ``--repeat-default`` times (default 3),
interleaved with the others, so its p99 comes with a range. Target: p99 < 150 ms at 2,000
records/s with defaults. JSON: ``bench/results/latency.json``.

    python -m bench.latency [--rate 2000] [--seconds 10] [--lingers 5,20,50,100] [--repeat 2]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.harness import (
    RESULTS_DIR,
    Fleet,
    Sandbox,
    add_common_args,
    exit_on_bench_error,
    fmt_spread,
    install_sigterm,
    log,
    machine,
    parse_env,
    print_table,
    spread,
    write_json,
)
from bench.run import phase_latency
from processor.core.codec import encode

DEFAULT_LINGER, DEFAULT_BATCH = 50, 1000
TARGET_P99_MS = 150.0


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def run(args: argparse.Namespace) -> int:
    extra = parse_env(args.processor_env)
    configs = [(linger, batch) for batch in args.batches for linger in args.lingers]
    # The default setting is repeated, spread over the run (start, middle, end).
    # Every setting --repeat times (alternate rounds reversed); the default setting at least
    # --repeat-default times, the extra runs spread over the plan.
    plan: list[tuple[int, int]] = []
    for k in range(args.repeat):
        plan += configs if k % 2 == 0 else configs[::-1]
    extra_default = args.repeat_default - args.repeat
    if (DEFAULT_LINGER, DEFAULT_BATCH) in configs and extra_default > 0:
        for k in range(1, extra_default + 1):
            at = round(len(plan) * k / extra_default) - 1 + k
            plan.insert(min(at, len(plan)), (DEFAULT_LINGER, DEFAULT_BATCH))
    per_run = int(args.rate * args.seconds)
    fleet = Fleet.create(args.devices, args.backlog + per_run * len(plan), args.seed)
    backlog = [encode(p) for p in fleet.take(args.backlog)]
    runs: list[dict[str, Any]] = []
    result: dict[str, Any] = {
        "machine": machine(),
        "params": {
            "rate": args.rate,
            "seconds": args.seconds,
            "backlog": args.backlog,
            "devices": args.devices,
            "lingers_ms": args.lingers,
            "batches": args.batches,
            "processor_env": extra,
        },
        "runs": runs,
    }
    with Sandbox.open(args.admin_url, args.redis_url) as sb:
        for linger, batch in plan:
            env = {"BATCH_LINGER_MS": str(linger), "BATCH_MAX": str(batch)} | extra
            drained = sb.drain(backlog, env, label=f"l{linger}-b{batch}", keep_running=True)
            proc = drained.pop("procs")[0]
            try:
                lat_args = argparse.Namespace(latency_rate=args.rate, latency_seconds=args.seconds)
                latency = phase_latency(
                    lat_args, sb.url, sb.r, drained["stream"], drained["group"], fleet, proc
                )
                sb.stop(proc)
            finally:
                proc.kill()
                sb.drop_stream(drained["stream"])
            runs.append(
                {
                    "linger_ms": linger,
                    "batch_max": batch,
                    "max_rate_records_per_s": drained["records_per_s"],
                    "drain_cpu_percent": drained["cpu_percent"],
                    "latency": latency,
                }
            )
    table: list[dict[str, Any]] = []
    for linger, batch in configs:
        mine = [r for r in runs if (r["linger_ms"], r["batch_max"]) == (linger, batch)]
        row = {
            "linger_ms": linger,
            "batch_max": batch,
            "runs": len(mine),
            "p50_ms": spread([r["latency"]["p50_ms"] for r in mine]),
            "p99_ms": spread([r["latency"]["p99_ms"] for r in mine]),
            "max_ms": spread([r["latency"]["max_ms"] for r in mine]),
            "max_rate": spread([r["max_rate_records_per_s"] for r in mine]),
        }
        table.append(row)
    result["table"] = table
    default = next(
        (t for t in table if (t["linger_ms"], t["batch_max"]) == (DEFAULT_LINGER, DEFAULT_BATCH)),
        None,
    )
    if default:
        result["default_p99_ms"] = default["p99_ms"]
        result["default_p99_target_met"] = default["p99_ms"]["max"] < TARGET_P99_MS
    print_table(
        f"XADD -> committed row at {args.rate:,.0f} rec/s for {args.seconds:g} s "
        f"(median [min-max] over runs); max rate = backlog drain with the same setting",
        ("BATCH_LINGER_MS", "BATCH_MAX", "runs", "p50 ms", "p99 ms", "max ms", "max rate rec/s"),
        [
            (t["linger_ms"], t["batch_max"], t["runs"], fmt_spread(t["p50_ms"], digits=1),
             fmt_spread(t["p99_ms"], digits=1), fmt_spread(t["max_ms"]), fmt_spread(t["max_rate"]))
            for t in table
        ],
    )  # fmt: skip
    if default:
        verdict = "met" if result["default_p99_target_met"] else "NOT met"
        print(
            f"defaults ({DEFAULT_LINGER} ms, {DEFAULT_BATCH}): p99 "
            f"{fmt_spread(default['p99_ms'], ' ms', 1)}; target < {TARGET_P99_MS:g} ms "
            f"(every run): {verdict}"
        )
    log("done")
    write_json(Path(args.out), result)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.latency", description=__doc__.split("\n\n", 1)[0]
    )
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--backlog", type=int, default=60_000)
    parser.add_argument("--devices", type=int, default=5_000)
    parser.add_argument("--lingers", type=_ints, default=[5, 20, 50, 100])
    parser.add_argument("--batches", type=_ints, default=[250, 1000])
    parser.add_argument("--repeat", type=int, default=1, help="runs of every setting")
    parser.add_argument(
        "--repeat-default", type=int, default=3, help="runs of the default setting (at least)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS_DIR / "latency.json"))
    add_common_args(parser)
    args = parser.parse_args(argv)
    install_sigterm()
    return exit_on_bench_error(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
