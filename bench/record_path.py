"""The pipeline's own CPU per record, without Redis, PostgreSQL or the event loops.

``python -m bench.record_path [--records N] [--repeat K] [--no-enricher]``: the real
``Decoder.split`` and ``Writer.write`` (hot state, IO mapping and ``derived``, outcomes,
metrics, the ack hand-off, the COPY rows and psycopg's binary formatting of them) over
stream entries shaped like redis-py's replies, in one process. The store is the real
``PositionStore`` with a session that formats the rows without sending them, so every
round trip and PostgreSQL's own work are left out.

Why it exists: the end-to-end drains move +/-10 % between runs on this shared machine,
so a change worth 2-5 % of the processor's CPU cannot be seen there. In one process the
same work repeats within ~1-2 %, so such a change can be measured here, on the same code
the drains run, and then checked end to end. ``bench/instructions.sh`` counts it under
callgrind instead, which repeats within ~10 instructions per record.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import structlog
import trio
from psycopg import pq
from psycopg._copy_base import BinaryFormatter  # what ``Copy.write_row`` formats with
from psycopg.adapt import AdaptersMap, Transformer

from bench.harness import fleet_fields, machine, print_table, write_json
from processor.cli import _tune_gc as tune_gc
from processor.core import pg_io
from processor.core.consumer import Decoder
from processor.core.health import Readiness
from processor.core.hot_state import DeviceStates
from processor.core.messages import DeadLetter
from processor.core.metrics import Metrics
from processor.core.model import Entry, RawEntry
from processor.core.pg_io import PositionStore
from processor.core.writer import Writer
from processor.domain.plugin import Definitions, IoEnricher

BATCH = 1000


class _RowSink:
    """Stands in for ``PgSession``: every statement succeeds; the direct COPY's rows are
    formatted as psycopg formats them for ``_copy_direct`` (binary, same column types
    and dumpers), so the client's share of the COPY counts, but nothing is sent."""

    generation = 0
    connected = True
    rows = 0
    copied_bytes = 0

    def __init__(self) -> None:
        context = SimpleNamespace(adapters=AdaptersMap(psycopg.adapters), connection=None)
        pg_io._copy_adapters(context)  # type: ignore[arg-type]  # what a COPY's cursor gets
        self._transformer = Transformer(context)
        oids = [psycopg.postgres.types[t].oid for t in pg_io.COPY_DUMP_TYPES]
        self._transformer.set_dumper_types(oids, pq.Format.BINARY)

    async def connect(self) -> None:
        return None

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if fn is pg_io._copy_direct:
            formatter = BinaryFormatter(self._transformer)
            for row in args[0]:
                formatter.write_row(row)
            self.copied_bytes += len(formatter.end())
            self.rows += len(args[0])
            return True  # "every row went in"
        return []  # rehydration's lookup: no stored row


def _raw_entries(records: int, devices: int) -> list[RawEntry]:
    _, fields = fleet_fields(records, devices)
    ms = int(time.time() * 1000)
    # Like redis-py's reply: a fresh dict per entry, bytes keys and values.
    return [RawEntry(f"{ms}-{i}", dict(f)) for i, f in enumerate(fields)]


async def _one_pass(raw: list[RawEntry], writer: Writer, decoder: Decoder) -> float:
    acks_send, acks_recv = trio.open_memory_channel[list[tuple[str, str]]](1_000_000)
    dead_send, dead_recv = trio.open_memory_channel[list[DeadLetter]](1_000_000)
    started = time.process_time()
    for i in range(0, len(raw), BATCH):
        good, bad = decoder.split(raw[i : i + BATCH])
        if bad:
            raise RuntimeError(f"{len(bad)} bench records dead-lettered: {bad[0].error}")
        entries: list[Entry] = good
        await writer.write(entries, None, acks_send, dead_send)
    used = time.process_time() - started
    acks_send.close(), acks_recv.close(), dead_send.close(), dead_recv.close()
    return used


def run(records: int, devices: int, repeat: int, enricher: bool = True) -> dict[str, Any]:
    raw = _raw_entries(records, devices)
    metrics = Metrics.create("bench")
    store = PositionStore("postgresql://unused")
    sink = _RowSink()
    store.session = sink  # type: ignore[assignment]
    decoder = Decoder(future_tolerance_s=600.0, metrics=metrics, max_deliveries=5)
    per_record: list[float] = []

    async def main() -> None:
        for _ in range(repeat):
            writer = Writer(
                store=store,
                states=DeviceStates(100_000),
                metrics=metrics,
                health=Readiness(),
                log=structlog.get_logger(),
                enricher=IoEnricher(Definitions()) if enricher else None,
            )
            used = await _one_pass(raw, writer, decoder)
            per_record.append(used / records * 1e6)

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    tune_gc()  # the daemon's collector settings: they change the cost per record by ~20 %
    trio.run(main)
    return {
        "records": records,
        "devices": devices,
        "repeat": repeat,
        "enricher": enricher,
        "rows_taken": sink.rows,
        "copied_bytes": sink.copied_bytes,
        "cpu_us_per_record": per_record,
        "best_us_per_record": min(per_record),
        "median_us_per_record": statistics.median(per_record),
        "machine": machine(),
        "at": datetime.now(UTC).isoformat(),
    }


def hold_freed_heap() -> bool:
    """Keep freed memory at the heap's top instead of giving it back to the system
    (glibc's ``M_TRIM_THRESHOLD``), as the long-running processor's heap does anyway.

    Why: this loop frees each batch's rows and ``derived`` JSON (orjson's ~1 KB
    buffers, 2,000 alive at once) at the top of an otherwise small heap, so glibc trims
    it after every batch and page-faults it back in the next: ~2.5 µs per record that a
    processor never pays (its drain of 200,000 records takes the same ~10,000 minor page
    faults and CPU with the trim threshold raised or not). False where the C library has
    no ``mallopt`` (not glibc)."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold = -1
    return bool(mallopt(m_trim_threshold, 256 * 1024 * 1024))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--devices", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument(
        "--no-enricher",
        action="store_true",
        help="the writer without the IO mapping (what the derived column costs: on - off)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    held = hold_freed_heap()
    result = run(args.records, args.devices, args.repeat, enricher=not args.no_enricher)
    if result["rows_taken"] != args.records * args.repeat:
        print(f"only {result['rows_taken']} rows reached the store", file=sys.stderr)
        return 1
    print_table(
        "pipeline CPU per record, no I/O (Decoder.split + Writer.write)",
        ["records", "repeat", "best µs/record", "median µs/record"],
        [
            [
                f"{args.records:,}",
                args.repeat,
                f"{result['best_us_per_record']:.2f}",
                f"{result['median_us_per_record']:.2f}",
            ]
        ],
    )
    if not held:
        print("note: freed memory is trimmed (no glibc mallopt): figures run high", file=sys.stderr)
    result["heap_held"] = held
    if args.out:
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
