"""Running one operator command: connections, output, and the exit-code rules.

Exit codes (see ``exit_codes``): 0 done; 1 the command could not do what was asked (a
named entry is missing, Redis refused it); 2 the arguments are wrong (nothing was
changed); 69 Redis or PostgreSQL cannot be reached. Every failure is one line on
stderr, so a runbook can quote it and a script can branch on the code.

Connections open lazily, on a command's first use: a command that rejects its arguments
never touches the network.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import attrs
import psycopg
import redis.exceptions as rexc
import trio

from processor import exit_codes
from processor.config import Settings
from processor.core.bridge import open_bridge
from processor.core.pg_io import PositionStore, PostgresUnavailable, RowsRejected
from processor.core.redis_io import RedisStreams, RedisUnavailable
from processor.operator.output import dump_json

# The type of ``add_subparsers()``: generic only for type checkers.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

ENV_HELP = (
    "environment: REDIS_URL, REDIS_TELEMETRY_STREAM, REDIS_CONSUMER_GROUP, DLQ_STREAM,\n"
    "CLAIM_THRESHOLD_MS and (rehydrate) POSTGRES_URL, as for `processor run`."
)


class UsageError(Exception):
    """The arguments cannot be acted on (exit 2); ``str()`` is the one-line reason."""


class Failed(Exception):
    """The command was understood but could not be done (exit 1), e.g. no such entry."""


@attrs.frozen
class Report:
    """What a command found or did: ``data`` for ``--json``, ``text`` for people."""

    data: dict[str, Any]
    text: str
    code: int = exit_codes.OK


@attrs.define
class Context:
    settings: Settings
    _streams: RedisStreams | None = None
    _store: PositionStore | None = None

    async def redis(self) -> RedisStreams:
        if self._streams is None:
            self._streams = await RedisStreams.connect(
                self.settings.redis_url, cluster=self.settings.cluster
            )
        return self._streams

    async def postgres(self) -> PositionStore:
        if self._store is None:
            self._store = PositionStore(self.settings.postgres_url)
            await self._store.connect()
        return self._store

    async def aclose(self) -> None:
        if self._streams is not None:
            await self._streams.aclose()
        if self._store is not None:
            await self._store.aclose()


Handler = Callable[[Context, argparse.Namespace], Awaitable[Report]]


def execute(settings: Settings, args: argparse.Namespace) -> int:
    """Run the handler chosen by the parser; print its report or one error line."""
    handler: Handler = args.handler
    try:
        outcome = trio.run(_run, settings, handler, args)
    except KeyboardInterrupt:
        return exit_codes.INTERRUPTED
    if isinstance(outcome, Report):
        if args.json:
            sys.stdout.buffer.write(dump_json(outcome.data))
            sys.stdout.flush()
        else:
            print(outcome.text)
        return outcome.code
    code, line = outcome
    print(f"{args.prog}: {line}", file=sys.stderr)
    return code


async def _run(
    settings: Settings, handler: Handler, args: argparse.Namespace
) -> Report | tuple[int, str]:
    # Errors are turned into (code, line) inside the bridge so they never reach trio.run
    # wrapped in an exception group.
    ctx = Context(settings)
    async with open_bridge():
        try:
            return await handler(ctx, args)
        except UsageError as exc:
            return exit_codes.CONFIG_ERROR, f"error: {exc}"
        except Failed as exc:
            return exit_codes.FAILED, str(exc)
        except RedisUnavailable as exc:
            where = redact(settings.redis_url)
            return exit_codes.UNAVAILABLE, f"redis unavailable at {where}: {_line(exc)}"
        except PostgresUnavailable as exc:
            where = redact(settings.postgres_url)
            return exit_codes.UNAVAILABLE, f"postgres unavailable at {where}: {_line(exc)}"
        except rexc.RedisError as exc:
            return exit_codes.FAILED, f"redis refused the command: {_line(exc)}"
        except (psycopg.Error, RowsRejected) as exc:
            return exit_codes.FAILED, f"postgres refused the query: {_line(exc)}"
        finally:
            await ctx.aclose()


def redact(url: str) -> str:
    """The URL without its password, for error lines that end up in tickets."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


def _line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
