"""Memory: the processor's RSS stays flat and bounded by DEVICE_STATE_MAX as devices churn.

Streams ``--devices`` distinct trackers (one record each, default 1,000,000) through one
``processor run`` with ``DEVICE_STATE_MAX=--cap`` (default 100,000), in chunks of
``--chunk`` (default 100,000): publish a chunk, wait until the group has read and acked
all of it, ``XTRIM MAXLEN 0`` (so Redis memory stays bounded too), then sample

- the processor's ``VmRSS`` and ``VmHWM`` (``/proc/<pid>/status``),
- its ``processor_device_states`` gauge and ``processor_rehydrations_total`` (``/metrics``),
- Redis ``used_memory``.

Plug-ins are off by default (``DOMAIN_ENABLED=false WS_ENABLED=false``): the core's hot
state is what is under test; ``--plugins`` leaves them on. Pass/fail: peak RSS < ``--max-rss-mb``
(400), the gauge == cap from the chunk where the cap is reached on, and RSS growth from
that chunk to the end < ``--max-growth-mb`` (25). Exit 1 if a check fails, 2 if the bench
itself failed. JSON: ``bench/results/memory.json``.

    python -m bench.memory [--devices 1000000] [--cap 100000] [--chunk 100000]
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
    install_sigterm,
    log,
    machine,
    parse_env,
    print_table,
    rss_kb,
    write_json,
)
from bench.run import pg_connect, publish, wait_drained


def metric_values(http_url: str | None, names: Sequence[str]) -> dict[str, float]:
    if not http_url:
        return {}
    with urllib.request.urlopen(http_url.rstrip("/") + "/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        base = name.split("{", 1)[0]
        if base in names:
            out[base] = out.get(base, 0.0) + float(value)
    return out


def run(args: argparse.Namespace) -> int:
    env = {"DEVICE_STATE_MAX": str(args.cap)}
    if not args.plugins:
        env |= {"DOMAIN_ENABLED": "false", "WS_ENABLED": "false"}
    env |= parse_env(args.processor_env)
    ts = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    samples: list[dict[str, Any]] = []
    result: dict[str, Any] = {
        "machine": machine(),
        "params": {
            "devices": args.devices,
            "cap": args.cap,
            "chunk": args.chunk,
            "processor_env": env,
        },
        "samples": samples,
    }
    with Sandbox.open(args.admin_url, args.redis_url) as sb:
        stream, group = sb.stream("memory"), "bench"
        proc = sb.start(stream, group, env)
        http = proc.wait_event("http listening", 60).get("url")
        proc.wait_event("ready", 60)
        time.sleep(0.5)

        def sample(published: int, seconds: float) -> dict[str, Any]:
            m = metric_values(http, ("processor_device_states", "processor_rehydrations_total"))
            s = {
                "devices_published": published,
                "rss_mb": (rss_kb(proc.pid) or 0) / 1024,
                "hwm_mb": (rss_kb(proc.pid, "VmHWM") or 0) / 1024,
                "device_states": m.get("processor_device_states"),
                "rehydrations": m.get("processor_rehydrations_total"),
                "redis_used_memory_mb": int(sb.r.info("memory")["used_memory"]) / 2**20,
                "chunk_seconds": seconds,
            }
            samples.append(s)
            log(
                f"{published:>9,} devices: RSS {s['rss_mb']:.1f} MB (peak {s['hwm_mb']:.1f}), "
                f"device_states {s['device_states']}, redis {s['redis_used_memory_mb']:.1f} MB"
            )
            return s

        sample(0, 0.0)
        published = 0
        while published < args.devices:
            n = min(args.chunk, args.devices - published)
            fields = distinct_device_fields(published, n, ts)
            started = time.monotonic()
            publish(sb.r, stream, fields)
            del fields
            wait_drained(sb.r, stream, group, n, alive=proc.alive)
            seconds = time.monotonic() - started
            sb.r.xtrim(stream, maxlen=0, approximate=False)
            published += n
            sample(published, seconds)
        with pg_connect(sb.url) as conn:
            (stored,) = conn.execute("SELECT count(*) FROM positions").fetchone()  # type: ignore[misc]
        sb.stop(proc)
    result["rows_stored"] = stored
    at_cap = [s for s in samples if s["devices_published"] >= args.cap]
    first = at_cap[0] if at_cap else samples[-1]
    last = samples[-1]
    checks = {
        "rows_stored_equals_devices": stored == args.devices,
        "peak_rss_below_max": max(s["hwm_mb"] for s in samples) < args.max_rss_mb,
        "device_states_equals_cap_once_reached": all(
            s["device_states"] == args.cap for s in at_cap
        ),
        "rss_growth_after_cap_below_max": last["rss_mb"] - first["rss_mb"] < args.max_growth_mb,
    }
    result["rss_growth_after_cap_mb"] = last["rss_mb"] - first["rss_mb"]
    result["peak_rss_mb"] = max(s["hwm_mb"] for s in samples)
    result["checks"] = checks
    print_table(
        f"processor RSS while {args.devices:,} distinct devices stream through "
        f"(DEVICE_STATE_MAX={args.cap:,}, env {env})",
        ("devices published", "RSS MB", "peak MB", "device_states", "rehydrations",
         "redis MB", "chunk s"),
        [
            (
                f"{s['devices_published']:,}",
                f"{s['rss_mb']:.1f}",
                f"{s['hwm_mb']:.1f}",
                "-" if s["device_states"] is None else f"{s['device_states']:,.0f}",
                "-" if s["rehydrations"] is None else f"{s['rehydrations']:,.0f}",
                f"{s['redis_used_memory_mb']:.1f}",
                f"{s['chunk_seconds']:.1f}",
            )
            for s in samples
        ],
    )  # fmt: skip
    print(
        f"rows stored {stored:,}; peak RSS {result['peak_rss_mb']:.1f} MB "
        f"(max {args.max_rss_mb:g}); RSS growth from the chunk reaching the cap to the end "
        f"{result['rss_growth_after_cap_mb']:+.1f} MB (max {args.max_growth_mb:g})"
    )
    for name, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    write_json(Path(args.out), result)
    return 0 if all(checks.values()) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.memory", description=__doc__.split("\n\n", 1)[0]
    )
    parser.add_argument("--devices", type=int, default=1_000_000)
    parser.add_argument("--cap", type=int, default=100_000, help="DEVICE_STATE_MAX")
    parser.add_argument("--chunk", type=int, default=100_000)
    parser.add_argument("--max-rss-mb", type=float, default=400.0)
    parser.add_argument("--max-growth-mb", type=float, default=25.0)
    parser.add_argument(
        "--plugins", action="store_true", help="leave DOMAIN_ENABLED / WS_ENABLED at defaults"
    )
    parser.add_argument("--out", default=str(RESULTS_DIR / "memory.json"))
    add_common_args(parser)
    args = parser.parse_args(argv)
    install_sigterm()
    return exit_on_bench_error(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
