"""The live broadcast as a plug-in of the app (``processor.plugins``).

    BroadcastPlugin.run
    ├── roster keeper   entries x devices, reloaded every WS_ENTRIES_REFRESH_S
    ├── stream tail     XREAD of every record -> hub -> client outboxes
    ├── timing tail     XREAD of <stream>:timing, every instance's crossings -> hub
    └── server          WebSocket on WS_HOST:WS_PORT/ws

It hands the writer nothing (no enricher, no observers): it reads the streams itself,
so it sees every record and every crossing on every instance (``timing_feed``).
``port`` holds the bound WebSocket port once ``run`` has started (tests bind port 0 and
read it here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs
import trio

from processor.broadcast.directus import Directus
from processor.broadcast.handshake import AUTH_FRAME_TIMEOUT_S, Gatekeeper
from processor.broadcast.hub import AttributeSource, Hub, no_attributes
from processor.broadcast.metrics import BroadcastMetrics
from processor.broadcast.race_store import RaceStore
from processor.broadcast.roster import RosterKeeper
from processor.broadcast.server import Server
from processor.broadcast.snapshot import Snapshots
from processor.broadcast.tail import StreamTail
from processor.broadcast.timing_feed import TimingTail, timing_stream
from processor.core.observer import CommitObserver, Enricher
from processor.core.read_pacing import ReadPacer

if TYPE_CHECKING:  # processor.plugins imports this module to list the default plug-ins
    from processor.plugins import Context


@attrs.define
class BroadcastPlugin:
    context: Context
    metrics: BroadcastMetrics
    store: RaceStore
    attributes: AttributeSource = no_attributes
    auth_frame_timeout_s: float = AUTH_FRAME_TIMEOUT_S
    name: str = "broadcast"
    port: int | None = None
    hub: Hub | None = None

    @property
    def enricher(self) -> Enricher | None:
        return None

    @property
    def observers(self) -> Sequence[CommitObserver]:
        return ()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        s, log = self.context.settings, self.context.log.bind(plugin=self.name)
        try:
            async with (
                Directus.open(s.directus_url, s.ws_auth_cache_s) as directus,
                trio.open_nursery() as nursery,
            ):
                roster = RosterKeeper(self.store, s.ws_entries_refresh_s, log)
                await nursery.start(roster.run)
                hub = self.hub = Hub(roster, self.metrics, self.attributes)
                # One XREAD over every shard on one Redis; per shard in a cluster (slots).
                keys = s.telemetry_streams
                for group in [(k,) for k in keys] if s.cluster else [keys]:
                    await nursery.start(
                        StreamTail(
                            streams=self.context.streams,
                            keys=group,
                            count=s.read_count,
                            block_ms=s.block_ms,
                            future_tolerance_s=s.future_tolerance_s,
                            publish=hub.publish_many,
                            log=log,
                            # A quarter of an outbox per hand-off: big enough that each
                            # event gets several frames per hand-off (its cost is per
                            # event and subscription), and a client at yield_at still
                            # has room for one more burst of its events.
                            burst=max(1, s.ws_outbox_max // 4),
                            yield_at=max(1, s.ws_outbox_max // 2),
                            pacer=ReadPacer(s.ws_read_pace_ms / 1000),
                            entered=hub.entered,
                        ).run
                    )
                await nursery.start(
                    TimingTail(
                        streams=self.context.streams,
                        key=timing_stream(s.telemetry_stream),
                        block_ms=s.block_ms,
                        deliver=hub.publish_timing,
                        log=log,
                    ).run
                )
                gatekeeper = Gatekeeper(
                    directus=directus,
                    allowed_origins=s.ws_allowed_origins,
                    cookie_name=s.ws_cookie_name,
                    metrics=self.metrics,
                    log=log,
                    auth_frame_timeout_s=self.auth_frame_timeout_s,
                )
                server = Server(
                    settings=s,
                    gatekeeper=gatekeeper,
                    hub=hub,
                    directus=directus,
                    snapshots=Snapshots(hub, self.context.states, self.store, log),
                    metrics=self.metrics,
                    shutdown=self.context.shutdown,
                    log=log,
                )
                self.port = await nursery.start(server.run)
                task_status.started()
        finally:
            await self.store.aclose()


def broadcast_plugin(
    context: Context,
    *,
    attributes: AttributeSource = no_attributes,
    store: RaceStore | None = None,
    auth_frame_timeout_s: float = AUTH_FRAME_TIMEOUT_S,
) -> BroadcastPlugin:
    """Build the plug-in; ``attributes`` is where the race domain's IO mapping plugs in."""
    return BroadcastPlugin(
        context=context,
        metrics=BroadcastMetrics.create(context.metrics.registry),
        store=store or RaceStore(context.settings.postgres_url),
        attributes=attributes,
        auth_frame_timeout_s=auth_frame_timeout_s,
    )
