from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from processor.core.hot_state import DeviceStates
from processor.core.model import evolve
from tests.helpers import BASE_TIME, make_position

NOW = datetime(2026, 5, 12, tzinfo=UTC)


def test_late_fix_counts_but_does_not_replace_newer() -> None:
    states = DeviceStates(10)
    states.observe(make_position("a", second=10), NOW)
    state = states.observe(make_position("a", second=3), NOW)
    assert state.last_position is not None
    assert state.last_position.ts == make_position("a", second=10).ts
    assert state.position_count_session == 2
    assert state.last_seen == NOW


def test_capacity_evicts_least_recently_seen() -> None:
    states = DeviceStates(3)
    for device in "abc":
        states.observe(make_position(device), NOW)
    states.observe(make_position("a", second=1), NOW)  # a is now the most recent
    states.observe(make_position("d"), NOW)
    assert len(states) == 3
    assert "b" not in states
    assert {"a", "c", "d"} == {d for d, _ in states.items()}
    assert states.evictions == 1


def test_memory_is_bounded_by_cap_not_devices_seen() -> None:
    states = DeviceStates(100)
    for i in range(10_000):
        states.observe(make_position(f"dev{i}"), NOW)
    assert len(states) == 100
    assert states.evictions == 9_900


def test_seed_does_not_override_live_state_and_missing_lists_unknown() -> None:
    states = DeviceStates(10)
    states.observe(make_position("a", second=10), NOW)
    states.seed("a", make_position("a", second=99))
    state = states.get("a")
    assert state is not None
    assert state.last_position is not None
    assert state.last_position.ts == make_position("a", second=10).ts
    assert states.missing(["a", "b", "b", "c"]) == ["b", "c"]
    states.seed("b", None)
    assert states.missing(["b"]) == []


# Devices and fix times in a small space, so late fixes, ties and evictions all occur.
observations = st.lists(
    st.tuples(st.sampled_from("abcdef"), st.integers(min_value=0, max_value=20)), max_size=60
)


@settings(max_examples=300, deadline=None)
@given(observations, st.integers(min_value=1, max_value=6))
def test_state_matches_a_simple_model_whatever_the_arrival_order(
    seen: list[tuple[str, int]], capacity: int
) -> None:
    """Against a model with no cleverness: last_position is the newest fix by fix time
    (of equal ones the first: a twin never replaces it), the count is every observation
    since the device (re)entered, and the devices kept are the ``capacity`` most recently
    observed, in recency order."""
    states = DeviceStates(capacity)
    last: dict[str, tuple[int, int]] = {}  # device -> (fix second, step that delivered it)
    counts: dict[str, int] = {}
    recency: list[str] = []
    for step, (device, second) in enumerate(seen):
        # The step rides in altitude so the test can tell which of equal fixes is kept.
        states.observe(make_position(device, second=second, altitude=float(step)), NOW)
        if device in recency:
            recency.remove(device)
        else:
            counts[device] = 0
            last.pop(device, None)
        recency.append(device)
        if device not in last or second > last[device][0]:
            last[device] = (second, step)
        counts[device] += 1
        for evicted in recency[:-capacity]:
            recency.remove(evicted)
        assert len(states) == len(recency) <= capacity

    assert [d for d, _ in states.items()] == recency
    for device in recency:
        state = states.get(device)
        assert state is not None
        assert state.last_position is not None
        second, step = last[device]
        assert state.last_position.ts == BASE_TIME + timedelta(seconds=second)
        assert state.last_position.altitude == float(step)
        assert state.position_count_session == counts[device]
        assert state.last_seen == NOW


def test_a_no_fix_record_is_seen_but_never_hides_the_last_real_position() -> None:
    states = DeviceStates(10)
    states.observe(make_position("a", second=1), NOW)
    no_fix = make_position("a", second=5, latitude=0.0, longitude=0.0, satellites=0)
    state = states.observe(evolve(no_fix, fix_valid=False), NOW)
    assert state.last_position is not None
    assert state.last_position.ts == BASE_TIME + timedelta(seconds=1)
    assert state.position_count_session == 2
    only_no_fix = states.observe(evolve(no_fix, device_id="b", fix_valid=False), NOW)
    assert only_no_fix.last_position is None


def test_a_redelivered_record_is_not_counted_again() -> None:
    states = DeviceStates(10)
    states.observe(make_position("a", second=1), NOW)
    state = states.observe(make_position("a", second=1), NOW, new=False)
    assert state.position_count_session == 1


@settings(max_examples=300, deadline=None)
@given(
    observations,
    st.integers(min_value=1, max_value=6),
    st.lists(st.booleans(), min_size=60, max_size=60),
    st.booleans(),
)
def test_observe_many_is_observe_one_by_one(
    seen: list[tuple[str, int]], capacity: int, new: list[bool], all_new: bool
) -> None:
    """The writer's batch call leaves exactly the state a loop of ``observe`` leaves:
    positions kept, counts, last seen, recency order and evictions."""
    positions = [
        make_position(device, second=second, altitude=float(step))
        for step, (device, second) in enumerate(seen)
    ]
    flags = [True] * len(positions) if all_new else new[: len(positions)]
    one_by_one, batched = DeviceStates(capacity), DeviceStates(capacity)
    for position, is_new in zip(positions, flags, strict=True):
        one_by_one.observe(position, NOW, new=is_new)
    batched.observe_many(positions, NOW, None if all_new else flags)

    assert list(batched.items()) == list(one_by_one.items())
    assert batched.evictions == one_by_one.evictions
