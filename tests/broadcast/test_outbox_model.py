"""The outbox against a plain model of its rules, on random sequences of pushes and takes.

The outbox keeps its coalescing index only while it is full (``Outbox._latest``) and
takes everything at once when it fits: both are shortcuts, so this holds them to the
rules written out the slow way: FIFO; when full, a keyed frame replaces the newest
queued frame of its key in place, else superseded keyed frames are dropped, else the
outbox overflows.
"""

from __future__ import annotations

from collections.abc import Hashable

import attrs
import trio
from hypothesis import example, given, settings
from hypothesis import strategies as st

from processor.broadcast.outbox import Outbox


@attrs.define
class Model:
    capacity: int
    items: list[tuple[Hashable | None, str]] = attrs.field(factory=list)
    overflowed: bool = False
    coalesced: int = 0

    def push(self, frame: str, key: Hashable | None) -> bool:
        if self.overflowed:
            return False
        if len(self.items) >= self.capacity:
            same = [i for i, (k, _) in enumerate(self.items) if key is not None and k == key]
            if same:
                self.items[same[-1]] = (key, frame)
                self.coalesced += 1
                return True
            newest = {k: i for i, (k, _) in enumerate(self.items) if k is not None}
            kept = [(k, f) for i, (k, f) in enumerate(self.items) if k is None or newest[k] == i]
            self.coalesced += len(self.items) - len(kept)
            self.items = kept
            if len(self.items) >= self.capacity:
                self.overflowed = True
                return False
        self.items.append((key, frame))
        return True

    def take(self, max_bytes: int) -> list[str]:
        out: list[str] = []
        size = 0
        while self.items and (not out or size + len(self.items[0][1]) <= max_bytes):
            out.append(self.items.pop(0)[1])
            size += len(out[-1])
        return out


push = st.tuples(
    st.just("push"),
    st.sampled_from([None, "a", "b", "c", "d"]),
    st.text("xyz", min_size=1, max_size=4),
)
take = st.tuples(st.just("take"), st.integers(0, 12), st.just(""))
# A burst from the hub: several keyed frames in one ``push_many``.
many = st.tuples(
    st.just("many"),
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.text("xyz", min_size=1, max_size=4)),
        max_size=6,
    ),
    st.just(""),
)


# A partial take while the index exists, then the taken frame's key when full again.
STALE_INDEX = [
    ("push", "a", "x"),
    ("push", "b", "x"),
    ("push", "a", "y"),
    ("take", 1, ""),
    ("push", "c", "x"),
    ("push", "a", "z"),
]


@settings(max_examples=400, deadline=None)
@example(capacity=2, ops=STALE_INDEX)
@given(capacity=st.integers(1, 5), ops=st.lists(st.one_of(push, push, take, many), max_size=60))
def test_outbox_follows_the_model(capacity: int, ops: list[tuple[str, object, str]]) -> None:
    counted: list[int] = []
    box: Outbox[str] = Outbox(capacity, on_coalesced=counted.append)
    model = Model(capacity)
    for op, arg, frame in ops:
        if op == "push":
            assert box.push(frame, arg) == model.push(frame, arg)
        elif op == "many":
            assert isinstance(arg, list)
            # One at a time, up to the first refusal.
            assert box.push_many(arg) == all(model.push(f, k) for k, f in arg)
        else:
            assert isinstance(arg, int)
            if model.overflowed:
                continue  # get_many raises then; the model has nothing more to say
            if model.items:
                assert trio.run(box.get_many, arg) == model.take(arg)
        assert len(box) == len(model.items)
        assert box.overflowed == model.overflowed
        assert box.coalesced == model.coalesced == sum(counted)
