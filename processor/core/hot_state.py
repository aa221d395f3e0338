"""Bounded per-device hot state with least-recently-seen eviction.

Memory must be bounded by ``DEVICE_STATE_MAX``, not by how many trackers ever reported,
so the map is an ``OrderedDict`` used as an LRU: every update is O(1) (lookup,
``move_to_end``, and at most one ``popitem`` from the cold end).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime

from processor.core.model import Position


class DeviceState:
    """What the processor knows of one device right now.

    ``last_position`` is the newest fix *with* a GPS position: the contract's no-fix
    records (0, 0 with no satellites) are stored but are not a place the device was, so
    they never hide the last real one. ``position_count_session`` counts rows this
    instance inserted, not deliveries: a re-delivered record is the same position.
    """

    __slots__ = ("last_position", "last_seen", "position_count_session")

    def __init__(self) -> None:
        self.last_position: Position | None = None
        self.last_seen: datetime | None = None
        self.position_count_session = 0

    def _fields(self) -> tuple[Position | None, datetime | None, int]:
        return (self.last_position, self.last_seen, self.position_count_session)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DeviceState):
            return NotImplemented
        return self._fields() == other._fields()

    def __repr__(self) -> str:
        last, seen, count = self._fields()
        return (
            f"DeviceState(last_position={last!r}, last_seen={seen!r},"
            f" position_count_session={count})"
        )


class DeviceStates:
    """Plain classes here, not attrs ones: this module is compiled (mypyc, see
    ``processor/native.py``), and mypyc makes native classes of plain ones."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._states: OrderedDict[str, DeviceState] = OrderedDict()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._states

    def get(self, device_id: str) -> DeviceState | None:
        return self._states.get(device_id)

    def observe(self, position: Position, seen_at: datetime, *, new: bool = True) -> DeviceState:
        """Record a committed record (``new``: its row was inserted, not a re-delivery);
        a late fix counts but never replaces a newer one."""
        self.observe_many((position,), seen_at, (new,))
        return self._states[position.device_id]  # just touched: the newest, never evicted

    def observe_many(
        self, positions: Sequence[Position], seen_at: datetime, new: Sequence[bool] | None = None
    ) -> None:
        """``observe`` for each of a committed batch, in order (``new`` per position; None:
        all new). The writer's loop, once per record, so ``_touch`` is inlined here: the
        call per record cost ~1 µs of the pipeline's ~17 µs (``python -m
        bench.record_path``)."""
        states, get, move, capacity = (
            self._states,
            self._states.get,
            self._states.move_to_end,
            self.capacity,
        )
        for i, position in enumerate(positions):
            device_id = position.device_id
            state = get(device_id)
            if state is None:
                state = states[device_id] = DeviceState()
                if len(states) > capacity:
                    states.popitem(last=False)
                    self.evictions += 1
            else:
                move(device_id)
            state.last_seen = seen_at
            if new is None or new[i]:
                state.position_count_session += 1
            if position.fix_valid:
                last = state.last_position
                if last is None or position.ts > last.ts:
                    state.last_position = position

    def seed(self, device_id: str, newest: Position | None) -> None:
        """Start a device's state from storage (rehydration) unless it is already known."""
        if device_id in self._states:
            return
        self._touch(device_id).last_position = newest

    def missing(self, device_ids: Iterable[str]) -> list[str]:
        """Devices of a batch with no state yet: the ones rehydration must look up."""
        return [d for d in dict.fromkeys(device_ids) if d not in self._states]

    def items(self) -> Iterator[tuple[str, DeviceState]]:
        return iter(self._states.items())

    def _touch(self, device_id: str) -> DeviceState:
        state = self._states.get(device_id)
        if state is None:
            state = self._states[device_id] = DeviceState()
            if len(self._states) > self.capacity:
                self._states.popitem(last=False)
                self.evictions += 1
        else:
            self._states.move_to_end(device_id)
        return state

    def forget(self, device_id: str) -> bool:
        """Drop a device's state (operator rehydrate); True when there was one."""
        return self._states.pop(device_id, None) is not None
