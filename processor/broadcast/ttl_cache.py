"""A small TTL cache with a size bound, for Directus answers per credential.

A reconnect storm (every SPA tab after a deploy) must not become a Directus storm, and a
flood of random tokens must not grow memory: entries expire after ``ttl_s`` and the
oldest are evicted beyond ``max_entries``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import attrs
import trio

V = TypeVar("V")


@attrs.define
class TtlCache(Generic[V]):
    ttl_s: float
    max_entries: int = 10_000
    clock: Callable[[], float] = trio.current_time
    _entries: OrderedDict[Hashable, tuple[float, V]] = attrs.field(factory=OrderedDict, init=False)

    def get(self, key: Hashable) -> V | None:
        found = self._entries.get(key)
        if found is None:
            return None
        expires, value = found
        if self.clock() >= expires:
            del self._entries[key]
            return None
        return value

    def put(self, key: Hashable, value: V) -> None:
        if self.ttl_s <= 0:
            return
        self._entries.pop(key, None)
        self._entries[key] = (self.clock() + self.ttl_s, value)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
