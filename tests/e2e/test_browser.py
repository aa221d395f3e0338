"""The live map's socket in a real browser: headless Chromium, driven over CDP.

A small page (served here, on 127.0.0.1) opens the WebSocket the way the SPA does: the
browser attaches the Directus session cookie to the upgrade request by itself (the
cookie is HttpOnly: the page cannot read it), the page subscribes after ``hello`` and
lists every position it receives. The test publishes fixes to the Redis stream and reads
what the page got with ``Runtime.evaluate``.

The cookie comes from a real Directus login when Directus is available (see
conftest.py), else from the Directus stand-in of tests/broadcast.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import attrs
import pytest
import redis
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from processor import config
from processor.broadcast.frames import iso
from tests.broadcast.directus_stub import DirectusStub
from tests.broadcast.live import Race, make_race, start_app, store_fix, ws_settings
from tests.e2e.browser import Cdp, Chromium
from tests.e2e.directus import COOKIE, DirectusServer, Viewer
from tests.helpers import make_position, publish, wait_for

pytestmark = pytest.mark.e2e

PAGE = b"""<!doctype html>
<html>
<head><meta charset="utf-8"><title>live</title></head>
<body>
<p id="status">connecting</p>
<ol id="positions"></ol>
<script>
"use strict";
const params = new URLSearchParams(location.search);
const live = (window.live = { frames: [], positions: [], closed: null });
const status = (text) => { document.getElementById("status").textContent = text; };
const socket = new WebSocket(params.get("ws"));
live.subscribe = (eventId, req) =>
  socket.send(JSON.stringify({ type: "subscribe", event_id: eventId, req }));
function show(p) {
  live.positions.push(p);
  const item = document.createElement("li");
  item.dataset.device = p.device_id;
  item.textContent = `${p.device_id} ${p.ts} ${p.lat},${p.lon}`;
  document.getElementById("positions").appendChild(item);
}
socket.onopen = () => status("open");
socket.onmessage = (e) => {
  const m = JSON.parse(e.data);
  live.frames.push(m);
  if (m.type === "hello") {
    status(`hello ${m.user_id}`);
    live.subscribe(params.get("event"), "page");
  } else if (m.type === "snapshot") {
    m.positions.forEach(show);
  } else if (m.type === "position") {
    show(m);
  }
};
socket.onclose = (e) => {
  live.closed = { code: e.code, reason: e.reason };
  status(`closed ${e.code}`);
};
</script>
</body>
</html>
"""


async def page_app(scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Any) -> None:
    """ASGI: the page on every path (and nothing else)."""
    if scope["type"] == "lifespan":
        while True:
            kind = (await receive())["type"].rsplit(".", 1)[-1]
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    headers = [(b"content-type", b"text/html; charset=utf-8"), (b"cache-control", b"no-store")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": PAGE})


async def serve_page(nursery: trio.Nursery) -> tuple[str, str]:
    """Two origins on 127.0.0.1 serving the page: (allowed, not allowed).

    Both are the same site as the socket (cookies are per host, not per port), so the
    browser sends the session cookie from either: only the Origin check tells them apart.
    """
    page = Config()
    page.bind = ["127.0.0.1:0", "127.0.0.1:0"]
    page.accesslog = None
    page.errorlog = None
    binds: list[str] = await nursery.start(serve, page_app, page)
    allowed, other = (b.rstrip("/") for b in binds)
    return allowed, other


@attrs.frozen
class Login:
    directus_url: str
    postgres_url: str
    session_token: str
    user_id: str
    race: Race


@pytest.fixture
def real_login(request: pytest.FixtureRequest) -> Login | None:
    """A real Directus user's login if Directus is available here, else None."""
    try:
        server: DirectusServer = request.getfixturevalue("directus_server")
    except pytest.skip.Exception:
        return None
    viewer: Viewer = request.getfixturevalue("viewer")
    # The race was made through Directus: it lives in Directus' database.
    return Login(server.url, server.database_url, viewer.session_token, viewer.user_id, viewer.race)


@pytest.fixture
async def login(
    real_login: Login | None, settings: config.Settings, nursery: trio.Nursery
) -> Login:
    if real_login is not None:
        return real_login
    stub = DirectusStub()
    await nursery.start(stub.run)
    race = make_race(settings.postgres_url)
    stub.grant("browser-session", "u-browser", race.event_id)
    return Login(stub.url, settings.postgres_url, "browser-session", "u-browser", race)


