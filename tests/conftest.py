"""Fixtures shared by every test: real Redis and PostgreSQL, isolated per run.

Each test session gets a database of its own (created here, dropped at the end) and each
test its own stream keys, so runs never see each other's data, even side by side.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
import redis

from processor import config
from processor.core.bridge import open_bridge

ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _db_url(name: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh, empty database for this test session (dropped afterwards)."""
    name = f"processor_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _db_url(name)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def fresh_database_url() -> Iterator[str]:
    """A database of the test's own, for tests that need an empty schema."""
    name = f"processor_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _db_url(name)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture
def stream_key() -> Iterator[str]:
    """A stream key no other test uses; it and the keys named after it (DLQ, timing and
    committed feeds) are deleted afterwards."""
    key = f"test:{uuid.uuid4().hex[:12]}:telemetry"
    yield key
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.delete(key, f"{key}:dlq", f"{key}:timing", f"{key}:committed")
    finally:
        client.close()


@pytest.fixture
def sync_redis() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def settings(database_url: str, stream_key: str) -> config.Settings:
    """Settings pointing at this run's database and this test's stream."""
    return config.load(
        {
            "REDIS_URL": REDIS_URL,
            "POSTGRES_URL": database_url,
            "REDIS_TELEMETRY_STREAM": stream_key,
            "REDIS_CONSUMER_GROUP": "processor",
            "REDIS_CONSUMER_NAME": f"test-{uuid.uuid4().hex[:6]}",
            "HTTP_PORT": "0",
            "HTTP_HOST": "127.0.0.1",
            "WS_PORT": "0",
            "WS_HOST": "127.0.0.1",
            "BATCH_LINGER_MS": "20",
            "READ_BLOCK_MS": "200",
            "LAG_SAMPLE_INTERVAL_S": "0.2",
            "PANIC_DUMP_DIR": os.environ.get("TMPDIR", "/tmp"),
        }
    )


@pytest.fixture
async def bridge() -> AsyncIterator[None]:
    """The trio-asyncio loop that the Redis and PostgreSQL adapters need."""
    async with open_bridge():
        yield
