"""BatchHistogram exposes exactly what prometheus-client's Histogram would."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from processor.core.batch_histogram import BatchHistogram

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def exposition(registry: CollectorRegistry) -> list[str]:
    # Histogram adds a _created sample (a timestamp): not part of what is compared.
    return [
        line for line in generate_latest(registry).decode().splitlines() if "_created" not in line
    ]


@given(
    st.lists(
        st.lists(st.floats(min_value=0, max_value=100, allow_nan=False) | st.sampled_from(BUCKETS))
    )
)
def test_same_exposition_as_a_histogram(batches: list[list[float]]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batch = BatchHistogram("x_seconds", "doc", BUCKETS, ours)
    reference = Histogram("x_seconds", "doc", buckets=BUCKETS, registry=theirs)
    for values in batches:
        batch.observe_many(values)
        for value in values:
            reference.observe(value)
    mine, expected = exposition(ours), exposition(theirs)
    # Sums are added in a different order: equal up to float rounding.
    sum_line = next(i for i, line in enumerate(expected) if line.startswith("x_seconds_sum"))
    assert float(mine[sum_line].split()[1]) == pytest.approx(float(expected[sum_line].split()[1]))
    del mine[sum_line], expected[sum_line]
    assert mine == expected


def test_values_on_a_bound_count_in_that_bucket() -> None:
    registry = CollectorRegistry()
    histogram = BatchHistogram("y_seconds", "doc", (0.1, 1.0), registry)
    histogram.observe_many([0.1, 0.1000001, 1.0, 7.0])
    histogram.observe(0.0)
    assert registry.get_sample_value("y_seconds_bucket", {"le": "0.1"}) == 2
    assert registry.get_sample_value("y_seconds_bucket", {"le": "1.0"}) == 4
    assert registry.get_sample_value("y_seconds_bucket", {"le": "+Inf"}) == 5
    assert registry.get_sample_value("y_seconds_count") == 5
