"""Capped exponential backoff with "equal jitter".

Reconnect loops of several instances must not hammer a recovering Redis or PostgreSQL in
lock-step, so each wait is random in [c/2, c] with c = min(cap, base * 2**attempt): spread
out, yet never near zero, so a long outage is not probed in a burst. The first retry is
quick because most outages (a failover, a restart) are short.
"""

from __future__ import annotations

import random

import attrs
import trio


@attrs.define
class Backoff:
    base_s: float = 0.05
    cap_s: float = 5.0
    attempt: int = 0
    # Seeded on the first wait only: a Backoff is made for every Redis call that might
    # retry, and seeding from the OS each time cost a getrandom(2) per call.
    _random: random.Random | None = attrs.field(default=None, repr=False)

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.base_s * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 30)
        if self._random is None:
            self._random = random.Random()
        return self._random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0

    async def wait(self) -> None:
        await trio.sleep(self.next_delay())
