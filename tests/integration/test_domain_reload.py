"""``processor domain reload`` reaches a running instance and reloads its race definition."""

from __future__ import annotations

import trio

from processor import config
from tests.helpers import start_app, wait_for
from tests.integration.test_operator_cli import cli


async def test_reload_request_reloads_the_definition_now(
    settings: config.Settings, nursery: trio.Nursery
) -> None:
    running = await start_app(nursery, settings)
    app = running.app

    def loads() -> float:
        return sum(
            app.metrics.registry.get_sample_value(
                "processor_domain_definition_loads_total", {"outcome": o}
            )
            or 0.0
            for o in ("missing", "failed", "unchanged", "changed")
        )

    before = loads()
    assert before >= 1  # the load at start (DOMAIN_REFRESH_S is 30 s: no timed reload yet)
    result = await trio.to_thread.run_sync(cli, settings, "domain", "reload", "--json")
    assert result.json()["receivers"] == 1
    await wait_for(lambda: loads() == before + 1, 10, what="a reload")
    await running.stop()
