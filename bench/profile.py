"""Where the processor's time goes while it drains a backlog (py-spy sampling profile).

Runs ``processor run`` (default settings unless ``--env``) on a backlog of ``--records``
synthetic records, first unprofiled (the reference rate), then again with ``py-spy record
--pid <processor> --format raw --nonblocking --idle`` attached from ``ready`` until the
group is drained. The raw stacks are summarised three ways:

- **busy vs idle**: samples whose leaf is the event loop waiting (epoll / select) are idle;
- **by processor function**: each busy sample is charged to the innermost frame that is
  processor code (so psycopg's COPY under ``_copy_insert`` counts for ``_copy_insert``);
  samples with no processor frame are the event loops (Trio, asyncio, trio-asyncio glue);
- **by leaf function** ("self" time) and **by package** of the leaf.

Writes ``bench/results/profile.txt`` (the summary, committed with the figures) and
``bench/results/profile.json``. ``--raw FILE`` keeps py-spy's collapsed stacks
(feed them to flamegraph.pl or speedscope).

    python -m bench.profile [--records 200000] [--devices 5000] [--env DOMAIN_ENABLED=false]
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.harness import (
    RESULTS_DIR,
    ProcessorProcess,
    Sandbox,
    add_common_args,
    copy_ceiling,
    distinct_device_fields,
    exit_on_bench_error,
    fleet_fields,
    install_sigterm,
    log,
    machine,
    parse_env,
    prefill_devices,
    write_json,
)
from bench.run import domain_enabled

# Leaf frames that mean "the thread is waiting for I/O or a timer": idle, not work.
_IDLE_LEAF_FUNCS = ("get_events", "select", "poll")
# Entry points: a sample whose innermost processor frame is one of these is loop overhead.
_ENTRY_FILES = ("processor/cli.py", "processor/__main__.py")
# Where the time goes, coarse: the first rule (in this order) matching any frame of a busy
# sample names its category.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("broadcast plug-in (own XREAD tail, decode, hub)", ("processor/broadcast/",)),
    ("domain plug-in: IO mapping + timing", ("Writer._derive", "processor/domain/")),
    ("rehydration lookup (Writer._rehydrate)", ("Writer._rehydrate",)),
    ("decode (Decoder.split: codec.decode, Position/Entry)", ("Decoder.split",)),
    ("Redis reply -> RawEntry (redis_io._entries)", ("_entries (",)),
    ("PostgreSQL write (rows, binary COPY, INSERT..RETURNING)",
     ("PositionStore.insert", "_copy_insert", "psycopg/")),
    ("writer bookkeeping (outcomes, hot state, metrics, ack hand-off)", ("Writer.write",)),
    ("acker (XACK)", ("Acker.run",)),
    ("claimer", ("processor/core/claimer.py",)),
    ("dead-letter router", ("processor/core/dead_letters.py",)),
    ("group stats / control / http", ("group_stats.py", "control.py", "processor/http.py")),
    ("redis-py: commands + reply parsing (asyncio side)", ("redis/",)),
    ("batcher / consumer loop / retry wrappers", ("processor/core/",)),
    ("event loops: trio scheduler + trio-asyncio + asyncio", ("",)),
)  # fmt: skip


def _frame_parts(frame: str) -> tuple[str, str]:
    """("function", "path:line") of one collapsed-stack frame ``function (path:line)``."""
    func, _, rest = frame.partition(" (")
    return func, rest.rstrip(")")


def _package(path: str) -> str:
    """py-spy shortens paths to the import root: ``trio/_core/_run.py:2866``."""
    p = path.replace("\\", "/").split(":", 1)[0]
    if "/site-packages/" in p:
        p = p.split("/site-packages/", 1)[1]
    if p.startswith("processor/"):
        return p
    return p.split("/", 1)[0].removesuffix(".py")


_LOOP_PACKAGES = frozenset(
    {"trio", "trio_asyncio", "asyncio", "outcome", "contextlib", "selectors", "<frozen runpy>"}
)


def _is_processor(path: str) -> bool:
    p = path.replace("\\", "/")
    if "site-packages" in p or any(e in p for e in _ENTRY_FILES):
        return False
    return "/processor/" in p or p.startswith("processor/")


def _is_idle(leaf: str) -> bool:
    func, path = _frame_parts(leaf)
    idle = func.rpartition(".")[2] in _IDLE_LEAF_FUNCS
    return idle and ("selectors" in path or "epoll" in path)


def _category(frames: Sequence[str]) -> str:
    for name, needles in CATEGORIES:
        if any(n in f for f in frames for n in needles):
            return name
    return CATEGORIES[-1][0]


def summarise(raw: str) -> dict[str, Any]:
    """Shares from py-spy's raw (collapsed) output: ``frame;frame;...;leaf count``."""
    total = busy = 0
    by_owner: collections.Counter[str] = collections.Counter()
    by_leaf: collections.Counter[str] = collections.Counter()
    by_package: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    by_category: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        # py-spy prefixes the thread ("process 123:..." / "thread (0x..)") with --idle etc.
        frames = [f for f in frames if " (" in f]
        if not frames:
            continue
        total += count
        leaf = frames[-1]
        if _is_idle(leaf):
            by_owner["(idle: waiting in epoll/select)"] += count
            by_category["(idle: waiting in epoll/select)"] += count
            continue
        busy += count
        by_category[_category(frames)] += count
        lf, lp = _frame_parts(leaf)
        by_leaf[f"{lf} ({_package(lp)})"] += count
        by_package[_package(lp)] += count
        owner = next(
            (
                f"{f} ({_package(p)})"
                for f, p in map(_frame_parts, reversed(frames))
                if _is_processor(p)
            ),
            None,
        )
        if owner is None:
            libs = [
                pkg
                for pkg in (_package(p) for _, p in map(_frame_parts, frames))
                if pkg not in _LOOP_PACKAGES and not pkg.startswith("processor/")
            ]
            owner = (
                f"({libs[0]}, called from the asyncio side: no processor frame)"
                if libs
                else "(event loops: trio scheduler, trio-asyncio, asyncio)"
            )
        by_owner[owner] += count
        seen: set[str] = set()
        for f, p in map(_frame_parts, frames):
            if _is_processor(p):
                key = f"{f} ({_package(p)})"
                if key not in seen:
                    seen.add(key)
                    inclusive[key] += count

    def shares(counter: collections.Counter[str], of: int, n: int = 25) -> list[dict[str, Any]]:
        return [
            {"name": k, "samples": v, "percent": 100 * v / of if of else 0.0}
            for k, v in counter.most_common(n)
        ]

    return {
        "samples": total,
        "busy_samples": busy,
        "busy_percent": 100 * busy / total if total else 0.0,
        "by_category_percent_of_all": shares(by_category, total, 30),
        "by_owner_percent_of_all": shares(by_owner, total, 30),
        "inclusive_processor_percent_of_busy": shares(inclusive, busy, 30),
        "by_leaf_percent_of_busy": shares(by_leaf, busy, 30),
        "by_package_percent_of_busy": shares(by_package, busy, 20),
    }


