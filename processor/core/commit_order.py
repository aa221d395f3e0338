"""Parallel writers, in-order consequences.

With ``WRITERS`` > 1 several batches are in flight at once, each on its own PostgreSQL
connection, so one writer formats and sends rows while another waits for its commit
(one writer left the process idle ~20 % of a drain, waiting for each commit). Their
commits may finish in any order. What follows a commit must not: hot state, the race
domain's chunk numbers and live timing, and the acks would otherwise see a later batch
before an earlier one (a device's newer fixes first, then its older ones as "late",
each costing a recompute). So every batch takes a ticket when a writer takes it from
the channel, and the steps after its commit wait for the previous ticket's.
"""

from __future__ import annotations

import attrs
import trio


@attrs.define
class CommitOrder:
    _taken: int = 0
    _done: int = 0
    _changed: trio.Event = attrs.field(factory=trio.Event)

    def take(self) -> int:
        """The ticket of the batch a writer just took (call with no checkpoint between)."""
        self._taken += 1
        return self._taken

    async def turn(self, ticket: int) -> None:
        """Wait until every batch taken before this one has finished its steps."""
        while self._done != ticket - 1:
            await self._changed.wait()

    def done(self, ticket: int) -> None:
        """This batch's steps are finished: the next ticket may go."""
        if self._done != ticket - 1:
            raise RuntimeError(f"ticket {ticket} finished out of turn (done: {self._done})")
        self._done = ticket
        self._changed.set()
        self._changed = trio.Event()
