"""One PostgreSQL connection that reconnects, with errors sorted into what callers act on.

Every PostgreSQL adapter (the writer's ``PositionStore``, the race domain's store, the
broadcast's roster store) needs the same thing: connect lazily through the bridge, give
each statement a deadline, and turn psycopg's exceptions into two kinds:
``PostgresUnavailable`` (the connection or server is the problem: the connection is
discarded, the caller backs off and retries) and ``RowsRejected`` (the data is the
problem: retrying it as is cannot help). Anything else (a missing table, a bug) is left
to the caller, and unknown errors propagate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
import psycopg
import psycopg.errors
import trio

from processor.core import bridge

CONNECT_TIMEOUT_S = 5
T = TypeVar("T")

_TRANSIENT: tuple[type[Exception], ...] = (
    trio.TooSlowError,  # the statement's deadline: the server is stalled
    psycopg.OperationalError,  # connection lost, admin shutdown, cannot connect now
    psycopg.InterfaceError,  # the connection object is closed or broken
)
# Another transaction was in the way; this one was rolled back and the connection is fine.
_CONTENDED: tuple[type[Exception], ...] = (
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
)
_DATA: tuple[type[Exception], ...] = (psycopg.DataError, psycopg.IntegrityError)


class PostgresUnavailable(Exception):
    """PostgreSQL could not take the statement now. Transient: reconnect and retry."""


class Contended(PostgresUnavailable):
    """The statement lost to a concurrent transaction (serialization failure, deadlock):
    retry at once, the server and the connection are fine. A ``PostgresUnavailable``,
    so callers that only know that one back off and retry as before."""


class RowsRejected(Exception):
    """PostgreSQL refused the data itself (a constraint or type error). Not retried as is."""


class FastCancelConnection(psycopg.AsyncConnection[Any]):
    """psycopg's async connection without its slow path for a cancelled statement.

    On asyncio cancellation psycopg asks the server to cancel the statement (waiting up
    to 5 s) and then waits up to 5 s more for it to end; trio-asyncio waits for all of
    that, so a cancel (shutdown budget, statement deadline) against a stalled server took
    ~10 s. A connection cancelled mid-statement is discarded anyway, so close it at once:
    the server ends the statement (and rolls back) when it sees the socket go.
    ``_try_cancel`` is psycopg-internal: the version is pinned by the lock, and
    tests/fault/test_shutdown.py fails if that changes.
    """

    async def _try_cancel(self, *, timeout: float = 5.0) -> None:  # noqa: ASYNC109 (overridden signature)
        self.pgconn.finish()


def describe(exc: BaseException) -> str:
    """First line of a database error, for logs and readiness reasons."""
    if isinstance(exc, trio.TooSlowError):
        return "no answer before the statement's deadline"
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@attrs.define
class PgSession:
    url: str
    application_name: str = "processor"
    statement_timeout_s: float = 30.0
    # Counts connections made; per-connection state (a temp table) is keyed on it.
    generation: int = 0
    _conn: psycopg.AsyncConnection[Any] | None = None

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    async def connect(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            with trio.fail_after(CONNECT_TIMEOUT_S + 1):
                conn: psycopg.AsyncConnection[Any] = await bridge.call(
                    FastCancelConnection.connect,
                    self.url,
                    autocommit=True,
                    connect_timeout=CONNECT_TIMEOUT_S,
                    options="-c timezone=UTC",
                    application_name=self.application_name,
                )
        except _TRANSIENT as exc:
            raise PostgresUnavailable(describe(exc)) from exc
        self._conn = conn
        self.generation += 1
        return conn

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await fn(connection, *args)`` on the asyncio side, errors sorted (see above)."""
        conn = await self.connect()
        try:
            with trio.fail_after(self.statement_timeout_s):
                return await bridge.call(fn, conn, *args)
        except _CONTENDED as exc:
            raise Contended(describe(exc)) from exc
        except _TRANSIENT as exc:
            await self.aclose()
            raise PostgresUnavailable(describe(exc)) from exc
        except _DATA as exc:
            raise RowsRejected(describe(exc)) from exc
        except trio.Cancelled:
            await self.aclose()  # cancelled mid-statement: its state is unknown
            raise

    async def aclose(self) -> None:
        """Close (idempotent, bounded, never raises): also how a broken one is discarded."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with trio.move_on_after(2) as scope:
                scope.shield = True
                with contextlib.suppress(psycopg.Error):
                    await bridge.call(conn.close)
