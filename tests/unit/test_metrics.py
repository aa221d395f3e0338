"""Series alerts are written on exist from the start, at 0."""

from __future__ import annotations

from prometheus_client import generate_latest

from processor.core.metrics import Metrics


def test_outcome_and_reconnect_series_exist_before_their_first_event() -> None:
    text = generate_latest(Metrics.create("s").registry).decode()
    for series in (
        'processor_rows_total{outcome="inserted"} 0.0',
        'processor_rows_total{outcome="failed"} 0.0',
        'processor_reconnects_total{service="redis"} 0.0',
        'processor_reconnects_total{service="postgres"} 0.0',
    ):
        assert series in text, series
