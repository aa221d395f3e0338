"""What flows through the pipeline's channels besides decoded entries."""

from __future__ import annotations

from collections.abc import Mapping

import attrs


@attrs.frozen(slots=True)
class DeadLetter:
    """An entry the pipeline gives up on, with the reason, on its way to the DLQ stream.

    ``fields`` are the entry's original fields, kept byte for byte so a replay after a fix
    re-publishes exactly what ingestion sent. ``stream`` is the shard it was read from
    (empty: the pipeline's first stream): it is acked there and goes to that shard's DLQ.
    ``still_pending`` is False only for an id XAUTOCLAIM reported deleted: Redis already
    dropped it from the pending list, handing it to this one caller, so the router must
    letter it without asking whether it is still pending.
    """

    entry_id: str
    fields: Mapping[bytes, bytes]
    error_kind: str
    error: str
    delivery_count: int | None = None
    stream: str = ""
    still_pending: bool = True
