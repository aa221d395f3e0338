"""How code outside the core (race domain, live broadcast) plugs into the write path.

The core defines these protocols and calls them; ``processor.app`` decides which
implementations exist. The core never imports them, which keeps the pipeline testable
and deployable without the race logic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from processor.core.codec import stored_json
from processor.core.model import Entry, Outcome, Position


class Enricher(Protocol):
    """Computes the named attributes stored in ``positions.derived`` for a fix.

    Called by the writer for every record of a batch before it is written, so it must
    be cheap (microseconds) and must not do I/O; it returns None when nothing applies.
    """

    def derive(self, position: Position) -> Mapping[str, Any] | None: ...

    def derive_json(self, positions: Sequence[Position]) -> list[bytes | None]:
        """What the writer stores: per position ``stored_json(derive(position))``, or None.

        One call per batch, so an enricher resolves what the batch shares (a definition,
        a device's model) once, not per record; ``derive_json_each`` is the plain form.
        """
        ...


def derive_json_each(
    derive: Callable[[Position], Mapping[str, Any] | None], positions: Sequence[Position]
) -> list[bytes | None]:
    """``Enricher.derive_json`` from ``derive``, one call per position."""
    return [None if (named := derive(p)) is None else stored_json(named) for p in positions]


class CommitObserver(Protocol):
    async def committed(self, entries: Sequence[Entry], outcomes: Sequence[Outcome]) -> None:
        """Called once per committed batch, before its acks are sent.

        Must be quick or hand the work to a task of its own through a bounded channel:
        the writer waits for it, which is deliberate backpressure, not a place for I/O.
        """
