"""What the writer committed for timing, and when timing should wait for the writer.

The observer (writer side) and the worker (timing side) of the domain plug-in share one
``Commits``: the number of committed chunks (a pass that reads the count knows every
chunk up to it is in the database), the devices whose chunks were not handed over (the
*backlog*, caught up from the stored rows), and whether timing is currently deferred.

Deferral: timing runs in the writer's thread, and timed while a backlog drained it took
~30 % of the drain rate (bench/README.md, race domain). A full batch (``BATCH_MAX``
records) means the writer is behind, so its chunk is not handed over and timing work
waits, until a batch is not full or ``DEFER_UNDER_BACKLOG_S`` has passed; then the worker
has a turn of one round before deferral may start again, so a feed that never lets up
is still timed.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import attrs
import trio

from processor.core.model import Entry, Outcome

# While the writer writes full batches (a backlog drains), timing waits for it: the
# chunks' devices are noted and caught up from the database once a batch is not full,
# or after this long at the latest (then the worker has a turn), so even a feed that
# never lets up is timed.
DEFER_UNDER_BACKLOG_S = 2.0
# How often waiting timing work looks whether the backlog is drained.
DEFER_POLL_S = 0.05


def to_time(
    entries: Sequence[Entry], outcomes: Sequence[Outcome], entered: Collection[str]
) -> list[Entry]:
    """The entries of a committed batch that timing must see: newly inserted (a
    duplicate's first delivery was timed already), with a GPS fix, of an entered device.
    The inline observer hands their positions to the worker; a ``TIMING=publish``
    pipeline publishes their payloads to the timing instance. With no device entered
    (no race loaded) nothing is: the batch is not walked (~0.2 µs per record)."""
    if not entered:
        return []
    return [
        e
        for e, o in zip(entries, outcomes, strict=True)
        if o is Outcome.INSERTED and e.position.fix_valid and e.position.device_id in entered
    ]


@attrs.define
class Commits:
    """How many chunks of fixes were committed. The observer counts a chunk right after
    its rows are committed (no await in between), so when the worker reads the count
    before a pass, every chunk numbered up to it is in the database for that pass to read.
    """

    count: int = 0
    # Devices of committed chunks the worker had no room for, or that came while a
    # backlog drained: recomputed from the database (reason ``backlog``). Bounded by the
    # devices the definition enters.
    backlog: set[str] = attrs.field(factory=set)
    # When the current run of full batches began to be deferred (None: not deferring).
    deferring_since: float | None = None
    # Set when a deferral ran its full length: nothing is deferred until the worker has
    # finished one round of work (``DomainPlugin._work``).
    worker_turn: bool = False

    @property
    def deferring(self) -> bool:
        """Timing waits for the writer right now."""
        return self._waiting_since() is not None

    def _waiting_since(self) -> float | None:
        return None if self.worker_turn else self.deferring_since

    def defer(self, batch: int, batch_max: int) -> bool:
        """Whether timing should wait with a chunk from a batch of this size."""
        if not batch_max or batch < batch_max:
            self.deferring_since = None
            return False
        if self.worker_turn:
            return False
        now = trio.current_time()
        if self.deferring_since is None:
            self.deferring_since = now
        elif now - self.deferring_since >= DEFER_UNDER_BACKLOG_S:
            self.give_turn()
            return False
        return True

    def give_turn(self) -> None:
        self.deferring_since = None
        self.worker_turn = True

    async def wait_for_turn(self) -> None:
        """Timing work waits while a backlog drains, at most ``DEFER_UNDER_BACKLOG_S``."""
        while (since := self._waiting_since()) is not None:
            remaining = since + DEFER_UNDER_BACKLOG_S - trio.current_time()
            if remaining <= 0:
                self.give_turn()
                return
            await trio.sleep(min(DEFER_POLL_S, remaining))
