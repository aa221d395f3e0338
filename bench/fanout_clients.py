"""The fan-out bench's WebSocket clients: many connections in one process, kept cheap.

``bench.fanout`` starts this as a process of its own, so the processor's CPU and RSS are
its own. Each client opens ``ws://HOST:PORT/ws`` with the Directus session cookie of a
user of its own, subscribes to one event and then only counts: for every ``position``
frame it takes the receive wall time minus the frame's ``ts`` (which the publisher sets
to its clock just before the XADD) into a 1 ms histogram, and checks that a device's
``ts`` never goes back (the contract's no-regression rule).

Why a hand-rolled client on asyncio and not trio-websocket: at 2,000 positions/s, 500
clients over 20 events receive 50,000 frames/s. wsproto's pure-Python frame parser costs
tens of µs per frame, more than this machine's two cores have to spare beside the
processor. This parser reads a frame header with a few byte operations and finds ``ts``
and ``device_id`` by ``bytearray.find`` (server frames are not masked; orjson writes keys
in a fixed order); anything that is not a ``position`` frame is handled the slow way.
The loop is uvloop's: on asyncio's own (selectors and transports in Python) this
process took ~50 % of a core and its loop lagged 50-60 ms at p99, which the bench then
reported as broadcast latency (p99 125-155 ms against 46-65 ms with uvloop, same
processor code, `--quick`). What it still costs is measured: the event loop's own lag
(a 10 ms timer's lateness) is reported beside the latencies, since a frame read late by
this process counts as late.

Commands, one per stdin line; answers, one JSON object per stdout line:

- (at start) connect and subscribe every client -> ``{"event": "ready", ...}``;
- ``window``: start a new measurement window (histogram, counters) -> ``{"event": "window"}``;
- ``count``: position frames received in the window -> ``{"event": "count", "frames": n}``;
- ``report``: everything about the window -> ``{"event": "report", ...}``;
- ``quit`` (or stdin closed): close every connection (1000), ``{"event": "bye", ...}``, exit.

Bounded: connecting has ``--connect-timeout-s``; the whole process exits by itself after
``--deadline-s``; only the given host (127.0.0.1) is contacted.

    python -m bench.fanout_clients --port 8081 --events 1,2,3 --clients 500
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import uvloop

COOKIE = "directus_session_token"
POSITION = b'{"type":"position"'
SNAPSHOT = b'{"type":"snapshot"'
TS_KEY = b'"ts":"'
DEVICE_KEY = b'"device_id":"'
# Latencies are counted in 1 ms buckets up to this; beyond, in buckets of COARSE_MS.
HIST_MS = 10_000
COARSE_MS = 100
# How often the loop-lag probe fires.
LAG_TICK_S = 0.01
# Connections opened at once (the server's accept, Directus check and snapshot per client).
CONNECT_CONCURRENCY = 50


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One masked, final frame (clients must mask, RFC 6455 5.3)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    return head + mask + masked


class Window:
    """What is measured between two ``window`` commands (shared by every client)."""

    def __init__(self) -> None:
        self.started = time.time()
        self.hist = [0] * HIST_MS
        self.over: Counter[int] = Counter()  # coarse bucket start (ms) -> frames
        self.first_at = 0.0  # wall time of the window's first and last position frame
        self.last_at = 0.0
        self.negative = 0
        self.frames = 0
        self.regressions = 0
        self.other: Counter[str] = Counter()
        self.lags: list[float] = []
        self.bytes = 0


class Shared:
    def __init__(self) -> None:
        self.window = Window()
        self.ts_ms: dict[bytes, float] = {}  # ts text -> epoch ms (the same ts arrives N times)
        self.closes: Counter[str] = Counter()  # close code -> clients, over the whole run
        self.close_log: list[dict[str, Any]] = []

    def epoch_ms(self, ts: bytes) -> float:
        ms = self.ts_ms.get(ts)
        if ms is None:
            if len(self.ts_ms) > 200_000:
                self.ts_ms.clear()
            ms = datetime.fromisoformat(ts.decode()).timestamp() * 1000
            self.ts_ms[ts] = ms
        return ms


class Conn(asyncio.Protocol):
    def __init__(self, shared: Shared, index: int, token: str, event_id: str, host: str) -> None:
        self.shared = shared
        self.index = index
        self.token = token
        self.event_id = event_id
        self.host = host
        self.buf = bytearray()
        self.open = False
        self.transport: asyncio.Transport | None = None
        self.subscribed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.close_code: str | None = None
        self.frames = 0  # position frames in the current window
        self.last: dict[bytes, bytes] = {}  # device -> newest ts seen

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                f"GET /ws HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nCookie: {COOKIE}={self.token}\r\n\r\n"
            ).encode()
        )

    def send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(opcode, payload))

    def _finish(self, code: str, reason: str = "") -> None:
        if self.close_code is None:
            self.close_code = code
            self.shared.closes[code] += 1
            self.shared.close_log.append(
                {"client": self.index, "code": code, "reason": reason, "at": time.time()}
            )
        if not self.subscribed.done():
            self.subscribed.set_result(f"closed {code} {reason}".strip())
        if not self.closed.done():
            self.closed.set_result(code)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish("1006", "connection lost without a close frame")

    def data_received(self, data: bytes) -> None:
        now_ms = time.time() * 1000
        buf = self.buf
        buf += data
        shared = self.shared
        window = shared.window
        window.bytes += len(data)
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")]).decode(errors="replace")
            if " 101 " not in status + " ":
                self._finish("http", status)
                assert self.transport is not None
                self.transport.close()
                return
            del buf[: end + 4]
            self.open = True
            msg = {"type": "subscribe", "event_id": self.event_id, "req": str(self.index)}
            self.send(0x1, json.dumps(msg).encode())
        i, n = 0, len(buf)
        while n - i >= 2:
            b0, b1 = buf[i], buf[i + 1]
            length, start = b1 & 0x7F, i + 2
            if length == 126:
                if n - i < 4:
                    break
                length, start = int.from_bytes(buf[i + 2 : i + 4], "big"), i + 4
            elif length == 127:
                if n - i < 10:
                    break
                length, start = int.from_bytes(buf[i + 2 : i + 10], "big"), i + 10
            end = start + length
            if end > n:
                break
            opcode = b0 & 0x0F
            if opcode == 0x1 and b0 & 0x80:
                if buf.startswith(POSITION, start):
                    k = buf.find(TS_KEY, start, end) + 6
                    ts = bytes(buf[k : buf.find(b'"', k, end)])
                    latency = now_ms - shared.epoch_ms(ts)
                    if latency < 0:
                        window.negative += 1
                    elif latency < HIST_MS:
                        window.hist[int(latency)] += 1
                    else:
                        window.over[int(latency) // COARSE_MS * COARSE_MS] += 1
                    if not window.frames:
                        window.first_at = now_ms / 1000
                    window.last_at = now_ms / 1000
                    window.frames += 1
                    self.frames += 1
                    d = buf.find(DEVICE_KEY, start, end) + 13
                    device = bytes(buf[d : buf.find(b'"', d, end)])
                    last = self.last.get(device)
                    if last is not None and ts <= last:
                        window.regressions += 1
                    else:
                        self.last[device] = ts
                elif buf.startswith(SNAPSHOT, start):
                    window.other["snapshot"] += 1
                    if not self.subscribed.done():
                        self.subscribed.set_result("ok")
                else:
                    self._other(bytes(buf[start:end]))
            elif opcode == 0x9:  # ping: pong with the same payload
                self.send(0xA, bytes(buf[start:end]))
            elif opcode == 0x8:
                payload = bytes(buf[start:end])
                code = str(int.from_bytes(payload[:2], "big")) if len(payload) >= 2 else "1005"
                self._finish(code, payload[2:].decode(errors="replace"))
                self.send(0x8, payload[:2])
                assert self.transport is not None
                self.transport.close()
                return
            elif opcode != 0xA:
                # Fragmented or binary frames: this server sends neither; count, not parse.
                window.other[f"opcode {opcode} fin {b0 >> 7}"] += 1
            i = end
        if i:
            del buf[:i]

    def _other(self, payload: bytes) -> None:
        try:
            message = json.loads(payload)
            kind = str(message.get("type"))
        except (ValueError, AttributeError):
            kind = "unparseable"
            message = {}
        self.shared.window.other[kind] += 1
        if kind == "error" and not self.subscribed.done():
            self.subscribed.set_result(f"error {message.get('code')}")

    def close(self) -> None:
        """Close with 1000 (the server answers and drops the TCP connection)."""
        if self.close_code is None:
            self.send(0x8, (1000).to_bytes(2, "big"))


def say(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def window_report(shared: Shared, conns: Sequence[Conn]) -> dict[str, Any]:
    w = shared.window
    lags = sorted(w.lags)

    def lag(q: float) -> float:
        return lags[min(len(lags) - 1, int(q * len(lags)))] * 1000 if lags else 0.0

    return {
        "seconds": time.time() - w.started,
        "frames": w.frames,
        "per_client": [c.frames for c in conns],
        "open_clients": sum(1 for c in conns if c.close_code is None),
        "hist": {str(ms): count for ms, count in enumerate(w.hist) if count},
        "over": {str(ms): count for ms, count in sorted(w.over.items())},
        "first_at": w.first_at,
        "last_at": w.last_at,
        "negative": w.negative,
        "regressions": w.regressions,
        "other_frames": dict(w.other),
        "bytes": w.bytes,
        "loop_lag_ms": {"p50": lag(0.50), "p99": lag(0.99), "max": lag(1.0)},
    }


async def lag_probe(shared: Shared) -> None:
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(LAG_TICK_S)
        shared.window.lags.append(max(0.0, loop.time() - before - LAG_TICK_S))


async def connect_all(args: argparse.Namespace, shared: Shared) -> list[Conn]:
    loop = asyncio.get_running_loop()
    events = args.events.split(",")
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)
    conns: list[Conn] = []
    host = f"{args.host}:{args.port}"

    async def one(index: int) -> None:
        conn = Conn(shared, index, f"{args.token_prefix}{index}", events[index % len(events)], host)
        conns.append(conn)
        async with limit:
            try:
                await loop.create_connection(lambda: conn, args.host, args.port)
                await asyncio.wait_for(asyncio.shield(conn.subscribed), args.connect_timeout_s)
            except (OSError, TimeoutError) as exc:
                conn._finish("connect", f"{type(exc).__name__}: {exc}")

    await asyncio.gather(*(one(i) for i in range(args.clients)))
    conns.sort(key=lambda c: c.index)
    return conns


async def main_async(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    shared = Shared()
    deadline = loop.time() + args.deadline_s
    probe = asyncio.ensure_future(lag_probe(shared))
    started = time.monotonic()
    conns = await connect_all(args, shared)
    results = Counter(c.subscribed.result() for c in conns)
    say(
        "ready",
        clients=len(conns),
        subscribed=results.get("ok", 0),
        outcomes=dict(results),
        connect_seconds=time.monotonic() - started,
    )
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    code = 0
    while True:
        try:
            line = await asyncio.wait_for(reader.readline(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            say("deadline", seconds=args.deadline_s)
            code = 3
            break
        command = line.decode().strip()
        if command in ("", "quit"):
            break
        if command == "window":
            shared.window = Window()
            for c in conns:
                c.frames = 0
            say("window")
        elif command == "count":
            say("count", frames=shared.window.frames)
        elif command == "report":
            say("report", **window_report(shared, conns))
        else:
            say("error", message=f"unknown command {command!r}")
    for c in conns:
        c.close()
    pending = [c.closed for c in conns if not c.closed.done()]
    if pending:
        await asyncio.wait(pending, timeout=5)
    for c in conns:
        if c.transport is not None:
            c.transport.abort()
    probe.cancel()
    say("bye", closes=dict(shared.closes), close_log=shared.close_log[:50])
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fanout_clients", description=__doc__.split("\n\n", 1)[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--events", required=True, help="comma-separated event ids")
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--token-prefix", default="fanout-")
    parser.add_argument("--connect-timeout-s", type=float, default=60.0)
    parser.add_argument("--deadline-s", type=float, default=1800.0)
    args = parser.parse_args(argv)
    if args.host != "127.0.0.1":
        parser.error("--host: this bench only talks to 127.0.0.1")
    return uvloop.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
