"""The Redis read path's own cost: the trio-asyncio bridge against a thread-offloaded client.

``python -m bench.bridge [--records 100000] [--count 1000] [--rounds 3]``: one stream of
contract records (``bench.harness.fleet_fields``), drained by ``XREADGROUP COUNT
--count`` and one ``XACK`` of each read's ids, in one process, two ways, interleaved over
``--rounds`` (a fresh consumer group per drain, so each reads every entry):

- **bridge**: what the processor runs, ``processor.core.redis_io.RedisStreams`` (redis.asyncio
  with hiredis, commands packed in C, XREADGROUP replies shaped by ``_group_reply``)
  through ``processor.core.bridge`` (an asyncio loop inside the Trio run);
- **thread**: redis-py's synchronous client with the same parser, packer and reply
  shaping, each command run in a worker thread by ``trio.to_thread.run_sync``: the
  alternative issue 6 names ("a thread-offloaded sync client").

Per entry it reports this process's CPU (every thread: ``time.process_time``) and the
drain's wall time, and Redis's CPU. Nothing is decoded or written: what differs between
the two is only how a command crosses into Trio and back.

Why it exists: the profile charges ~2 µs per record to redis-py and the event loops
(``bench/results/profile.txt``), and the bridge is the one design choice there that a
one-file change could swap (``processor/core/bridge.py``).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis
import trio

from bench.harness import (
    DEFAULT_REDIS_URL,
    RESULTS_DIR,
    fleet_fields,
    machine,
    print_table,
    write_json,
)
from bench.run import publish, redis_cpu_seconds
from processor.cli import _tune_gc as tune_gc
from processor.core import bridge
from processor.core.model import RawEntry
from processor.core.redis_io import RedisStreams, _group_reply, tuned_client

Drain = Callable[[str, str, str, int, int], Awaitable[None]]


async def drain_bridge(url: str, stream: str, group: str, n: int, count: int) -> None:
    """Read and ack ``n`` entries through ``RedisStreams``, as the consumer and acker do."""
    streams = await RedisStreams.connect(url)
    try:
        await streams.ensure_group(stream, group)
        got = 0
        while got < n:
            raw = await streams.read_group(stream, group, "bench", ">", count, 100)
            got += len(raw)
            await streams.ack(stream, group, [e.entry_id for e in raw])
    finally:
        await streams.aclose()


async def drain_thread(url: str, stream: str, group: str, n: int, count: int) -> None:
    """The same reads and acks, each command in a worker thread."""
    client = tuned_client(redis.Redis.from_url(url))  # type: ignore[arg-type]
    client.set_response_callback("XREADGROUP", _group_reply)
    try:
        await trio.to_thread.run_sync(
            lambda: client.xgroup_create(stream, group, id="0", mkstream=True)
        )

        def read() -> Any:  # shaped by _group_reply
            return client.xreadgroup(group, "bench", {stream: ">"}, count=count, block=100)

        got = 0
        while got < n:
            raw: list[RawEntry] = await trio.to_thread.run_sync(read)
            got += len(raw)
            ids = [e.entry_id for e in raw]
            await trio.to_thread.run_sync(functools.partial(client.xack, stream, group, *ids))
    finally:
        client.close()


async def timed(drain: Callable[..., Awaitable[None]], *args: Any) -> tuple[float, float]:
    """(process CPU seconds, wall seconds) of one drain."""
    cpu, wall = time.process_time(), time.perf_counter()
    async with bridge.open_bridge():  # both run inside it: the loop's idle cost is shared
        await drain(*args)
    return time.process_time() - cpu, time.perf_counter() - wall


def run(url: str, records: int, count: int, rounds: int) -> dict[str, Any]:
    tune_gc()  # the daemon's collector settings: they cut the cost per entry by ~30 %
    r = redis.Redis.from_url(url)
    stream = f"bench:{uuid.uuid4().hex[:12]}:bridge"
    try:
        _, fields = fleet_fields(records, 5000)
        publish(r, stream, fields)
        runs: dict[str, list[dict[str, float]]] = {"bridge": [], "thread": []}
        drains: dict[str, Drain] = {"bridge": drain_bridge, "thread": drain_thread}
        for k in range(rounds):
            order = ("bridge", "thread") if k % 2 == 0 else ("thread", "bridge")
            for name in order:
                before = redis_cpu_seconds(r)
                cpu, wall = trio.run(timed, drains[name], url, stream, f"{name}{k}", records, count)
                runs[name].append(
                    {
                        "cpu_us_per_entry": cpu / records * 1e6,
                        "wall_us_per_entry": wall / records * 1e6,
                        "redis_cpu_us_per_entry": (redis_cpu_seconds(r) - before) / records * 1e6,
                    }
                )
                print(f"round {k + 1} {name}: {runs[name][-1]['cpu_us_per_entry']:.2f} µs CPU")
    finally:
        r.delete(stream)
        r.close()
    summary = {
        name: {key: statistics.median(x[key] for x in rows) for key in rows[0]}
        for name, rows in runs.items()
    }
    return {
        "machine": machine(),
        "params": {"records": records, "count": count, "rounds": rounds},
        "runs": runs,
        "median": summary,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--count", type=int, default=1000, help="entries per XREADGROUP")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "bridge.json")
    args = parser.parse_args(argv)
    result = run(args.redis_url, args.records, args.count, args.rounds)
    med = result["median"]
    print_table(
        f"Redis read + ack path, {args.records:,} entries, COUNT {args.count},"
        f" median of {args.rounds} rounds",
        ["path", "process CPU µs/entry", "wall µs/entry", "Redis CPU µs/entry"],
        [
            (
                name,
                f"{m['cpu_us_per_entry']:.2f}",
                f"{m['wall_us_per_entry']:.2f}",
                f"{m['redis_cpu_us_per_entry']:.2f}",
            )
            for name, m in med.items()
        ],
    )
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
