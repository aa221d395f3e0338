from __future__ import annotations

from datetime import UTC, datetime

from processor.core.hot_state import DeviceStates
from tests.helpers import make_position

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