def render(summary: dict[str, Any], header: Sequence[str], cpu_us: float | None = None) -> str:
    """The text summary; with ``cpu_us`` (processor CPU per record) the category block
    also estimates µs per record: share of busy samples x CPU per record."""
    lines = list(header)

    def block(title: str, key: str) -> None:
        lines.append("")
        lines.append(title)
        for item in summary[key]:
            lines.append(f"  {item['percent']:5.1f}%  {item['samples']:6d}  {item['name']}")

    lines.append(
        f"samples: {summary['samples']}, busy (not waiting in epoll/select): "
        f"{summary['busy_percent']:.1f}%"
    )
    lines.append("")
    lines.append(
        "Where the time goes, by category (% of ALL samples"
        + ("; est. processor CPU µs per record = share of busy samples x CPU/record):"
           if cpu_us else "):")
    )  # fmt: skip
    busy = summary["busy_samples"] or 1
    for item in summary["by_category_percent_of_all"]:
        est = ""
        if cpu_us and not item["name"].startswith("(idle"):
            est = f"  ~{item['samples'] / busy * cpu_us:4.1f} µs/rec"
        lines.append(f"  {item['percent']:5.1f}%  {item['samples']:6d}{est}  {item['name']}")
    block(
        "Self + library time charged to the innermost processor function (% of ALL samples):",
        "by_owner_percent_of_all",
    )
    block(
        "Inclusive time of processor functions (% of busy samples; nested, so sums > 100):",
        "inclusive_processor_percent_of_busy",
    )
    block("Leaf functions, i.e. self time (% of busy samples):", "by_leaf_percent_of_busy")
    block("Leaf package / module (% of busy samples):", "by_package_percent_of_busy")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise SystemExit("py-spy not found: pip install py-spy")
    env = parse_env(args.processor_env)
    raw_path = Path(args.raw) if args.raw else Path(tempfile.mkstemp(suffix=".txt")[1])
    result: dict[str, Any] = {"machine": machine(), "params": vars(args) | {"processor_env": env}}
    with Sandbox.open(args.admin_url, args.redis_url) as sb:
        sb.prelude = args.prelude
        prepare = None
        if args.distinct:
            ts = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
            fields = distinct_device_fields(0, args.records, ts)
            if args.prefill:

                def prepare() -> int:
                    return prefill_devices(sb.url, 0, args.records, ts - timedelta(hours=1))
        elif args.race:
            from bench.domain import race_fields, store_race

            store_race(sb.url)
            fields = race_fields(max(1, args.records // 1000))
        else:
            _, fields = fleet_fields(args.records, args.devices)
        result["copy_ceiling_records_per_s"] = copy_ceiling(
            sb, args.records, args.devices, domain=domain_enabled(env)
        )
        result["unprofiled"] = sb.drain(
            fields, env, label="unprofiled", prepare=prepare, live=args.live
        )
        spy: list[subprocess.Popen[bytes]] = []

        def attach(procs: list[ProcessorProcess]) -> None:
            cmd = [py_spy, "record", "--pid", str(procs[0].pid), "--format", "raw"]
            cmd += ["--rate", str(args.rate), "--nonblocking", "--idle", "-o", str(raw_path)]
            spy.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))

        try:
            profiled = sb.drain(
                fields,
                env,
                label="profiled",
                on_ready=attach,
                keep_running=True,
                prepare=prepare,
                live=args.live,
            )
        finally:
            for p in spy:
                p.send_signal(signal.SIGINT)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
        procs = profiled.pop("procs")
        for proc in procs:
            sb.stop(proc)
        result["profiled"] = profiled
    raw = raw_path.read_text() if raw_path.exists() else ""
    if not args.raw:
        raw_path.unlink(missing_ok=True)
    if not raw.strip():
        err = spy[0].stderr.read().decode() if spy and spy[0].stderr else ""
        log(f"py-spy wrote no samples: {err}")
        return 2
    summary = summarise(raw)
    result["profile"] = summary
    ceiling = result["copy_ceiling_records_per_s"]
    ref, prof = result["unprofiled"], result["profiled"]
    cpu = ", ".join(f"{k} {v:.0f}%" for k, v in ref["cpu_percent"].items())
    header = [
        f"processor drain profile: {args.records:,} records, "
        + ("every record a new device" if args.distinct else f"{args.devices:,} devices")
        + (" (each with a stored row to rehydrate)" if args.prefill else "")
        + ", "
        f"env {env or 'defaults'}; {machine()['cpu_count']} CPUs, "
        f"load average {result['machine']['load_average'][0]:.2f}",
        f"command: python -m bench.profile --records {args.records} --devices {args.devices}"
        + (f" --rate {args.rate}" if args.rate != 250 else "")
        + (" --race" if args.race else "")
        + (" --distinct" if args.distinct else "")
        + (" --prefill" if args.prefill else "")
        + (" --live" if args.live else "")
        + (f" --prelude {args.prelude!r}" if args.prelude else "")
        + (f" --out {args.out}" if Path(args.out) != RESULTS_DIR / "profile.json" else "")
        + "".join(f" --env {k}={v}" for k, v in env.items()),
        f"COPY ceiling (single binary COPY, same run): {ceiling:,.0f} rec/s",
        f"unprofiled drain: {ref['records_per_s']:,.0f} rec/s "
        f"({ref['records_per_s'] / ceiling:.2f} of the ceiling); CPU while draining: {cpu}",
        f"profiled drain (py-spy --nonblocking, {args.rate} Hz): "
        f"{prof['records_per_s']:,.0f} rec/s",
        f"processor CPU per record (unprofiled): "
        f"{ref['cpu_percent']['processor'] / 100 / ref['records_per_s'] * 1e6:.1f} µs",
        "busy = not waiting in epoll/select; includes time runnable but waiting for a CPU"
        " (the machine is shared), so busy % can exceed the processor's CPU %.",
    ]
    cpu_us = ref["cpu_percent"]["processor"] / 100 / ref["records_per_s"] * 1e6
    result["processor_cpu_us_per_record"] = cpu_us
    result["header"] = header
    text = render(summary, header, cpu_us)
    out_txt = Path(args.out).with_suffix(".txt")
    out_txt.parent.mkdir(parents=True, exist_ok=True)
    out_txt.write_text(text)
    print(text)
    write_json(Path(args.out), result)
    print(f"summary written to {out_txt}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile", description=__doc__.split("\n\n", 1)[0]
    )
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--devices", type=int, default=5_000)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument(
        "--distinct",
        action="store_true",
        help="every record from a new device (one rehydration lookup per record: worst case)",
    )
    parser.add_argument(
        "--prefill",
        action="store_true",
        help="with --distinct: store an older row per device first, so every lookup finds one"
        " (the after-restart case)",
    )
    parser.add_argument(
        "--live",
        action="store_true",
        help="publish into the running processor instead of a backlog before it starts"
        " (the broadcast tail only reads records that arrive after it started)",
    )
    parser.add_argument(
        "--prelude",
        metavar="CODE",
        help="Python run in the processor before it starts, for experiments"
        " (e.g. 'import gc; gc.freeze()')",
    )
    parser.add_argument(
        "--race",
        action="store_true",
        help="bench.domain's race (200 geofences, 1,000 entered devices) in the Directus"
        " tables, and its fixes (--records rounded to whole steps of 1,000) as the backlog",
    )
    parser.add_argument("--raw", help="keep py-spy's raw collapsed stacks in this file")
    parser.add_argument("--out", default=str(RESULTS_DIR / "profile.json"))
    add_common_args(parser)
    args = parser.parse_args(argv)
    install_sigterm()
    return exit_on_bench_error(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