async def test_page_gets_hello_snapshot_and_live_positions(
    login: Login,
    settings: config.Settings,
    chromium: Chromium,
    sync_redis: redis.Redis,
    nursery: trio.Nursery,
) -> None:
    allowed, other = await serve_page(nursery)
    s = ws_settings(
        settings,
        login.directus_url,
        postgres_url=login.postgres_url,
        ws_allowed_origins=(allowed,),
    )
    run = await start_app(nursery, s)
    race = login.race
    a, b, c = race.devices
    stored = make_position(a, 5, latitude=41.1, longitude=19.1)
    store_fix(login.postgres_url, stored)

    async with Cdp.open(chromium) as cdp:
        await cdp.call(
            "Network.setCookie",
            session=cdp.page,
            name=COOKIE,
            value=login.session_token,
            url=f"{allowed}/",
            httpOnly=True,
            sameSite="Lax",
        )
        query = urlencode({"ws": run.url, "event": race.event_id})

        async def frames_of(kind: str) -> list[dict[str, Any]]:
            frames: list[dict[str, Any]] = await cdp.evaluate(
                f"window.live ? window.live.frames.filter(f => f.type === {kind!r}) : []"
            )
            return frames

        async def has(kind: str) -> bool:
            return bool(await frames_of(kind))

        async def failure() -> str:
            state = await cdp.evaluate("JSON.stringify(window.live || null)")
            return f"page state: {state}\nconsole: {cdp.console()}\n{chromium.log_tail()}"

        async def settled() -> bool:
            return bool(
                await cdp.evaluate(
                    "!!window.live && (window.live.closed !== null"
                    " || window.live.frames.some(f => f.type === 'snapshot'))"
                )
            )

        await cdp.call("Page.navigate", session=cdp.page, url=f"{allowed}/?{query}")
        try:
            await wait_for(settled, 15, what="the page's snapshot (or its socket closing)")
            assert await has("snapshot"), "the socket closed before a snapshot"
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{await failure()}") from None

        (hello,) = await frames_of("hello")
        assert hello["user_id"] == login.user_id
        assert await cdp.evaluate("document.getElementById('status').textContent") == (
            f"hello {login.user_id}"
        )
        # HttpOnly: the browser sent it, the page cannot read it.
        assert COOKIE not in await cdp.evaluate("document.cookie")
        (snapshot,) = await frames_of("snapshot")
        assert snapshot["req"] == "page"
        assert [(p["device_id"], p["ts"]) for p in snapshot["positions"]] == [(a, iso(stored.ts))]

        fixes = [
            make_position(b, 10, latitude=41.2, longitude=19.2),
            make_position(c, 11, latitude=41.3, longitude=19.3),
            make_position(a, 4),  # older than the page's fix of a: never sent
            make_position(a, 12, latitude=41.4, longitude=19.4),
        ]
        publish(sync_redis, settings.telemetry_stream, fixes)
        await wait_for(
            lambda: _count(cdp, "window.live.positions.length", 4), 15, what="4 positions"
        )
        positions = await cdp.evaluate("window.live.positions")
        assert [(p["device_id"], p["ts"], p["lat"], p["lon"]) for p in positions] == [
            (a, iso(stored.ts), 41.1, 19.1),
            (b, iso(fixes[0].ts), 41.2, 19.2),
            (c, iso(fixes[1].ts), 41.3, 19.3),
            (a, iso(fixes[3].ts), 41.4, 19.4),
        ]
        assert {p["entry_id"] for p in positions} == set(race.entries.values())
        items = await cdp.evaluate(
            "[...document.querySelectorAll('#positions li')].map(li => li.dataset.device)"
        )
        assert items == [a, b, c, a]

        # The same page asking for an event its user may not read.
        await cdp.evaluate(f"window.live.subscribe({race.other_event_id!r}, 'x')")
        await wait_for(lambda: has("error"), 15, what="the forbidden answer")
        (error,) = await frames_of("error")
        assert (error["code"], error["event_id"], error["req"]) == (
            "forbidden",
            race.other_event_id,
            "x",
        )

        # Another origin on the same host: the browser sends the cookie all the same
        # (same site), and the processor refuses the handshake (403): no hello.
        refused_before = run.metric("processor_ws_auth_failures_total", reason="origin")
        await cdp.call("Page.navigate", session=cdp.page, url=f"{other}/?{query}")
        await wait_for(
            lambda: _count(cdp, "window.live && window.live.closed ? 1 : 0", 1),
            15,
            what="the foreign page's socket to close",
        )
        assert await cdp.evaluate("window.live.frames") == []
        assert (await cdp.evaluate("window.live.closed"))["code"] == 1006
        assert run.metric("processor_ws_auth_failures_total", reason="origin") == (
            refused_before + 1
        )
    await run.stop()


async def _count(cdp: Cdp, expression: str, at_least: int) -> bool:
    value = await cdp.evaluate(expression)
    return isinstance(value, int) and value >= at_least
