"""How code outside the core (race domain, live broadcast) plugs into the write path.

The core defines these protocols and calls them; ``processor.app`` decides which
implementations exist. The core never imports them, which keeps the pipeline testable
and deployable without the race logic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from processor.core.model import Entry, Outcome, Position


class Enricher(Protocol):
    """Computes the named attributes stored in ``positions.derived`` for a fix.

    Called by the writer for every record of a batch before it is written, so it must
    be cheap (microseconds) and must not do I/O; it returns None when nothing applies.
    """

    def derive(self, position: Position) -> Mapping[str, Any] | None: ...


class CommitObserver(Protocol):
    async def committed(self, entries: Sequence[Entry], outcomes: Sequence[Outcome]) -> None:
        """Called once per committed batch, before its acks are sent.

        Must be quick or hand the work to a task of its own through a bounded channel:
        the writer waits for it, which is deliberate backpressure, not a place for I/O.
        """
