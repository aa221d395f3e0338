"""Prometheus metrics, on a registry owned by the running app (no module-level globals).

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` histograms); the
stream key is a label on the lag gauges so a mismatched ``REDIS_TELEMETRY_STREAM`` (which
silently starves the processor) is visible on a dashboard.
"""

from __future__ import annotations

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from processor.core.batch_histogram import BatchHistogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def _build(registry: CollectorRegistry, stream: str) -> dict[str, object]:
    labels = {"stream": stream}
    families: dict[str, object] = {
        "consumed": Counter(
            "processor_records_consumed_total",
            "Stream entries read by the consumer.",
            registry=registry,
        ),
        "rows": Counter(
            "processor_rows_total", "Records by write outcome.", ["outcome"], registry=registry
        ),
        "poison": Counter(
            "processor_poison_records_total",
            "Records that break the contract, by error kind.",
            ["kind"],
            registry=registry,
        ),
        "dead_lettered": Counter(
            "processor_dead_lettered_total",
            "Entries moved to the dead-letter stream, by error kind.",
            ["kind"],
            registry=registry,
        ),
        "acked": Counter(
            "processor_entries_acked_total", "Entries XACKed after commit.", registry=registry
        ),
        "claimed": Counter(
            "processor_entries_claimed_total",
            "Entries taken over from idle consumers (XAUTOCLAIM).",
            registry=registry,
        ),
        "delivery_retries": Counter(
            "processor_delivery_retries_total",
            "Entries delivered again after an earlier attempt.",
            registry=registry,
        ),
        "rehydrations": Counter(
            "processor_rehydrations_total",
            "Devices whose hot state was seeded from PostgreSQL.",
            registry=registry,
        ),
        "write_retries": Counter(
            "processor_write_retries_total",
            "Batch writes retried after a transient PostgreSQL error.",
            registry=registry,
        ),
        "write_paths": Counter(
            "processor_write_batches_total",
            "Batches by write path: direct (COPY into positions), staged (COPY into staging,"
            " INSERT ... ON CONFLICT), fallback (a direct COPY met a stored row, then staged).",
            ["path"],
            registry=registry,
        ),
        "reconnects": Counter(
            "processor_reconnects_total",
            "Reconnections after a lost connection.",
            ["service"],
            registry=registry,
        ),
        "batch_latency": Histogram(
            "processor_batch_write_seconds",
            "Time to write one batch (one round trip when healthy).",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        ),
        "batch_size": Histogram(
            "processor_batch_size_records",
            "Records per written batch.",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),  # 2000: BATCH_MAX default
            registry=registry,
        ),
        "e2e_latency": BatchHistogram(
            "processor_end_to_end_seconds",
            "From XADD (entry id time) to the committed row.",
            _LATENCY_BUCKETS,
            registry,
        ),
        "lag": Gauge(
            "processor_group_lag_entries",
            "Entries in the stream not yet delivered to the group (XINFO GROUPS).",
            list(labels),
            registry=registry,
        ),
        "pending": Gauge(
            "processor_group_pending_entries",
            "Entries delivered but not yet acked, whole group (XPENDING).",
            list(labels),
            registry=registry,
        ),
        "dlq_length": Gauge(
            "processor_dlq_length_entries",
            "Entries in the dead-letter stream.",
            list(labels),
            registry=registry,
        ),
        "device_states": Gauge(
            "processor_device_states", "Devices held in hot state.", registry=registry
        ),
        "ready": Gauge("processor_ready", "1 while /readyz answers 200.", registry=registry),
        "panic_dumps": Gauge(
            "processor_panic_dumps",
            "Panic dumps waiting in PANIC_DUMP_DIR: a crash happened; read, then delete them.",
            registry=registry,
        ),
        "panics": Counter(
            "processor_panic_exits_total",
            "Crashes that wrote a panic dump (seen after restart in logs).",
            registry=registry,
        ),
        "feed_pending": Gauge(
            "processor_feed_pending",
            "Items buffered for a Redis feed stream (timing: crossings, committed: fixes).",
            ["feed"],
            registry=registry,
        ),
        "feed_dropped": Counter(
            "processor_feed_dropped_total",
            "Items a full feed buffer dropped (Redis away too long); the database has them.",
            ["feed"],
            registry=registry,
        ),
    }
    # The gauges are labelled by stream: ``lag`` & co. are the first stream's children;
    # with several shards the sampler sets one child per shard (``*_by_stream``).
    for name in ("lag", "pending", "dlq_length"):
        family = families[name]
        assert isinstance(family, Gauge)
        families[f"{name}_by_stream"] = family
        families[name] = family.labels(**labels)
    # Children that exist from the start, at 0: ``increase()`` over a series that appears
    # with its first event misses that event, and alerts are written on these.
    for name, values in (("rows", ("inserted", "duplicate", "failed")),
                         ("reconnects", ("redis", "postgres")),
                         ("write_paths", ("direct", "staged", "fallback"))):  # fmt: skip
        family = families[name]
        assert isinstance(family, Counter)
        for value in values:
            family.labels(value)
    return families


@attrs.define
class Metrics:
    """Typed handles to every metric the pipeline records."""

    registry: CollectorRegistry
    consumed: Counter
    rows: Counter
    poison: Counter
    dead_lettered: Counter
    acked: Counter
    claimed: Counter
    delivery_retries: Counter
    rehydrations: Counter
    write_retries: Counter
    write_paths: Counter
    reconnects: Counter
    batch_latency: Histogram
    batch_size: Histogram
    e2e_latency: BatchHistogram  # one observation per record: see batch_histogram
    lag: Gauge
    pending: Gauge
    dlq_length: Gauge
    lag_by_stream: Gauge
    pending_by_stream: Gauge
    dlq_length_by_stream: Gauge
    device_states: Gauge
    ready: Gauge
    panic_dumps: Gauge
    panics: Counter
    feed_pending: Gauge
    feed_dropped: Counter

    @classmethod
    def create(cls, stream: str) -> Metrics:
        registry = CollectorRegistry(auto_describe=True)
        return cls(registry=registry, **_build(registry, stream))  # type: ignore[arg-type]
