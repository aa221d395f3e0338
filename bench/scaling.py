"""Scaling: one vs two ``processor run`` instances on one consumer group.

The database is taken out of the way by ``ALTER DATABASE <bench db> SET synchronous_commit
= off`` (per database; no WAL flush wait at commit, everything else unchanged: the table
stays logged). Each round drains the same backlog of ``--records`` records (``--devices``
trackers) once with one instance and once with two (consumer names ``bench-1``,
``bench-2``, same group), alternating the order, ``--rounds`` times. Rate = N / (newest
``ingested_at`` - the earliest ``ready``). CPU while draining (percent of one core, from
``/proc/<pid>/stat`` for the processors and their PostgreSQL backends, ``INFO cpu`` for
Redis) shows where the ceiling moves: the machine has ``os.cpu_count()`` cores in total.

``--null-sink`` takes the database out altogether (``bench.null_sink``: the rows are
formatted for the COPY, then dropped), the "write path that is cheap" of issue 6: what is
left to share the cores is the processors and Redis. Such a drain is timed by the
group's acks, not by stored rows.

Target: two instances >= 1.6x one. JSON: ``bench/results/scaling.json``
(``scaling_null_sink.json`` with ``--null-sink``).

    python -m bench.scaling [--records 200000] [--devices 5000] [--rounds 3] [--null-sink]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.harness import (
    RESULTS_DIR,
    Sandbox,
    add_common_args,
    copy_ceiling,
    exit_on_bench_error,
    fleet_fields,
    fmt_spread,
    install_sigterm,
    machine,
    parse_env,
    pg_connect,
    print_table,
    spread,
    write_json,
)
from bench.run import domain_enabled

TARGET_RATIO = 1.6


def run(args: argparse.Namespace) -> int:
    env = parse_env(args.processor_env)
    domain = domain_enabled(env)
    runs: list[dict[str, Any]] = []
    result: dict[str, Any] = {
        "machine": machine(),
        "params": {
            "records": args.records,
            "devices": args.devices,
            "rounds": args.rounds,
            "processor_env": env,
            "database": "ALTER DATABASE ... SET synchronous_commit = off",
            "unlogged": args.unlogged,
            "null_sink": args.null_sink,
        },
        "runs": runs,
    }
    with Sandbox.open(
        args.admin_url, args.redis_url, database_settings={"synchronous_commit": "off"}
    ) as sb:
        if args.unlogged:
            # The cheapest logged-free write path PostgreSQL has: no WAL for the table.
            with pg_connect(sb.url, autocommit=True) as conn:
                conn.execute("ALTER TABLE positions SET UNLOGGED")
        sb.null_sink = args.null_sink
        _, fields = fleet_fields(args.records, args.devices)
        ceilings = [copy_ceiling(sb, args.records, args.devices, domain=domain)]
        for k in range(args.rounds):
            order = (1, 2) if k % 2 == 0 else (2, 1)
            for n in order:
                r = sb.drain(fields, env, instances=n, label=f"scale{n}")
                runs.append({"round": k, **r})
        ceilings.append(copy_ceiling(sb, args.records, args.devices, domain=domain))
    result["copy_ceiling_records_per_s"] = sum(ceilings) / len(ceilings)
    one = [r for r in runs if r["instances"] == 1]
    two = [r for r in runs if r["instances"] == 2]
    ratios = [
        b["records_per_s"] / a["records_per_s"]
        for a, b in zip(
            sorted(one, key=lambda r: r["round"]),
            sorted(two, key=lambda r: r["round"]),
            strict=True,
        )
    ]
    result["ratio_two_over_one"] = spread(ratios)
    result["target_met"] = result["ratio_two_over_one"]["median"] >= TARGET_RATIO

    def cpu_summary(rs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
        keys = rs[0]["cpu_percent"].keys()
        return {k: spread([r["cpu_percent"][k] for r in rs]) for k in keys}

    result["summary"] = {
        "one": {
            "records_per_s": spread([r["records_per_s"] for r in one]),
            "cpu": cpu_summary(one),
        },
        "two": {
            "records_per_s": spread([r["records_per_s"] for r in two]),
            "cpu": cpu_summary(two),
        },
    }
    rows = []
    for label, rs in (("1 instance", one), ("2 instances", two)):
        cpu = cpu_summary(rs)
        total = spread([sum(r["cpu_percent"].values()) for r in rs])
        rows.append(
            (
                label,
                fmt_spread(spread([r["records_per_s"] for r in rs])),
                ", ".join(f"{k} {v['median']:.0f}%" for k, v in cpu.items()),
                f"{total['median']:.0f}% of {100 * (os.cpu_count() or 1)}%",
            )
        )
    print_table(
        f"scaling: {args.records:,} records, {args.devices:,} devices, synchronous_commit=off"
        f"{', positions UNLOGGED' if args.unlogged else ''}"
        f"{', null sink (nothing stored)' if args.null_sink else ''}, "
        f"{args.rounds} rounds (median [min-max]); COPY ceiling "
        f"{result['copy_ceiling_records_per_s']:,.0f} rec/s",
        ("", "records/s", "CPU while draining (median, % of one core)", "total CPU"),
        rows,
    )
    verdict = "met" if result["target_met"] else "NOT met"
    print(
        f"two / one: {fmt_spread(result['ratio_two_over_one'], 'x', 2)} "
        f"(target >= {TARGET_RATIO}x: {verdict})"
    )
    write_json(Path(args.out), result)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scaling", description=__doc__.split("\n\n", 1)[0]
    )
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--devices", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--unlogged", action="store_true",
                        help="positions as an UNLOGGED table (no WAL): a cheaper write path, "
                        "to see where the ceiling moves when the database costs less")  # fmt: skip
    parser.add_argument("--null-sink", action="store_true",
                        help="no database write at all (bench.null_sink): where the ceiling "
                        "moves when only the processors and Redis share the cores")  # fmt: skip
    parser.add_argument("--out", help="JSON (bench/results/scaling.json, "
                        "scaling_null_sink.json with --null-sink)")  # fmt: skip
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.out is None:
        name = "scaling_null_sink.json" if args.null_sink else "scaling.json"
        args.out = str(RESULTS_DIR / name)
    install_sigterm()
    return exit_on_bench_error(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
