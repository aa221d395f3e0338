"""The cross-site WebSocket hijacking guard: is the handshake's Origin allowed?

Browsers attach the Directus session cookie to a WebSocket opened by *any* page, so the
Origin header (which a browser always sets and a page cannot forge) decides. A request
without Origin does not come from a browser and cannot ride a victim's cookie; it is let
through to authentication like any API client.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit


def origin_allowed(headers: Mapping[str, str], allowed: Sequence[str]) -> bool:
    origin = headers.get("origin")
    if origin is None:
        return True
    origin = origin.strip().rstrip("/")
    if allowed:
        return origin in allowed
    # Same host only. Host names, not ports: the SPA is served on 443 and the socket on
    # WS_PORT (8081), which is the ordinary deployment, and still the same site.
    host = urlsplit("//" + headers.get("host", "").strip()).hostname
    return host is not None and urlsplit(origin).hostname == host
