"""Fixtures shared by every test: real Redis and PostgreSQL, isolated per run.

Each test session gets a database of its own (created here, dropped at the end) and each
test its own stream keys, so runs never see each other's data, even side by side.
"""

from __future__ import annotations

import inspect
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
import redis
import trio

from processor import config
from processor.core.bridge import open_bridge

ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


# A trio test still running after this many seconds is cancelled and fails, so a test
# that never wakes (an outbox no one fills, a lost event) costs minutes, not CI's whole
# budget. The slowest test takes about a minute on CI; raise this on a slower machine.
HANG_LIMIT_S = float(os.environ.get("TEST_HANG_LIMIT_S", "180"))


class TestHung(AssertionError):
    """A trio test outlived HANG_LIMIT_S and was cancelled."""


def _run_with_hang_limit(async_fn: Callable[[], Awaitable[Any]], **run_kwargs: Any) -> Any:
    """``trio.run`` for pytest-trio, with the test cancelled at HANG_LIMIT_S.

    A test on a mock clock keeps plain ``trio.run``: its deadlines are virtual time.
    """
    if run_kwargs.get("clock") is not None:
        return trio.run(async_fn, **run_kwargs)

    hung = TestHung(
        f"still running after {HANG_LIMIT_S:g} s, so it was cancelled"
        " (TEST_HANG_LIMIT_S raises the limit on a slow machine)"
    )

    async def guarded() -> Any:
        with trio.move_on_after(HANG_LIMIT_S) as limit:
            try:
                return await async_fn()
            except BaseException as exc:
                # What the cancel made of the test (pytest-trio reports a cancelled
                # fixture as its own error) is the consequence; the hang is the news.
                if limit.cancel_called:
                    raise hung from exc
                raise
        raise hung

    return trio.run(guarded, **run_kwargs)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run every async test under the hang limit (before pytest-trio marks it).

    Hypothesis tests are left out: pytest-trio runs each example with plain
    ``trio.run`` whatever the marker says, and hypothesis has its own deadlines.
    """
    for item in items:
        test = getattr(item, "obj", None)
        if inspect.iscoroutinefunction(test) and item.get_closest_marker("trio") is None:
            item.add_marker(pytest.mark.trio(run=_run_with_hang_limit))


def _db_url(name: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


@contextmanager
def _fresh_database() -> Iterator[str]:
    """A new, empty database, dropped on the way out."""
    name = f"processor_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _db_url(name)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh, empty database for this test session (dropped afterwards)."""
    with _fresh_database() as url:
        yield url


@pytest.fixture
def fresh_database_url() -> Iterator[str]:
    """A database of the test's own, for tests that need an empty schema."""
    with _fresh_database() as url:
        yield url


@pytest.fixture
def second_fresh_database_url() -> Iterator[str]:
    """Another one, for tests that compare two ways of reaching the same rows."""
    with _fresh_database() as url:
        yield url


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
