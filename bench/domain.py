"""Race-domain cost: per fix on the hot path, and as pipeline throughput lost.

200 geofences (one event: 150 lines across a 1.5-degree stage, 50 zones) and 1,000
devices each carrying an entry; every device drives east at ~150 km/h with a fix every
5 s. Issue 5's targets: under 20 µs per fix on the hot path, and no drop in pipeline
throughput beyond 15%.

- **hot path** (in-process, no I/O): ``IoEnricher.derive`` and ``LiveEngine.ingest``
  (tracks warm, in-order fixes, batches of 1,000);
- **pipeline** (real ``processor run`` subprocesses, fresh database): the same race
  written into the Directus tables, the same backlog of fixes drained with the domain on
  (defaults) and off (``DOMAIN_ENABLED=false``), interleaved over ``--rounds`` rounds; the
  ratio is per round. With the domain on the bench also waits until every device's timing
  is written (``timing_progress`` at its last fix) and reports when, so a timing worker
  that falls behind the writer shows;
- **restart** (a deploy after the race): a new processor on the drained stream; how long
  its start-up sweep takes until every entered device is recomputed or rebuilt from its
  rows, its CPU, and the recomputes by reason.

``--timing-instance beside|after`` measures the deployment that takes timing off the
pipeline's thread: the domain-on drain runs a ``TIMING=publish`` pipeline and a
``TIMING=consume`` instance (no pipeline, no broadcast, ``NICE=10``). ``beside``: the
timing instance runs during the drain, on the same two cores. ``after``: it starts once
the drain is done, as a stand-in for a timing instance on a host of its own (two
processes busy at once slow each other on this machine whatever their niceness, see
bench/README.md): the drain rate is the pipeline's alone, "timing written through" is
counted from the timing instance's ``ready``. The restart phase restarts that instance.

Prints a table; JSON: ``bench/results/domain.json`` (``domain_timing_<mode>.json``; ``--out``).

    python -m bench.domain [--steps 60] [--rounds 3] [--quick] [--timing-instance MODE]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from bench.harness import (
    RESULTS_DIR,
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
from bench.run import cpu_seconds, pg_connect
from processor.core.codec import encode
from processor.core.model import Position
from processor.domain.definition import RawRows, build_definition
from processor.domain.live import LiveEngine
from processor.domain.plugin import Definitions, IoEnricher
from processor.simulator.race import race_tables_sql

T0 = datetime(2026, 5, 12, 9, 0, tzinfo=UTC)
DEVICES, LINES, ZONES, STEPS = 1_000, 150, 50, 30
TARGET_US, TARGET_RATIO = 20.0, 0.85


def definition() -> RawRows:
    fences = []
    for i in range(LINES):
        lon = 14.0 + i * 0.01
        kind = "start" if i == 0 else "finish" if i == LINES - 1 else "checkpoint"
        fences.append(
            {
                "id": i + 1,
                "event_id": 1,
                "stage_id": 1,
                "kind": kind,
                "name": "",
                "sequence": i,
                "speed_limit_kmh": None,
                "geometry": {"type": "LineString", "coordinates": [[lon, 44.9], [lon, 45.1]]},
            }
        )
    for j in range(ZONES):
        lon = 14.005 + j * 0.03
        ring = [
            [lon, 44.95],
            [lon + 0.004, 44.95],
            [lon + 0.004, 45.05],
            [lon, 45.05],
            [lon, 44.95],
        ]
        fences.append(
            {
                "id": 1000 + j,
                "event_id": 1,
                "stage_id": None,
                "kind": "zone",
                "name": "",
                "sequence": 0,
                "speed_limit_kmh": 50.0,
                "geometry": {"type": "Polygon", "coordinates": [ring]},
            }
        )
    imeis = [f"35630704{i:07d}" for i in range(DEVICES)]
    return RawRows(
        events=[{"id": 1, "name": "b", "status": "live", "starts_at": None, "ends_at": None}],
        devices=[{"id": i, "imei": d, "model": "FMB920"} for i, d in enumerate(imeis)],
        entries=[{"id": i, "event_id": 1, "imei": d, "number": ""} for i, d in enumerate(imeis)],
        stages=[{"id": 1, "event_id": 1, "name": "SS", "sequence": 1, "opens_at": None,
                 "closes_at": None}],
        geofences=fences,
    )  # fmt: skip


def position(device: str, step: int, offset: float) -> Position:
    return Position(
        device_id=device, ts=T0 + timedelta(seconds=5 * step), latitude=45.0 + offset,
        longitude=13.99 + step * 0.0029 + offset, altitude=100.0, heading=90.0, speed=150.0,
        satellites=12, priority=0, event_io_id=0, fix_valid=True,
        attributes={"239": 1, "240": 1, "66": 12850, "16": 1234567, "21": 4, "181": 9},
    )  # fmt: skip


def hot_path() -> dict[str, Any]:
    built = build_definition(definition())
    assert not built.rejected, built.rejected
    engine = LiveEngine(built.definition)
    enricher = IoEnricher(Definitions(built.definition))
    rng = random.Random(1)
    devices = sorted(built.definition.entries_by_device)
    offsets = {d: rng.uniform(-0.002, 0.002) for d in devices}
    for d in devices:  # warm tracks, as after the first (cold) record of each device
        engine.recomputed(d, [])
    batches = [[position(d, s, offsets[d]) for d in devices] for s in range(STEPS)]
    n = DEVICES * STEPS
    started = time.perf_counter()
    for batch in batches:
        for p in batch:
            enricher.derive(p)
    derive_us = (time.perf_counter() - started) / n * 1e6
    started = time.perf_counter()
    written = 0
    for batch in batches:
        ingested = engine.ingest(batch)
        assert not ingested.recompute
        written += sum(len(u.records) for u in ingested.updates)
    ingest_us = (time.perf_counter() - started) / n * 1e6
    geofences = len(built.definition.events[1].index.geofences)
    log(f"hot path: {n} fixes, {geofences} geofences, {DEVICES} devices, {written} records")
    return {
        "fixes": n,
        "geofences": geofences,
        "devices": DEVICES,
        "timing_records": written,
        "io_mapping_us": derive_us,
        "timing_us": ingest_us,
        "total_us": derive_us + ingest_us,
    }


def store_race(url: str) -> None:
    """The bench's definition, written into the Directus tables the processor loads."""
    rows = definition()
    with pg_connect(url, autocommit=True) as conn:
        conn.execute(race_tables_sql())
        with conn.transaction():
            conn.execute("INSERT INTO events (id, name, status) VALUES (1, 'bench', 'live')")
            conn.execute("INSERT INTO stages (id, event_id, name, sequence) VALUES (1, 1, 'SS', 1)")
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO geofences (id, event_id, stage_id, kind, name, sequence,"
                    " geometry, speed_limit_kmh) VALUES (%s, 1, %s, %s, '', %s, %s, %s)",
                    [
                        (g["id"], g["stage_id"], g["kind"], g["sequence"],
                         orjson.dumps(g["geometry"]).decode(), g["speed_limit_kmh"])
                        for g in rows.geofences
                    ],
                )  # fmt: skip
                cur.executemany(
                    "INSERT INTO devices (id, imei, model) VALUES (%s, %s, 'FMB920')",
                    [(d["id"] + 1, d["imei"]) for d in rows.devices],
                )
                cur.executemany(
                    "INSERT INTO entries (event_id, device_id, number) VALUES (1, %s, %s)",
                    [(d["id"] + 1, str(d["id"] + 1)) for d in rows.devices],
                )


