"""Exactly one dead letter per entry, however many routers held it or retried.

The chaos test found the case: Redis is down longer than CLAIM_THRESHOLD_MS while an
instance holds a poison entry; a survivor claims it when Redis returns, and both route
it. The same happens when a reply is lost and the router retries a call that had run.
"""

from __future__ import annotations

import redis

from processor import config
from processor.core.dead_letters import DeadLetterRouter
from processor.core.health import Readiness
from processor.core.messages import DeadLetter
from processor.core.metrics import Metrics
from processor.core.redis_io import RedisStreams
from processor.core.retry import RedisRetry
from processor.logs import make_logger

GROUP = "processor"


def _router(settings: config.Settings, streams: RedisStreams, consumer: str) -> DeadLetterRouter:
    metrics = Metrics.create(settings.telemetry_stream)
    log = make_logger("warning")
    return DeadLetterRouter(
        streams=streams,
        stream=settings.telemetry_stream,
        group=GROUP,
        consumer=consumer,
        dlq=settings.dlq_stream_key,
        metrics=metrics,
        retry=RedisRetry(Readiness(), metrics, log),
        log=log,
    )


def _lettered(router: DeadLetterRouter) -> float:
    return sum(
        s.value
        for m in router.metrics.dead_lettered.collect()
        for s in m.samples
        if s.name.endswith("_total")
    )


async def test_an_entry_held_by_two_routers_gets_one_dead_letter(
    settings: config.Settings, sync_redis: redis.Redis, bridge: None
) -> None:
    stream, dlq = settings.telemetry_stream, settings.dlq_stream_key
    sync_redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    poison_id = sync_redis.xadd(stream, {"payload": b"{not json"}).decode()
    good_id = sync_redis.xadd(stream, {"payload": b"{also not json"}).decode()
    sync_redis.xreadgroup(GROUP, "first", {stream: ">"}, count=10)
    # A survivor claims the first entry while "first" still holds it in memory.
    sync_redis.xclaim(stream, GROUP, "second", 0, [poison_id])

    streams = await RedisStreams.connect(settings.redis_url)
    try:
        first, second = _router(settings, streams, "first"), _router(settings, streams, "second")
        letter = DeadLetter(poison_id, {b"payload": b"{not json"}, "malformed_payload", "bad")
        await second.route([letter])
        await first.route([letter, DeadLetter(good_id, {}, "malformed_payload", "bad")])
        # A retry of a call whose reply was lost: it already ran, so it adds nothing.
        await first.route([letter])
    finally:
        await streams.aclose()

    letters = sync_redis.xrange(dlq)
    assert sorted(f[b"source_id"].decode() for _, f in letters) == sorted([poison_id, good_id])
    [(_, fields)] = [entry for entry in letters if entry[1][b"source_id"] == poison_id.encode()]
    assert fields[b"consumer"] == b"second"
    assert fields[b"payload"] == b"{not json"
    assert sync_redis.xpending(stream, GROUP)["pending"] == 0
    # Metrics count letters written, not attempts.
    assert (_lettered(second), _lettered(first)) == (1, 1)


async def test_an_entry_already_acked_is_not_dead_lettered(
    settings: config.Settings, sync_redis: redis.Redis, bridge: None
) -> None:
    stream = settings.telemetry_stream
    sync_redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    entry_id = sync_redis.xadd(stream, {"payload": b"x"}).decode()
    sync_redis.xreadgroup(GROUP, "first", {stream: ">"}, count=10)
    sync_redis.xack(stream, GROUP, entry_id)

    streams = await RedisStreams.connect(settings.redis_url)
    try:
        lettered = await streams.dead_letter(
            stream, GROUP, settings.dlq_stream_key, [(entry_id, True, {b"payload": b"x"})]
        )
    finally:
        await streams.aclose()
    assert lettered == []
    assert sync_redis.xlen(settings.dlq_stream_key) == 0
