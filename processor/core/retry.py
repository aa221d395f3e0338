"""Retry-until-Redis-answers, shared by every component that talks to Redis.

A Redis outage must not crash the tree (the process would only restart into the same
outage) nor lose work: each call is retried with backoff, readiness says why the
instance is out of rotation, and the first success puts it back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import attrs
import structlog

from processor.core.backoff import Backoff
from processor.core.health import Readiness
from processor.core.metrics import Metrics
from processor.core.redis_io import RedisUnavailable

P = ParamSpec("P")
T = TypeVar("T")


@attrs.frozen
class RedisRetry:
    health: Readiness
    metrics: Metrics
    log: structlog.typing.FilteringBoundLogger

    async def __call__(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        backoff = Backoff()
        while True:
            try:
                result = await fn(*args, **kwargs)
            except RedisUnavailable as exc:
                if not backoff.attempt:
                    self.log.warning("redis unavailable", error=str(exc))
                self.health.fail("redis", str(exc))
                await backoff.wait()
                continue
            if backoff.attempt:
                self.metrics.reconnects.labels("redis").inc()
                self.log.info("redis reconnected")
            self.health.ok("redis")
            return result