def _timed_through(url: str, last: datetime) -> int:
    with pg_connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM timing_progress WHERE last_ts >= %s", (last,)
        ).fetchone()
    return int(row[0]) if row else 0


def _recomputes(proc: Any) -> dict[str, float]:
    """``processor_domain_recomputes_total`` by reason, from the processor's /metrics."""
    http = next((e for e in proc.events if e.get("event") == "http listening"), None)
    if not http:
        return {}
    with urllib.request.urlopen(http["url"].rstrip("/") + "/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("processor_domain_recomputes_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] = float(line.rpartition(" ")[2])
    return out


def race_fields(steps: int) -> list[dict[bytes, bytes]]:
    """``steps`` fixes of every entered device, as live: one step of all, then the next."""
    rng = random.Random(2)
    imeis = [d["imei"] for d in definition().devices]
    offsets = {d: rng.uniform(-0.002, 0.002) for d in imeis}
    return [encode(position(d, s, offsets[d])) for s in range(steps) for d in imeis]


def _pipeline_us(drain: dict[str, Any]) -> float:
    """The pipeline process's CPU per record over a drain (``Sandbox.drain``'s figures)."""
    return drain["cpu_percent"]["processor"] / 100 * drain["seconds"] / drain["records"] * 1e6


def timing_instance_env(env: dict[str, str]) -> dict[str, str]:
    """A timing instance beside the pipeline: no pipeline, no broadcast, second in line
    for the CPU (NICE=10), timing what ``TIMING=publish`` pipelines commit."""
    return {
        **env,
        "TIMING": "consume",
        "PIPELINE_ENABLED": "false",
        "WS_ENABLED": "false",
        "NICE": "10",
    }


