"""The one place where Trio code calls asyncio libraries (redis.asyncio, psycopg async).

redis.asyncio and psycopg's async connections speak asyncio; the daemon is Trio.
trio-asyncio runs an asyncio loop inside the Trio run, and a Trio cancel scope cancels the
asyncio task it is waiting on, so a ``XREADGROUP ... BLOCK`` ends the moment shutdown
starts. Every adapter goes through :func:`call`; swapping the bridge (say, for
thread-offloaded sync clients) means rewriting this module only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import ParamSpec, TypeVar

import trio_asyncio

P = ParamSpec("P")
T = TypeVar("T")


@asynccontextmanager
async def open_bridge() -> AsyncIterator[None]:
    """Run an asyncio loop for the lifetime of the block (the whole daemon, or a test)."""
    async with trio_asyncio.open_loop():
        yield


async def call(fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Await an asyncio coroutine function from Trio; Trio cancellation cancels it."""
    result: T = await trio_asyncio.aio_as_trio(fn)(*args, **kwargs)
    return result
