"""TIMING=publish pipelines and a TIMING=consume timing instance: the same results as inline.

Two real apps on one database and stream: a pipeline that times nothing and appends its
committed fixes to ``<stream>:committed``, and an instance with neither pipeline nor
broadcast that times them. Fixes committed before the timing instance started are timed
by its start-up sweep, later ones through the feed, a late one by a recomputation.
"""

from __future__ import annotations

from typing import Any

import attrs
import redis
import trio

from processor import config
from processor.app import App
from processor.domain.committed_feed import CommittedPublisher, committed_stream
from processor.domain.plugin import DomainPlugin, TimingObserver
from processor.logs import make_logger
from tests.domain.course import at, fix
from tests.domain.test_app import LONS, _publish, _records, _stored, rows
from tests.helpers import wait_for


async def start(nursery: trio.Nursery, settings: config.Settings) -> tuple[App, trio.Event]:
    """An app with the plug-ins its settings call for (``default_factories``)."""
    app = App.create(settings, make_logger("warning"))
    done = trio.Event()

    async def run() -> None:
        await app.run()
        done.set()

    nursery.start_soon(run)
    await wait_for(app.ready.is_set, 30, what=f"{settings.consumer_name} ready")
    return app, done


async def test_a_timing_instance_times_what_publishing_pipelines_commit(
    settings: config.Settings, sync_redis: redis.Redis, nursery: trio.Nursery, race: dict[str, Any]
) -> None:
    url, imei = settings.postgres_url, race["imei"]
    fixes = [fix(i * 10, lon, speed=40.0 + i) for i, lon in enumerate(LONS)]
    pipeline, pipeline_done = await start(
        nursery, attrs.evolve(settings, timing="publish", ws_enabled=False)
    )
    observers = [type(o) for p in pipeline.plugins for o in p.observers]
    assert CommittedPublisher in observers
    assert TimingObserver not in observers
    assert not any(isinstance(p, DomainPlugin) and p.timing for p in pipeline.plugins)

    # Before any timing instance runs: stored, published, timed by nobody yet.
    _publish(sync_redis, settings.telemetry_stream, imei, fixes[:3])
    await wait_for(lambda: _stored(url, imei) == 3, what="first fixes stored")
    feed = committed_stream(settings.telemetry_stream)
    await wait_for(lambda: sync_redis.xlen(feed) > 0, what="committed feed written")

    timing, timing_done = await start(
        nursery,
        attrs.evolve(
            settings,
            timing="consume",
            pipeline_enabled=False,
            ws_enabled=False,
            consumer_name=f"{settings.consumer_name}-timing",
        ),
    )
    assert timing.plugins[0].observers == []  # it commits nothing to observe
    await wait_for(lambda: "start-0" in _records(url, race), what="swept start record")

    # Through the feed, with the fix at 70 s held back and sent after the finish; an entry
    # that is not the feed's framing is skipped (logged), the tail goes on.
    sync_redis.xadd(feed, {"payloads": b"\x00\x00\x00\x09{}"})
    _publish(sync_redis, settings.telemetry_stream, imei, fixes[3:7] + fixes[8:])
    await wait_for(lambda: "finish-9" in _records(url, race), what="finish record")
    _publish(sync_redis, settings.telemetry_stream, imei, [fixes[7]])
    # The fix at 70 s is the fastest inside the zone (60-80 s): 47 km/h, not 46.
    await wait_for(
        lambda: (
            rows(
                url,
                "SELECT entered_at, exited_at, max_speed_kmh FROM zone_events WHERE entry_id = %s",
                race["entry"],
            )
            == [(at(60), at(80), 47.0)]
        ),
        what="late fix recomputed",
    )
    # The entry that was not the feed's framing:
    assert timing.metrics.registry.get_sample_value("processor_domain_feed_skipped_total") == 1
    sample = pipeline.metrics.registry.get_sample_value
    assert sample("processor_feed_pending", {"feed": "committed"}) == 0
    assert _records(url, race) == {
        "start-0": at(5), "checkpoint-1": at(25), "checkpoint-2": at(46.667), "finish-9": at(95),
    }  # fmt: skip
    [(elapsed, passed, status)] = rows(
        url,
        "SELECT elapsed_ms, checkpoints_passed, status FROM stage_results WHERE entry_id = %s",
        race["entry"],
    )
    assert (elapsed, passed, status) == (90_000, 2, "finished")
    for app, done in ((pipeline, pipeline_done), (timing, timing_done)):
        app.shutdown.begin("test")
        await wait_for(done.is_set, 15, what="exit")
