"""Write-path comparison: why the writer COPYs into a staging table.

Measures, on the same rows and table in one run, rows/s for the candidate batch writes:

- ``unnest text``: ``INSERT ... SELECT FROM unnest(<column arrays>) ON CONFLICT DO NOTHING
  RETURNING`` with psycopg's default (text) parameters, one statement per batch;
- ``unnest binary``: the same statement with binary parameters;
- ``copy staging``: the processor's own ``PositionStore.insert`` forced to stage (binary
  COPY into a temp table, then INSERT ... ON CONFLICT ... RETURNING, one transaction per
  batch): what a batch with a re-delivered row costs;
- ``copy direct``: ``PositionStore.insert`` as the writer runs it on new rows: one binary
  COPY straight into ``positions`` per batch.

Besides rows/s and the client's CPU per row, the PostgreSQL backend's CPU per row (from
``/proc``; the server must be on this machine).

    python -m bench.write_paths [--records 50000] [--batch 1000]
"""

from __future__ import annotations

# trio-asyncio must be imported before psycopg (see processor/__init__.py).
import trio_asyncio  # noqa: F401

# isort: split

import argparse
import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
import trio

from bench.run import Fleet
from processor.core.bridge import open_bridge
from processor.core.model import Position
from processor.core.pg_io import PositionStore, position_row

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
RESULTS = Path(__file__).parent / "results" / "write_paths.json"

_UNNEST = """
INSERT INTO positions (device_id, ts, latitude, longitude, altitude, heading, speed,
    satellites, priority, event_io_id, fix_valid, attributes, received_at, derived)
SELECT * FROM unnest(%s::text[], %s::timestamptz[], %s::float8[], %s::float8[],
    %s::float8[], %s::float8[], %s::float8[], %s::int2[], %s::int2[], %s::int4[],
    %s::bool[], %s::jsonb[], %s::timestamptz[], %s::jsonb[])
ON CONFLICT (device_id, ts) DO NOTHING RETURNING device_id, ts
"""


def _columns(batch: Sequence[Position]) -> list[list[Any]]:
    return [list(col) for col in zip(*(position_row(p) for p in batch), strict=True)]


def _timed(
    url: str, positions: list[Position], batch: int, write: Callable[[list[Position]], None]
) -> dict[str, float]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE positions")
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(positions), batch):
        write(positions[i : i + batch])
    return _rates(len(positions), time.perf_counter() - started, time.process_time() - cpu)


def _rates(n: int, wall_s: float, cpu_s: float) -> dict[str, float]:
    """Rows/s, and the client's CPU per row: what limits a CPU-bound processor."""
    return {"rows_per_s": n / wall_s, "client_cpu_us_per_row": cpu_s / n * 1e6}


def measure(url: str, positions: list[Position], batch: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for label, query in (
            ("unnest text", _UNNEST),
            ("unnest binary", _UNNEST.replace("%s", "%b")),
        ):
            results[label] = _timed(
                url, positions, batch, lambda b, q=query: conn.execute(q, _columns(b)).fetchall()
            )

    async def processor_path(direct: bool) -> dict[str, float]:
        async with open_bridge():
            paths: list[str] = []
            store = PositionStore(url, on_path=paths.append, direct=direct)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("TRUNCATE positions")
            await store.insert(positions[:1])  # connect; the backend's pid is known now
            backend = (await store.session.connect()).info.backend_pid
            pg0 = _backend_cpu_s(backend)
            started, cpu = time.perf_counter(), time.process_time()
            for i in range(1, len(positions), batch):
                await store.insert(positions[i : i + batch])
            n = len(positions) - 1
            rates = _rates(n, time.perf_counter() - started, time.process_time() - cpu)
            rates["postgres_cpu_us_per_row"] = (_backend_cpu_s(backend) - pg0) / n * 1e6
            await store.aclose()
            assert set(paths) == {"direct" if direct else "staged"}, paths
            return rates

    results["copy staging (processor)"] = trio.run(processor_path, False)
    results["copy direct (processor)"] = trio.run(processor_path, True)
    return results


def _backend_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    name = f"processor_bench_{uuid.uuid4().hex[:12]}"
    url = ADMIN_URL.rpartition("/")[0] + "/" + name
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            for sql in sorted((Path(__file__).parents[1] / "schema/migrations").glob("*.sql")):
                conn.execute(sql.read_text())
        positions = Fleet.create(2000, args.records, 1).take(args.records)
        results = measure(url, positions, args.batch)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(
        f"{'write path':<28}{'rows/s':>10}{'client CPU µs/row':>20}{'postgres CPU µs/row':>22}"
        f"   ({args.records} rows, {args.batch} per batch)"
    )
    for label, r in results.items():
        pg = r.get("postgres_cpu_us_per_row")
        print(
            f"{label:<28}{r['rows_per_s']:>10,.0f}{r['client_cpu_us_per_row']:>20.1f}"
            f"{'' if pg is None else f'{pg:.1f}':>22}"
        )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps({"records": args.records, "batch": args.batch, "results": results}, indent=2)
    )


if __name__ == "__main__":
    main()
