"""Directus as the authority on who a client is and which events it may watch.

The processor holds no user database: it forwards the client's own credential (the
session cookie, or a bearer token from the first frame) to Directus and believes the
answer. Three outcomes matter to the caller and nothing else: yes, no, and "Directus
cannot answer now" (``DirectusUnavailable``: unreachable, timed out, 5xx), which the
contract turns into close code 1013 rather than a guess either way. Definite answers are
cached per credential for ``WS_AUTH_CACHE_S``; failures never are.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import httpx
import trio

from processor.broadcast.ttl_cache import TtlCache

# Directus answers these in milliseconds; a slow one must not hold a handshake long.
REQUEST_TIMEOUT_S = 5.0
# Concurrent requests per instance: a reconnect storm queues here, not at Directus.
MAX_CONNECTIONS = 20


class DirectusUnavailable(Exception):
    """Directus did not give a definite answer (unreachable, timeout, 5xx)."""


@attrs.frozen
class Credential:
    """How a client proved who it is: a session cookie or a bearer access token."""

    kind: str  # "cookie" or "bearer"
    value: str  # "name=token" for a cookie, the token for bearer

    def headers(self) -> dict[str, str]:
        if self.kind == "cookie":
            return {"Cookie": self.value}
        return {"Authorization": f"Bearer {self.value}"}


@attrs.define
class Directus:
    http: httpx.AsyncClient
    users: TtlCache[tuple[str | None]]  # credential -> (user id or None = denied,)
    events: TtlCache[bool]  # (credential, event id) -> may read
    timeout_s: float = REQUEST_TIMEOUT_S

    @classmethod
    @asynccontextmanager
    async def open(
        cls, url: str, cache_s: float, timeout_s: float = REQUEST_TIMEOUT_S
    ) -> AsyncIterator[Directus]:
        async with httpx.AsyncClient(
            base_url=url.rstrip("/"),
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=MAX_CONNECTIONS),
            follow_redirects=False,
        ) as http:
            yield cls(http, TtlCache(cache_s), TtlCache(cache_s), timeout_s)

    async def user_id(self, credential: Credential) -> str | None:
        """The Directus user behind ``credential``, or None when it is not valid."""
        cached = self.users.get(credential)
        if cached is not None:
            return cached[0]
        response = await self._get("/users/me?fields=id", credential)
        user: str | None = None
        if response.status_code == 200:
            try:
                data = response.json()["data"]
                user = str(data["id"]) if data and data.get("id") is not None else None
            except (ValueError, KeyError, TypeError, AttributeError):
                user = None
        self.users.put(credential, (user,))
        return user

    async def may_read_event(self, credential: Credential, event_id: str) -> bool:
        key = (credential, event_id)
        cached = self.events.get(key)
        if cached is not None:
            return cached
        response = await self._get(f"/items/events/{event_id}?fields=id", credential)
        allowed = response.status_code == 200
        self.events.put(key, allowed)
        return allowed

    async def _get(self, path: str, credential: Credential) -> httpx.Response:
        try:
            # httpx's timeout is per phase (connect, each read); this bounds the whole.
            with trio.fail_after(self.timeout_s + 1):
                response = await self.http.get(path, headers=credential.headers())
        except (trio.TooSlowError, httpx.HTTPError) as exc:
            raise DirectusUnavailable(str(exc) or type(exc).__name__) from exc
        if response.status_code >= 500:
            raise DirectusUnavailable(f"{path.split('?')[0]}: HTTP {response.status_code}")
        return response
