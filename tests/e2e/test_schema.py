"""The SQL fixture and the Directus snapshot describe the same race tables.

``schema/directus/race_tables.sql`` lets the processor be developed and tested without
Directus; ``schema/directus/snapshot.yaml`` is what Directus applies in production. They
must not drift: same tables, same columns, compatible types, same nullability.
"""

from __future__ import annotations

import psycopg
import pytest
import trio

from processor.core.bridge import open_bridge
from processor.domain.store import DomainStore
from tests.e2e.directus import DirectusServer
from tests.e2e.schema_columns import (
    RACE_TABLES,
    SQL_FIXTURE,
    database_columns,
    foreign_keys,
    snapshot_columns,
    sql_fixture_columns,
    unique_keys,
)

pytestmark = pytest.mark.e2e


def test_snapshot_and_sql_fixture_have_the_same_columns() -> None:
    sql = sql_fixture_columns()
    snapshot = snapshot_columns()
    assert sorted(sql) == sorted(RACE_TABLES)
    assert sorted(snapshot) == sorted(RACE_TABLES)
    for table in RACE_TABLES:
        assert snapshot[table] == sql[table], table


def test_the_parser_sees_columns_and_skips_constraints() -> None:
    tables = sql_fixture_columns(
        "CREATE TABLE IF NOT EXISTS t (\n"
        "    id   bigserial PRIMARY KEY,\n"
        "    kind text NOT NULL DEFAULT 'a'   -- a comment, NOT NULL\n"
        "         CHECK (kind IN ('a', 'b')),\n"
        "    at   timestamptz,\n"
        "    v    double precision NOT NULL,\n"
        "    checks integer NOT NULL DEFAULT 0,\n"
        "    UNIQUE (kind, at)\n"
        ");"
    )
    assert {name: (c.family, c.nullable) for name, c in tables["t"].items()} == {
        "id": ("bigint", False),
        "kind": ("text", False),
        "at": ("timestamptz", True),
        "v": ("float", False),
        "checks": ("integer", False),
    }


def test_directus_creates_what_the_sql_fixture_creates(
    directus_server: DirectusServer, fresh_database_url: str
) -> None:
    """Applied for real: Directus' tables (from the snapshot) against the fixture's."""
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute(SQL_FIXTURE.read_text())
    from_directus = database_columns(directus_server.database_url)
    from_sql = database_columns(fresh_database_url)
    assert sorted(from_directus) == sorted(RACE_TABLES)
    for table in RACE_TABLES:
        assert from_directus[table] == from_sql[table], table
    assert foreign_keys(directus_server.database_url) == foreign_keys(fresh_database_url)
    # Single-column UNIQUE keys (devices.imei) survive the trip through Directus.
    single = {k for k in unique_keys(fresh_database_url) if len(k[1]) == 1}
    assert single <= unique_keys(directus_server.database_url)


def test_processor_adds_the_multi_column_unique_keys_directus_cannot_express(
    directus_server: DirectusServer, fresh_database_url: str
) -> None:
    """A Directus snapshot cannot express multi-column UNIQUE keys, so a Directus-created
    database lacks the ON CONFLICT targets of timing_records, zone_events and
    stage_results; the domain creates them (``DomainStore.ensure_natural_keys``)."""
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute(SQL_FIXTURE.read_text())
    results = {"timing_records", "zone_events", "stage_results"}
    wanted = {key for key in unique_keys(fresh_database_url) if key[0] in results}
    assert len(wanted) == 3

    async def ensure() -> None:
        async with open_bridge():
            store = DomainStore(directus_server.database_url)
            try:
                await store.ensure_natural_keys()
                await store.ensure_natural_keys()  # idempotent
            finally:
                await store.aclose()

    trio.run(ensure)
    assert wanted <= unique_keys(directus_server.database_url)
