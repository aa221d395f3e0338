"""A write path that costs PostgreSQL nothing, for ``bench.scaling --null-sink`` only.

Issue 6 asks for two instances on one group to reach 1.6x one "where the database is not
the bottleneck (e.g. with a write path that is cheap)". On the 2-core machines here the
real write path is not slow but it takes a core's worth of CPU with Redis, which leaves
a second instance no core to run on (bench/README.md, scaling). This sink is the
cheapest write path there is: each batch's rows are formatted exactly as for the COPY,
then dropped, and the batch is reported inserted. Everything before and after the write
runs as in production: group reads, decoding, IO mapping, hot state, the commit-order
hand-off and the XACKs.

It is installed by a prelude in the processor's interpreter (``Sandbox.prelude``), so
no setting of the processor can ever turn it on. Nothing is stored, so the bench times
such a drain by the group's acks (``Sandbox.null_sink``).
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from datetime import datetime

import trio

from processor.core import pg_io
from processor.core.model import Position

PRELUDE = "import bench.null_sink as sink\nsink.install()"


async def _insert(
    self: pg_io.PositionStore,
    positions: Sequence[Position],
    derived: Sequence[bytes | None] | None = None,
) -> Set[tuple[str, datetime]]:
    rows = pg_io.copy_rows(positions, derived)
    await trio.lowlevel.checkpoint()  # a real write yields here too
    self.on_path("direct")
    return pg_io.AllRows(rows)


def install() -> None:
    """Replace ``PositionStore.insert`` in this interpreter (before the processor starts)."""
    pg_io.PositionStore.insert = _insert  # type: ignore[method-assign]
