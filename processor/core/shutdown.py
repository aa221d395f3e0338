"""Graceful shutdown as data: which scopes stop reading, and the overall deadline.

Shutdown happens in two steps. ``begin()`` cancels every read scope (consumer, claimer),
so no new entries are taken, and puts a deadline of ``budget_s`` on the root scope: the
writer and acker drain what was read and exit on their own if they can, and whatever is
still running when the budget runs out is cancelled (its entries stay pending in Redis
for the next start or another instance).
"""

from __future__ import annotations

import attrs
import trio


@attrs.define
class Shutdown:
    budget_s: float
    requested: trio.Event = attrs.field(factory=trio.Event)
    reason: str = ""
    _read_scopes: list[trio.CancelScope] = attrs.field(factory=list)
    _root: trio.CancelScope | None = None

    def attach_root(self, scope: trio.CancelScope) -> None:
        self._root = scope
        if self.requested.is_set():
            scope.deadline = min(scope.deadline, trio.current_time() + self.budget_s)

    def read_scope(self) -> trio.CancelScope:
        """A scope for a reader's loop; cancelled when shutdown begins (or already)."""
        scope = trio.CancelScope()
        if self.requested.is_set():
            scope.cancel()
        self._read_scopes.append(scope)
        return scope

    def begin(self, reason: str) -> None:
        if self.requested.is_set():
            return
        self.reason = reason
        self.requested.set()
        for scope in self._read_scopes:
            scope.cancel()
        if self._root is not None:
            self._root.deadline = trio.current_time() + self.budget_s

    @property
    def budget_exceeded(self) -> bool:
        return self._root is not None and self._root.cancelled_caught
