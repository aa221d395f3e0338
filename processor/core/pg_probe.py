"""Probes PostgreSQL while the writer is idle, so readiness is true when no data flows.

Only the writer's statements told readiness about PostgreSQL: with no traffic, PostgreSQL
could be down for hours while ``/readyz`` said 200, and a load balancer or an operator
would learn of it from the first batch that stalled. The probe runs ``SELECT 1`` on a
connection of its own (never queued behind a batch) every interval and reports under its
own readiness key, so it neither clears nor hides a failure the writer reported.
"""

from __future__ import annotations

from typing import Any

import attrs
import psycopg
import structlog
import trio

from processor.core.health import Readiness
from processor.core.metrics import Metrics
from processor.core.pg_session import PgSession, PostgresUnavailable

COMPONENT = "postgres_probe"
# A probe is one trivial statement: a server that takes this long is not serving.
PROBE_TIMEOUT_S = 5.0


@attrs.define(kw_only=True)
class PostgresProbe:
    url: str
    interval_s: float
    health: Readiness
    metrics: Metrics
    log: structlog.typing.FilteringBoundLogger
    _session: PgSession = attrs.field(init=False)
    _failing: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        self._session = PgSession(self.url, "processor-probe", PROBE_TIMEOUT_S)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                await self.probe()
                await trio.sleep(self.interval_s)
        finally:
            await self._session.aclose()

    async def probe(self) -> bool:
        """One ``SELECT 1``; True when PostgreSQL answered."""
        try:
            await self._session.run(_select_one)
        except PostgresUnavailable as exc:
            if not self._failing:
                self.log.warning("postgres probe failed", error=str(exc))
            self._failing = True
            self.health.fail(COMPONENT, f"postgres does not answer: {exc}")
            return False
        if self._failing:
            self.log.info("postgres probe answered again")
            self.metrics.reconnects.labels("postgres").inc()
        self._failing = False
        self.health.ok(COMPONENT)
        return True


async def _select_one(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.execute("SELECT 1")
