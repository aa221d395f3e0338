"""Fixtures of the broadcast tests: a Directus stand-in and race rows in the test database."""

from __future__ import annotations

import pytest
import trio

from processor import config
from tests.broadcast.directus_stub import DirectusStub
from tests.broadcast.live import Race, make_race


@pytest.fixture
async def directus(nursery: trio.Nursery) -> DirectusStub:
    stub = DirectusStub()
    await nursery.start(stub.run)
    return stub


@pytest.fixture
def race(settings: config.Settings, directus: DirectusStub) -> Race:
    """An event with three trackers; user ``u1`` (token ``good``) may read it."""
    made = make_race(settings.postgres_url)
    directus.grant("good", "u1", made.event_id)
    return made
