"""Fixtures of the race-domain tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from processor import config
from tests.domain.test_app import insert_race


@pytest.fixture
def race(settings: config.Settings) -> Iterator[dict[str, Any]]:
    race = insert_race(settings.postgres_url)
    yield race
    with psycopg.connect(settings.postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE events SET status = 'finished' WHERE id = %s", (race["event"],))
