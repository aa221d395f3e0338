"""Who may connect: path, Origin, then a Directus-checked credential.

Order matters: the Origin check comes before any credential is looked at, because a
cookie on a cross-site request proves nothing about who opened the socket. Browsers send
the session cookie with the upgrade request (checked before accepting: 401 on a bad
one); other clients get the socket first and must send ``{"type":"auth",
"access_token":...}`` within ``auth_frame_timeout_s`` (close 4401 otherwise). When
Directus cannot answer, the socket is accepted and closed with 1013 ("try again later"),
never welcomed.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import orjson
import structlog
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest

from processor.broadcast.client import TRY_AGAIN_LATER, UNAUTHORIZED, close_connection
from processor.broadcast.directus import Credential, Directus, DirectusUnavailable
from processor.broadcast.metrics import BroadcastMetrics
from processor.broadcast.origin import origin_allowed

PATH = "/ws"
# The contract's window for a first-frame ``auth`` message.
AUTH_FRAME_TIMEOUT_S = 5.0


@attrs.frozen
class Admitted:
    ws: WebSocketConnection
    user_id: str
    credential: Credential


def request_headers(raw: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    """Header names lower-cased; repeated headers joined as HTTP allows (cookies by ';')."""
    headers: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        if key in headers:
            headers[key] += ("; " if key == "cookie" else ", ") + text
        else:
            headers[key] = text
    return headers


def request_host(request: WebSocketRequest) -> str | None:
    """The request's Host header.

    wsproto takes Host out of the header list and trio-websocket does not expose the
    event it sits on, so this reads the wsproto ``Request`` event behind the request.
    """
    event = getattr(request, "_event", None)
    host = getattr(event, "host", None)
    return host if isinstance(host, str) else None


def session_cookie(cookie_header: str, name: str) -> str | None:
    """The value of cookie ``name`` in a Cookie header, or None."""
    for part in cookie_header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name and value:
            return value
    return None


@attrs.define
class Gatekeeper:
    directus: Directus
    allowed_origins: tuple[str, ...]
    cookie_name: str
    metrics: BroadcastMetrics
    log: structlog.typing.FilteringBoundLogger
    auth_frame_timeout_s: float = AUTH_FRAME_TIMEOUT_S

    async def admit(self, request: WebSocketRequest) -> Admitted | None:
        """An authenticated connection, or None once the request was refused."""
        if request.path.split("?", 1)[0] != PATH:
            await request.reject(404)
            return None
        headers = request_headers(request.headers)
        host = request_host(request)
        if host is not None:
            headers["host"] = host
        if not origin_allowed(headers, self.allowed_origins):
            self._failed("origin", origin=headers.get("origin"))
            await request.reject(403)
            return None
        token = session_cookie(headers.get("cookie", ""), self.cookie_name)
        if token is None:
            return await self._first_frame(await request.accept())
        credential = Credential("cookie", f"{self.cookie_name}={token}")
        try:
            user_id = await self.directus.user_id(credential)
        except DirectusUnavailable as exc:
            self._failed("directus_unavailable", error=str(exc))
            ws = await request.accept()
            await close_connection(ws, TRY_AGAIN_LATER, "directus unavailable")
            return None
        if user_id is None:
            self._failed("invalid_credentials")
            await request.reject(401)
            return None
        return Admitted(await request.accept(), user_id, credential)

    async def _first_frame(self, ws: WebSocketConnection) -> Admitted | None:
        token: str | None = None
        with trio.move_on_after(self.auth_frame_timeout_s):
            try:
                message = await ws.get_message()
            except ConnectionClosed:
                return None
            try:
                frame = orjson.loads(message)
            except orjson.JSONDecodeError:
                frame = None
            if type(frame) is dict and frame.get("type") == "auth":
                candidate = frame.get("access_token")
                token = candidate if type(candidate) is str and candidate else None
        if token is None:
            self._failed("no_credentials")
            await close_connection(ws, UNAUTHORIZED, "authentication required")
            return None
        credential = Credential("bearer", token)
        try:
            user_id = await self.directus.user_id(credential)
        except DirectusUnavailable as exc:
            self._failed("directus_unavailable", error=str(exc))
            await close_connection(ws, TRY_AGAIN_LATER, "directus unavailable")
            return None
        if user_id is None:
            self._failed("invalid_credentials")
            await close_connection(ws, UNAUTHORIZED, "invalid access token")
            return None
        return Admitted(ws, user_id, credential)

    def _failed(self, reason: str, **details: object) -> None:
        self.metrics.auth_failures.labels(reason=reason).inc()
        self.log.info("websocket refused", reason=reason, **details)
