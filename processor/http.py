"""HTTP endpoints for the platform: ``/metrics``, ``/healthz``, ``/readyz``.

A hand-written ASGI callable is enough for three read-only routes and keeps a web
framework out of the dependency tree; hypercorn's Trio worker serves it inside the
daemon's own nursery, so it shares the process's lifetime and cancellation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from processor.core.health import Readiness
from processor.core.metrics import Metrics
from processor.core.shutdown import Shutdown

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def make_app(
    metrics: Metrics, health: Readiness, shutdown: Shutdown
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/metrics":
            metrics.ready.set(1 if health.ready and not shutdown.requested.is_set() else 0)
            await _respond(send, 200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            await _json(send, 200, {"status": "alive"})
        elif path == "/readyz":
            problems = health.problems()
            if shutdown.requested.is_set():
                problems["shutdown"] = shutdown.reason or "shutting down"
            if problems:
                await _json(send, 503, {"status": "not ready", "reasons": problems})
            else:
                await _json(send, 200, {"status": "ready"})
        else:
            await _json(send, 404, {"error": "not found", "path": path})

    return app


async def _json(send: Send, status: int, body: dict[str, Any]) -> None:
    await _respond(send, status, orjson.dumps(body), "application/json")


async def _respond(send: Send, status: int, body: bytes, content_type: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def serve(
    host: str,
    port: int,
    metrics: Metrics,
    health: Readiness,
    shutdown: Shutdown,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``started()`` hands back the bound URL (port 0 picks one)."""
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(hypercorn_serve, make_app(metrics, health, shutdown), config)
        task_status.started(binds[0])