def pipeline(
    sb: Sandbox, steps: int, rounds: int, env: dict[str, str], timing_instance: str = ""
) -> dict[str, Any]:
    """Drains with the domain on and off. ``timing_instance`` (beside, after): the
    domain-on pipeline has ``TIMING=publish`` and a timing instance runs during the drain
    or starts after it (``timing_instance_env``)."""
    timer = timing_instance_env(env) if timing_instance else None
    beside = timer if timing_instance == "beside" else None
    on_env = {**env, "TIMING": "publish"} if timing_instance else env
    store_race(sb.url)
    fields = race_fields(steps)
    last = T0 + timedelta(seconds=5 * (steps - 1))
    on: list[float] = []
    off: list[float] = []
    caught_up: list[float] = []
    recomputes: list[dict[str, float]] = []
    restarts: list[dict[str, Any]] = []
    cpu: list[dict[str, float]] = []  # % of a core while draining, domain on (and off)
    cpu_off: list[dict[str, float]] = []
    on_us: list[float] = []  # the pipeline process's CPU per record, domain on / off
    off_us: list[float] = []
    for round_ in range(rounds):
        log(f"pipeline round {round_ + 1}/{rounds}")
        with pg_connect(sb.url, autocommit=True) as conn:  # each run times from scratch
            conn.execute("TRUNCATE timing_records, zone_events, stage_results, timing_progress")
        result = sb.drain(fields, on_env, label="domain-on", keep_running=True, beside=beside)
        started, head_start = time.monotonic(), result["seconds"]
        if timing_instance == "after":
            timing = sb.start(result["stream"], "bench", timer, name="bench-timing")
            result["procs"].append(timing)
            timing.wait_event("ready", 60)
            started, head_start = time.monotonic(), 0.0
        deadline = started + 300
        while _timed_through(sb.url, last) < DEVICES:
            if time.monotonic() > deadline:
                raise SystemExit("timing did not catch up within 300 s of the drain")
            time.sleep(0.2)
        caught_up.append(head_start + time.monotonic() - started)
        recomputes.append(_recomputes(result["procs"][-1]))  # the timing instance, if any
        cpu.append(result["cpu_percent"])
        on_us.append(_pipeline_us(result))
        for proc in result["procs"]:
            sb.stop(proc)
        restarts.append(_restart(sb, result["stream"], timer or env))
        sb.drop_stream(result["stream"])
        on.append(result["records_per_s"])
        unmapped = sb.drain(fields, {**env, "DOMAIN_ENABLED": "false"}, label="domain-off")
        off.append(unmapped["records_per_s"])
        off_us.append(_pipeline_us(unmapped))
        cpu_off.append(unmapped["cpu_percent"])
    ratios = [a / b for a, b in zip(on, off, strict=True)]
    return {
        "records": len(fields),
        "rounds": rounds,
        "timing_instance": timing_instance,
        "domain_on_cpu_percent": cpu,
        "domain_off_cpu_percent": cpu_off,
        "pipeline_cpu_us_per_record_on": on_us,
        "pipeline_cpu_us_per_record_off": off_us,
        "domain_on_records_per_s": on,
        "domain_off_records_per_s": off,
        "ratios": ratios,
        "timing_caught_up_s": caught_up,
        "recomputes_by_reason": recomputes,
        "restarts": restarts,
    }


