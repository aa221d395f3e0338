"""The WebSocket server: listen on WS_HOST:WS_PORT, admit clients, close them on shutdown.

    Server.run
    ├── handlers nursery     one task per connection; outlives the listener so that
    │                        every client gets its close 1001 after accepting stopped
    └── listener nursery     serve_websocket; cancelled when shutdown is requested

``run`` calls ``started(port)`` once the socket listens (port 0 picks one). On
``shutdown.requested`` it stops accepting, asks every client to close with 1001 (each
close is shielded and bounded by ``CLOSE_GRACE_S``) and returns when they are gone.
Incoming frames are limited to 64 KiB (trio-websocket closes with 1009 beyond).
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial

import attrs
import structlog
import trio
from trio_websocket import Endpoint, WebSocketRequest, serve_websocket

from processor.broadcast import frames
from processor.broadcast.client import CLOSE_GRACE_S, GOING_AWAY, Client
from processor.broadcast.directus import Directus
from processor.broadcast.handshake import Gatekeeper
from processor.broadcast.hub import Hub
from processor.broadcast.metrics import BroadcastMetrics
from processor.broadcast.session import Session
from processor.broadcast.snapshot import Snapshots
from processor.config import Settings
from processor.core.shutdown import Shutdown

MAX_FRAME_BYTES = 64 * 1024
# A client that has not finished the HTTP upgrade by then is not going to.
HANDSHAKE_TIMEOUT_S = 10.0


@attrs.define
class Server:
    settings: Settings
    gatekeeper: Gatekeeper
    hub: Hub
    directus: Directus
    snapshots: Snapshots
    metrics: BroadcastMetrics
    shutdown: Shutdown
    log: structlog.typing.FilteringBoundLogger
    _clients: set[Client] = attrs.field(factory=set, init=False)

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        s = self.settings
        async with trio.open_nursery() as handlers:
            async with trio.open_nursery() as listening:
                server = await listening.start(
                    partial(
                        serve_websocket,
                        self._handle,
                        s.ws_host,
                        s.ws_port,
                        None,
                        handler_nursery=handlers,
                        max_message_size=MAX_FRAME_BYTES,
                        connect_timeout=HANDSHAKE_TIMEOUT_S,
                        disconnect_timeout=CLOSE_GRACE_S,
                    )
                )
                endpoint = server.listeners[0]
                port = endpoint.port if isinstance(endpoint, Endpoint) else s.ws_port
                self.log.info("websocket listening", host=s.ws_host, port=port)
                task_status.started(port)
                await self.shutdown.requested.wait()
                listening.cancel_scope.cancel()
            self.log.info("websocket closing clients", clients=len(self._clients))
            for client in list(self._clients):
                client.close_with(GOING_AWAY, "server shutting down")

    async def _handle(self, request: WebSocketRequest) -> None:
        if self.shutdown.requested.is_set():
            await request.reject(503)
            return
        admitted = await self.gatekeeper.admit(request)
        if admitted is None:
            return
        s = self.settings
        client = Client(
            ws=admitted.ws,
            user_id=admitted.user_id,
            outbox_capacity=s.ws_outbox_max,
            metrics=self.metrics,
            ping_interval_s=s.ws_ping_interval_s,
            ping_timeout_s=s.ws_ping_timeout_s,
            send_deadline_s=s.ws_ping_timeout_s,
        )
        session = Session(
            client=client,
            credential=admitted.credential,
            hub=self.hub,
            directus=self.directus,
            snapshots=self.snapshots,
            max_subscriptions=s.ws_max_subscriptions,
            log=self.log,
        )
        self._clients.add(client)
        self.metrics.clients.inc()
        try:
            if self.shutdown.requested.is_set():  # admitted while the others were closed
                client.close_with(GOING_AWAY, "server shutting down")
            client.push(frames.hello_frame(client.user_id, datetime.now(UTC)))
            await client.run(session.receive)
        finally:
            session.close()
            self._clients.discard(client)
            self.metrics.clients.dec()
