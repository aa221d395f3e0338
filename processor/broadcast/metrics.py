"""The broadcast's Prometheus metrics, registered on the app's own registry."""

from __future__ import annotations

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Fan-out should take milliseconds; the tail shows a reader falling behind the stream.
_FANOUT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@attrs.frozen
class BroadcastMetrics:
    clients: Gauge
    subscriptions: Gauge
    frames_sent: Counter
    writes: Counter
    frames_coalesced: Counter
    slow_closed: Counter
    auth_failures: Counter
    fanout_latency: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> BroadcastMetrics:
        return cls(
            clients=Gauge(
                "processor_ws_clients", "Connected, authenticated clients.", registry=registry
            ),
            subscriptions=Gauge(
                "processor_ws_subscriptions", "Event subscriptions, all clients.", registry=registry
            ),
            frames_sent=Counter(
                "processor_ws_frames_sent_total", "Frames written to clients.", registry=registry
            ),
            writes=Counter(
                "processor_ws_writes_total",
                "Socket writes to clients (frames per write = frames sent / writes).",
                registry=registry,
            ),
            frames_coalesced=Counter(
                "processor_ws_frames_coalesced_total",
                "Unsent position frames replaced by a newer fix of the same device.",
                registry=registry,
            ),
            slow_closed=Counter(
                "processor_ws_slow_clients_closed_total",
                "Clients closed with 1013 because they could not keep up.",
                registry=registry,
            ),
            auth_failures=Counter(
                "processor_ws_auth_failures_total",
                "Refused connections, by reason.",
                ["reason"],
                registry=registry,
            ),
            fanout_latency=Histogram(
                "processor_ws_fanout_seconds",
                "From XADD (entry id time) to the frame handed to client outboxes.",
                buckets=_FANOUT_BUCKETS,
                registry=registry,
            ),
        )