def _restart(sb: Sandbox, stream: str, env: dict[str, str]) -> dict[str, Any]:
    """A deploy after the race: a new processor on the drained stream. Its start-up sweep
    (every entered device) until every device is recomputed or rebuilt, and its CPU."""
    proc = sb.start(stream, "bench", env, name="bench-restart")
    try:
        proc.wait_event("ready", 60)
        cpu0, started = cpu_seconds(proc.pid) or 0.0, time.monotonic()
        deadline = started + 300
        while sum(_recomputes(proc).values()) < DEVICES:
            if time.monotonic() > deadline:
                raise SystemExit("the restart's sweep did not finish within 300 s")
            time.sleep(0.1)
        seconds = time.monotonic() - started
        out = {
            "sweep_s": seconds,
            "cpu_s": (cpu_seconds(proc.pid) or 0.0) - cpu0,
            "recomputes_by_reason": _recomputes(proc),
        }
        sb.stop(proc)
        return out
    finally:
        proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--steps", type=int, default=60, help="fixes per device (x 1,000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="20 steps, 1 round")
    parser.add_argument(
        "--out", default="", help="JSON (bench/results/domain.json, domain_timing_<mode>.json)"
    )
    parser.add_argument(
        "--timing-instance",
        choices=("beside", "after"),
        default="",
        help="domain on = a TIMING=publish pipeline plus a TIMING=consume instance (NICE=10)"
        " during the drain (beside) or started after it (after: as on a host of its own)",
    )
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds = 20, 1
    install_sigterm()
    hot = hot_path()
    with Sandbox.open(args.admin_url, args.redis_url) as sb:
        piped = pipeline(
            sb, args.steps, args.rounds, parse_env(args.processor_env), args.timing_instance
        )
    ratio = spread(piped["ratios"])
    caught = spread(piped["timing_caught_up_s"])
    restarts = piped["restarts"]
    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    print_table(
        f"race domain cost: {hot['geofences']} geofences, {DEVICES} devices",
        ["measure", "value", "note"],
        [
            ["io mapping", f"{hot['io_mapping_us']:.2f} µs/fix", "IoEnricher.derive"],
            ["timing", f"{hot['timing_us']:.2f} µs/fix", "LiveEngine.ingest, warm tracks"],
            ["hot path total", f"{hot['total_us']:.2f} µs/fix",
             f"target < {TARGET_US:g}: {met(hot['total_us'] < TARGET_US)}"],
            ["pipeline, domain on", fmt_spread(spread(piped["domain_on_records_per_s"]), " rec/s"),
             f"{piped['records']:,} records, {piped['rounds']} round(s)"
             + (f", timing instance {args.timing_instance}" if args.timing_instance else "")],
            ["CPU while draining, domain on", cpu_shares(piped["domain_on_cpu_percent"]),
             "% of one core, median"],
            ["pipeline, domain off", fmt_spread(spread(piped["domain_off_records_per_s"]),
                                                " rec/s"), "DOMAIN_ENABLED=false"],
            ["CPU while draining, domain off", cpu_shares(piped["domain_off_cpu_percent"]),
             "% of one core, median"],
            ["pipeline CPU, domain on / off",
             f"{fmt_spread(spread(piped['pipeline_cpu_us_per_record_on']), '', 1)} / "
             f"{fmt_spread(spread(piped['pipeline_cpu_us_per_record_off']), ' µs/record', 1)}",
             "the pipeline process only"],
            ["on / off", fmt_spread(ratio, "", 2),
             f"target >= {TARGET_RATIO:g}: {met(ratio['median'] >= TARGET_RATIO)}"],
            ["timing written through", fmt_spread(caught, " s", 1),
             ("the timing instance's " if args.timing_instance == "after" else "")
             + "ready -> every device's timing_progress at its last fix"],
            ["recomputes (last round)", ", ".join(f"{k} {v:.0f}" for k, v in
                                                  (piped["recomputes_by_reason"] or [{}])[-1]
                                                  .items()) or "none", "by reason"],
            ["restart: start-up sweep", fmt_spread(spread([r["sweep_s"] for r in restarts]),
                                                   " s", 2),
             "ready -> every entered device recomputed or rebuilt"],
            ["restart: sweep CPU", fmt_spread(spread([r["cpu_s"] for r in restarts]), " s", 2),
             ", ".join(f"{k} {v:.0f}" for k, v in restarts[-1]["recomputes_by_reason"].items())],
        ],
    )  # fmt: skip
    suffix = f"_timing_{args.timing_instance}" if args.timing_instance else ""
    out = Path(args.out) if args.out else RESULTS_DIR / f"domain{suffix}.json"
    write_json(out, {"machine": machine(), "hot_path": hot, "pipeline": piped})
    return 0


def cpu_shares(rounds: list[dict[str, float]]) -> str:
    """Each process's median share of a core over the rounds: ``processor 73%, ...``."""
    return ", ".join(f"{k} {spread([c[k] for c in rounds])['median']:.0f}%" for k in rounds[0])


if __name__ == "__main__":
    sys.exit(exit_on_bench_error(main))
