"""BatchHistogram exposes exactly what prometheus-client's Histogram would."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from processor.core.batch_histogram import BatchHistogram
from processor.core.model import Entry, entry_id_millis
from tests.helpers import make_position

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


@given(
    # Few distinct ms values too, so runs of ids from one millisecond (shared age) occur.
    st.lists(st.tuples(st.integers(0, 2**45) | st.integers(99, 101), st.integers(0, 2**20))),
    st.floats(min_value=0, max_value=2**36),
)
def test_ages_since_xadd_are_the_entry_ids_clock_to_now(
    ids: list[tuple[int, int]], now_s: float
) -> None:
    """Each entry counts at ``now_s`` minus its id's ms part, 0 for ids from the future
    (the Redis server's clock ahead of this one): as observe_many of those ages."""
    entries = [Entry(f"{ms}-{seq}", make_position(), {}) for ms, seq in ids]
    ages = [max(0.0, now_s - entry_id_millis(e.entry_id) / 1000) for e in entries]
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    BatchHistogram("z_seconds", "doc", BUCKETS, ours).observe_since_xadd(entries, now_s)
    BatchHistogram("z_seconds", "doc", BUCKETS, theirs).observe_many(ages)
    for le in [*map(str, BUCKETS), "+Inf"]:
        bucket = {"le": le if le == "+Inf" else str(float(le))}
        got = ours.get_sample_value("z_seconds_bucket", bucket)
        assert got == theirs.get_sample_value("z_seconds_bucket", bucket), le
    assert ours.get_sample_value("z_seconds_sum") == pytest.approx(
        theirs.get_sample_value("z_seconds_sum")
    )
