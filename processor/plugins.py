"""Plug-ins: the subtrees beside the core pipeline (race domain, live broadcast).

A plug-in is built from the running app's ``Context``, started in the services nursery
before the pipeline (``run`` calls ``task_status.started()`` once it can serve, e.g. the
race definition is loaded), and cancelled after the pipeline has drained. It may hand
the writer an ``Enricher`` (derived attributes, stored with each row) and
``CommitObserver``s (called per committed batch). The core only sees those protocols.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs
import structlog
import trio

from processor.config import Settings
from processor.core.health import Readiness
from processor.core.hot_state import DeviceStates
from processor.core.metrics import Metrics
from processor.core.model import Position
from processor.core.observer import CommitObserver, Enricher, derive_json_each
from processor.core.redis_io import RedisStreams
from processor.core.shutdown import Shutdown

if TYPE_CHECKING:
    from processor.domain.plugin import DomainPlugin


@attrs.frozen(kw_only=True)
class Context:
    """What a plug-in may use of the running app. It owns nothing here; the app does."""

    settings: Settings
    log: structlog.typing.FilteringBoundLogger
    metrics: Metrics
    states: DeviceStates
    health: Readiness
    shutdown: Shutdown
    streams: RedisStreams


class Plugin(Protocol):
    name: str

    @property
    def enricher(self) -> Enricher | None: ...

    @property
    def observers(self) -> Sequence[CommitObserver]: ...

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None: ...


@runtime_checkable
class Reloadable(Protocol):
    """A plug-in whose data comes from the database and can be reloaded on request
    (``processor domain reload`` publishes the request to every instance)."""

    def request_reload(self) -> None: ...


PluginFactory = Callable[[Context], Plugin]


def default_factories(settings: Settings) -> list[PluginFactory]:
    """The plug-ins a configured daemon runs (imported here: they import this module).

    The broadcast sends the domain's derived attributes, so it is built after the domain
    (the app calls factories in order) and takes the domain plug-in's enricher. The
    domain's crossings go to every instance's broadcast through the timing feed (a Redis
    stream, ``processor.broadcast.timing_feed``), not to this instance's hub directly.
    """
    factories: list[PluginFactory] = []
    built_domain: list[DomainPlugin] = []
    if settings.domain_enabled:
        from processor.domain.plugin import domain_plugin

        def make_domain(context: Context) -> DomainPlugin:
            plugin = domain_plugin(context)
            built_domain.append(plugin)
            return plugin

        factories.append(make_domain)
    if settings.times_here:
        from processor.broadcast.timing_feed import TimingPublisher, timing_stream

        def make_timing_feed(context: Context) -> Plugin:
            feed = TimingPublisher(
                context.streams,
                timing_stream(settings.telemetry_stream),
                context.log.bind(plugin="timing feed"),
            )
            built_domain[0].add_timing_sink(feed.announce)
            feed.instrument(context.metrics, "timing")
            return feed

        factories.append(make_timing_feed)
    if settings.timing == "publish":  # config refuses it without the domain
        from processor.domain.committed_feed import CommittedPublisher, committed_stream

        def make_committed_feed(context: Context) -> Plugin:
            definitions = built_domain[0].definitions
            feed = CommittedPublisher(
                context.streams,
                committed_stream(settings.telemetry_stream),
                lambda: definitions.current,
                context.log.bind(plugin="committed feed"),
            )
            feed.instrument(context.metrics, "committed")
            return feed

        factories.append(make_committed_feed)
    if settings.ws_enabled:
        from processor.broadcast.hub import no_attributes
        from processor.broadcast.plugin import broadcast_plugin

        def make_broadcast(context: Context) -> Plugin:
            domain = built_domain[0] if built_domain else None
            return broadcast_plugin(
                context, attributes=domain.enricher.derive if domain else no_attributes
            )

        factories.append(make_broadcast)
    return factories


@attrs.frozen
class Enrichers:
    """Several enrichers as one: their derived attributes merged, later ones winning."""

    parts: Sequence[Enricher]

    def derive(self, position: Position) -> Mapping[str, Any] | None:
        merged: dict[str, Any] = {}
        for part in self.parts:
            named = part.derive(position)
            if named:
                merged.update(named)
        return merged or None

    def derive_json(self, positions: Sequence[Position]) -> list[bytes | None]:
        return derive_json_each(self.derive, positions)


def combined_enricher(plugins: Sequence[Plugin]) -> Enricher | None:
    parts = [p.enricher for p in plugins if p.enricher is not None]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else Enrichers(parts)
