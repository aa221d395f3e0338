"""Following stream keys from their newest entry at start, through Redis outages.

Both broadcast tails (positions, timing crossings) and the race domain's feed of
committed fixes read this way: plain ``XREAD BLOCK`` with no group (nothing is created in
Redis, nothing left behind on shutdown), from the newest entry as of start-up (an
explicit id, not ``$`` on every call, which would skip what arrives between two reads).
Redis being unavailable is retried with backoff from the last id read, so a short
outage loses nothing Redis still holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
import structlog
import trio

from processor.core.backoff import Backoff
from processor.core.read_pacing import ReadPacer
from processor.core.redis_io import RedisStreams, RedisUnavailable

Entries = list[tuple[str, str, dict[bytes, bytes]]]  # (key, entry id, fields)


@attrs.define
class Follower:
    streams: RedisStreams
    keys: Sequence[str]
    count: int
    block_ms: int
    log: structlog.typing.FilteringBoundLogger
    what: str  # names the reader in its warnings
    pacer: ReadPacer = attrs.field(factory=lambda: ReadPacer(0.0))
    _last_ids: dict[str, str] = attrs.field(factory=dict, init=False)
    _backoff: Backoff = attrs.field(factory=lambda: Backoff(cap_s=2.0), init=False)

    async def start(self) -> None:
        """Take every key's newest id (waiting for Redis if need be)."""
        while True:
            try:
                for key in self.keys:
                    self._last_ids[key] = await self.streams.newest_id(key) or "0-0"
            except RedisUnavailable as exc:
                await self._unavailable(exc)
            else:
                return

    async def read(self) -> Entries:
        """What arrived after the last read, key after key; empty after a quiet block."""
        while True:
            await self.pacer.wait()
            try:
                entries = await self.streams.read_after(self._last_ids, self.count, self.block_ms)
            except RedisUnavailable as exc:
                await self._unavailable(exc)
                continue
            self._backoff.reset()
            # One XREAD over several keys may return up to count entries of each.
            self.pacer.read(len(entries), self.count * len(self.keys))
            for key, entry_id, _ in entries:
                self._last_ids[key] = entry_id
            return entries

    async def skip(self, wait_s: float, still_idle: Callable[[], bool]) -> None:
        """Wait ``wait_s``, then move past what arrived meanwhile without reading it (one
        XREVRANGE per key instead of every entry), for a reader that has nothing to do
        with entries for now (the broadcast tail while no event enters a device).

        The newest ids are fetched first and applied only if ``still_idle()`` holds
        after that: what arrived once the reader had work again is read, not skipped.
        """
        await trio.sleep(wait_s)
        newest: dict[str, str] = {}
        try:
            for key in self.keys:
                last = await self.streams.newest_id(key)
                if last is not None:
                    newest[key] = last
        except RedisUnavailable as exc:
            await self._unavailable(exc)
            return
        self._backoff.reset()
        if still_idle():
            self._last_ids.update(newest)

    async def _unavailable(self, exc: RedisUnavailable) -> None:
        self.log.warning(f"{self.what}: redis unavailable", error=str(exc))
        await self._backoff.wait()
