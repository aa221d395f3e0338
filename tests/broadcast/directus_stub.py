"""A stand-in for Directus: ``/users/me`` and ``/items/events/<id>``, by cookie or bearer.

A real HTTP server (hypercorn on a free port), so the processor's httpx client, its
timeouts and its status handling are exercised exactly as against Directus.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import orjson
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

COOKIE = "directus_session_token"


@attrs.define
class DirectusStub:
    users: dict[str, str] = attrs.field(factory=dict)  # token -> user id
    events: dict[str, set[str]] = attrs.field(factory=dict)  # token -> readable event ids
    status_override: int | None = None  # e.g. 503: Directus is "down"
    calls: list[str] = attrs.field(factory=list)
    url: str = ""

    def grant(self, token: str, user_id: str, *event_ids: str) -> None:
        self.users[token] = user_id
        self.events.setdefault(token, set()).update(event_ids)

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        config = Config()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        config.errorlog = None
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve, self._app, config)
            self.url = binds[0]
            task_status.started(self.url)

    def _token(self, headers: dict[str, str]) -> str | None:
        auth = headers.get("authorization", "")
        if auth.startswith("Bearer "):
            return auth[len("Bearer ") :]
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE:
                return value
        return None

    async def _app(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        path = scope["path"]
        self.calls.append(path)
        token = self._token(headers)
        status, body = 404, {"errors": [{"message": "not found"}]}
        if self.status_override is not None:
            status, body = self.status_override, {"errors": [{"message": "unavailable"}]}
        elif token is None or token not in self.users:
            status, body = 401, {"errors": [{"message": "invalid credentials"}]}
        elif path == "/users/me":
            status, body = 200, {"data": {"id": self.users[token]}}
        elif path.startswith("/items/events/"):
            event_id = path.rsplit("/", 1)[-1]
            if event_id in self.events.get(token, set()):
                status, body = 200, {"data": {"id": event_id}}
            else:
                status, body = 403, {"errors": [{"message": "forbidden"}]}
        payload = orjson.dumps(body)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": payload})
