"""The panic dump keeps what an investigation needs and leaves out the secrets.

Dumps are copied into tickets and chat; a database or Redis password in one is a leak.
(That a real crash writes the dump and exits 70 is tests/fault/test_crash.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import trio

from processor import config
from processor.app import App
from processor.core.health import Readiness
from processor.core.hot_state import DeviceStates
from processor.panic import waiting_dumps, write_panic_dump
from tests.helpers import BASE_TIME, make_position, start_app


def test_dump_has_settings_and_state_but_no_passwords(
    settings: config.Settings, tmp_path: Path
) -> None:
    secret = "s3cr3t-Pa55"
    leaky = attrs.evolve(
        settings,
        postgres_url=f"postgresql://processor:{secret}@db.internal:5432/processor",
        redis_url=f"redis://:{secret}@cache.internal:6379/0",
        directus_url=f"https://directus.internal/?password={secret}&x=1",
    )
    states = DeviceStates(10)
    states.observe(make_position("dumped-1", second=4), BASE_TIME)
    health = Readiness()
    health.fail("postgres", "connection refused")
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        path = write_panic_dump(str(tmp_path / "dumps"), exc, leaky, states, health)

    text = path.read_text()
    assert secret not in text
    dump = json.loads(text)
    assert dump["settings"]["postgres_url"] == (
        "postgresql://processor:***@db.internal:5432/processor"
    )
    assert dump["settings"]["redis_url"] == "redis://:***@cache.internal:6379/0"
    assert dump["settings"]["directus_url"] == "https://directus.internal/?password=***&x=1"
    assert dump["settings"]["telemetry_stream"] == settings.telemetry_stream
    assert dump["error"] == "RuntimeError('boom')"
    assert any("boom" in line for line in dump["traceback"])
    assert dump["readiness_problems"] == {"postgres": "connection refused"}
    assert dump["devices"]["dumped-1"]["position_count_session"] == 1


async def test_a_restarted_instance_reports_the_dump_it_finds(
    settings: config.Settings, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """The panic counter dies with the process; the dump it left is what a scrape sees."""
    dumps = tmp_path / "dumps"
    s = attrs.evolve(settings, panic_dump_dir=str(dumps))
    path = write_panic_dump(
        s.panic_dump_dir, RuntimeError("boom"), s, DeviceStates(10), Readiness()
    )
    (dumps / "unrelated.json").write_text("{}")
    running = await start_app(nursery, s)
    try:
        assert _gauge(running.app, "processor_panic_dumps") == 1
    finally:
        await running.stop()
    path.unlink()
    assert waiting_dumps(dumps) == 0


def _gauge(app: App, name: str) -> float:
    value = app.metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value
