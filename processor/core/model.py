"""Typed values that travel between pipeline stages.

``Position`` is what a contract record means once decoded; ``Entry`` ties it to the stream
entry it came from, because the ack rule is about entries, not positions.

These are frozen msgspec ``Struct``s, not attrs classes like the rest of the code's
values: one of each is made per record, and a frozen attrs class sets every field
through ``object.__setattr__`` (~1 µs per record for ``Position``'s 14); a Struct is
built in C, and ``gc=False`` keeps the hundred thousand positions that hot state holds
out of the cyclic garbage collector's passes (they hold no references back to anything
that could make a cycle). Copy a position with a change through ``evolve``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgspec

AttributeValue = int | float | bytes


class Position(msgspec.Struct, frozen=True, gc=False):
    # Not kw_only: the decoder builds one per record positionally (matching 14 keyword
    # names costs msgspec ~500 instructions); everywhere else, name the fields.
    device_id: str
    ts: datetime
    latitude: float
    longitude: float
    altitude: float
    heading: float
    speed: float
    satellites: int
    priority: int
    event_io_id: int
    fix_valid: bool
    attributes: dict[str, AttributeValue]
    received_at: datetime | None = None
    codec: str | None = None

    @property
    def key(self) -> tuple[str, datetime]:
        """The row's identity in ``positions``: what makes a re-delivery a duplicate."""
        return (self.device_id, self.ts)


def evolve(position: Position, **changes: Any) -> Position:
    """A copy of ``position`` with ``changes`` (``attrs.evolve`` for the Struct)."""
    return msgspec.structs.replace(position, **changes)


class Entry(msgspec.Struct, frozen=True, gc=False):
    """A decoded stream entry: the id to ack, the position, and the original fields.

    The fields ride along (a reference, not a copy) so a record PostgreSQL rejects can be
    dead-lettered byte for byte as ingestion sent it. ``stream`` is the shard the entry
    was read from, because it is acked (and dead-lettered) there; empty means the
    pipeline's only (first) stream.
    """

    entry_id: str
    position: Position
    fields: Mapping[bytes, bytes] = msgspec.field(default_factory=dict)
    stream: str = ""


class RawEntry(msgspec.Struct, frozen=True, gc=False):
    """A stream entry as Redis returned it, before decoding (kept for dead-lettering)."""

    entry_id: str
    fields: dict[bytes, bytes]


class Outcome(enum.Enum):
    """What became of one record's row. Inserted and duplicate are both committed."""

    INSERTED = "inserted"
    DUPLICATE = "duplicate"
    FAILED = "failed"

    @property
    def committed(self) -> bool:
        return self is not Outcome.FAILED


def entry_id_millis(entry_id: str) -> int:
    """Stream entry ids start with the Redis server's ms clock at XADD time."""
    return int(entry_id.split("-", 1)[0])
