"""Migrations against a real PostgreSQL: idempotence, checksums, and concurrent starts.

Concurrency tests do not hope that two runners overlap: a separate connection holds the
migration lock, the test waits until ``pg_locks`` shows every runner queued behind it,
and only then lets go, so the runners are guaranteed to contend.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import structlog
import trio
from structlog.testing import capture_logs

from processor import exit_codes
from processor.core.migrate import (
    MIGRATION_LOCK_KEY,
    MigrationError,
    MigrationReport,
    apply_migrations,
    load_migrations,
    migrations_dir,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
ALL_VERSIONS = tuple(m.version for m in load_migrations(migrations_dir()))


def _scalar(url: str, query: str) -> object:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


async def _wait_for_lock_waiters(url: str, count: int) -> None:
    """Return once ``count`` sessions are blocked on the migration lock (or fail)."""
    query = """
        SELECT count(*) FROM pg_locks
        WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1
          AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND ((classid::bigint << 32) | objid::bigint) = %s
    """
    with trio.fail_after(10), psycopg.connect(url, autocommit=True) as conn:
        while True:
            row = conn.execute(query, (MIGRATION_LOCK_KEY,)).fetchone()
            assert row is not None
            if row[0] >= count:
                return
            await trio.sleep(0.01)


def _applied_rows(url: str) -> list[tuple[int, str, str]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(
            "SELECT version, name, checksum FROM schema_migrations ORDER BY version"
        ).fetchall()


def test_migrations_dir_in_a_checkout_is_the_repo_schema() -> None:
    assert migrations_dir() == REPO_ROOT / "schema" / "migrations"
    assert ALL_VERSIONS[0] == 1


def test_badly_named_sql_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "1_positions.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        load_migrations(tmp_path)


async def test_applying_twice_is_idempotent(fresh_database_url: str, bridge: None) -> None:
    with capture_logs() as logs:
        first = await apply_migrations(fresh_database_url, log=structlog.get_logger())
    second = await apply_migrations(fresh_database_url, log=structlog.get_logger())

    assert first == MigrationReport(applied=ALL_VERSIONS, already_present=(), storage_mode="plain")
    assert second == MigrationReport(applied=(), already_present=ALL_VERSIONS, storage_mode="plain")
    assert {
        "event": "migration applied",
        "version": 1,
        "name": "positions",
        "log_level": "info",
    } in logs
    assert {"event": "storage", "mode": "plain", "log_level": "info"} in logs


async def test_versions_are_recorded_with_checksums(fresh_database_url: str, bridge: None) -> None:
    await apply_migrations(fresh_database_url, log=structlog.get_logger())

    expected = [
        (m.version, m.name, hashlib.sha256(m.sql).hexdigest())
        for m in load_migrations(migrations_dir())
    ]
    assert _applied_rows(fresh_database_url) == expected


async def test_positions_columns_match_the_contract(fresh_database_url: str, bridge: None) -> None:
    await apply_migrations(fresh_database_url, log=structlog.get_logger())

    with psycopg.connect(fresh_database_url) as conn:
        columns = conn.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
            " WHERE table_name = 'positions' ORDER BY ordinal_position"
        ).fetchall()
    assert columns == [
        ("device_id", "text", "NO"),
        ("ts", "timestamp with time zone", "NO"),
        ("latitude", "double precision", "NO"),
        ("longitude", "double precision", "NO"),
        ("altitude", "double precision", "YES"),
        ("heading", "double precision", "YES"),
        ("speed", "double precision", "YES"),
        ("satellites", "smallint", "YES"),
        ("priority", "smallint", "YES"),
        ("event_io_id", "integer", "YES"),
        ("fix_valid", "boolean", "NO"),
        ("attributes", "jsonb", "NO"),
        ("received_at", "timestamp with time zone", "YES"),
        ("ingested_at", "timestamp with time zone", "NO"),
        ("derived", "jsonb", "YES"),  # 0002: named attributes from the race domain
    ]


async def test_redelivered_position_is_stored_once(fresh_database_url: str, bridge: None) -> None:
    await apply_migrations(fresh_database_url, log=structlog.get_logger())

    insert = """
        INSERT INTO positions (device_id, ts, latitude, longitude, fix_valid)
        VALUES ('dev-1', '2024-05-01T10:00:00Z', 45.0, 7.0, true)
        ON CONFLICT (device_id, ts) DO NOTHING
    """
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        assert conn.execute(insert).rowcount == 1
        assert conn.execute(insert).rowcount == 0
        row = conn.execute("SELECT count(*), min(attributes::text) FROM positions").fetchone()
    assert row == (1, "{}")


async def test_edited_applied_migration_is_refused(
    fresh_database_url: str, bridge: None, tmp_path: Path
) -> None:
    directory = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), directory)
    await apply_migrations(fresh_database_url, log=structlog.get_logger(), directory=directory)

    edited = directory / "0001_positions.sql"
    edited.write_text(edited.read_text() + "\n-- a harmless-looking edit\n")
    with pytest.raises(MigrationError, match="0001_positions"):
        await apply_migrations(fresh_database_url, log=structlog.get_logger(), directory=directory)


async def test_failed_migration_leaves_no_trace(
    fresh_database_url: str, bridge: None, tmp_path: Path
) -> None:
    directory = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), directory)
    (directory / "9999_broken.sql").write_text("CREATE TABLE half_done (id int);\nSELECT 1/0;\n")

    with pytest.raises(MigrationError, match="9999_broken failed"):
        await apply_migrations(fresh_database_url, log=structlog.get_logger(), directory=directory)

    assert [v for v, _, _ in _applied_rows(fresh_database_url)] == list(ALL_VERSIONS)
    assert _scalar(fresh_database_url, "SELECT to_regclass('half_done')") is None


async def test_runner_waits_for_the_lock(fresh_database_url: str, bridge: None) -> None:
    reports: list[MigrationReport] = []

    async def run() -> None:
        reports.append(await apply_migrations(fresh_database_url, log=structlog.get_logger()))

    with psycopg.connect(fresh_database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await _wait_for_lock_waiters(fresh_database_url, 1)
            # Queued behind the lock, it has done nothing yet.
            assert reports == []
            assert _scalar(fresh_database_url, "SELECT to_regclass('schema_migrations')") is None
            holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))

    assert [r.applied for r in reports] == [ALL_VERSIONS]


async def test_concurrent_tasks_apply_exactly_once(fresh_database_url: str, bridge: None) -> None:
    reports: list[MigrationReport] = []

    async def run() -> None:
        reports.append(await apply_migrations(fresh_database_url, log=structlog.get_logger()))

    with psycopg.connect(fresh_database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            nursery.start_soon(run)
            await _wait_for_lock_waiters(fresh_database_url, 2)
            holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))

    assert sorted(r.applied for r in reports) == [(), ALL_VERSIONS]
    assert [v for v, _, _ in _applied_rows(fresh_database_url)] == list(ALL_VERSIONS)


_RUNNER = """
import json, sys
import structlog, trio
from processor.core.bridge import open_bridge
from processor.core.migrate import apply_migrations

structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

async def main():
    async with open_bridge():
        report = await apply_migrations(sys.argv[1], log=structlog.get_logger())
    print(json.dumps({"applied": report.applied, "present": report.already_present}))

trio.run(main)
"""


async def test_concurrent_processes_apply_exactly_once(
    fresh_database_url: str, bridge: None
) -> None:
    results: list[subprocess.CompletedProcess[bytes]] = []

    async def run() -> None:
        results.append(
            await trio.run_process(
                [sys.executable, "-c", _RUNNER, fresh_database_url],
                cwd=REPO_ROOT,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        )

    with psycopg.connect(fresh_database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run)
                nursery.start_soon(run)
                await _wait_for_lock_waiters(fresh_database_url, 2)
                holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))

    for result in results:
        assert result.returncode == 0, result.stderr.decode()
    applied = sorted(tuple(json.loads(r.stdout)["applied"]) for r in results)
    assert applied == [(), ALL_VERSIONS]
    assert [v for v, _, _ in _applied_rows(fresh_database_url)] == list(ALL_VERSIONS)


def _processor_migrate(postgres_url: str) -> subprocess.CompletedProcess[str]:
    """``python -m processor migrate`` as an operator or an init container runs it."""
    return subprocess.run(
        [sys.executable, "-m", "processor", "migrate"],
        cwd=REPO_ROOT,
        env={"POSTGRES_URL": postgres_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _json_lines(text: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in text.splitlines()]
    assert all(isinstance(line, dict) for line in lines)
    return lines


def test_migrate_command_applies_then_finds_nothing_to_do(fresh_database_url: str) -> None:
    first = _processor_migrate(fresh_database_url)
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""
    [summary] = [e for e in _json_lines(first.stdout) if e["event"] == "migrations applied"]
    assert summary["applied"] == list(ALL_VERSIONS)
    assert summary["storage"] in {"plain", "hypertable"}
    assert summary["level"] == "info"

    second = _processor_migrate(fresh_database_url)
    assert second.returncode == 0, second.stderr
    [summary] = [e for e in _json_lines(second.stdout) if e["event"] == "migrations applied"]
    assert summary["applied"] == []
    assert [v for v, _, _ in _applied_rows(fresh_database_url)] == list(ALL_VERSIONS)


def test_migrate_command_without_postgres_is_one_error_line_exit_69() -> None:
    with socket.socket() as probe:  # a port nobody listens on: bound, never listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        result = _processor_migrate(f"postgresql://127.0.0.1:{port}/processor")
    assert result.returncode == exit_codes.UNAVAILABLE, result.stdout + result.stderr
    assert result.stderr == "", "a traceback instead of a log line"
    [line] = _json_lines(result.stdout)
    assert line["event"] == "postgres unavailable"
    assert line["level"] == "error"
    assert str(port) in str(line["error"])
    assert "\n" not in str(line["error"])


def test_migrate_command_with_a_refused_migration_exits_1(fresh_database_url: str) -> None:
    # An applied migration whose recorded checksum no longer matches the file on disk.
    assert _processor_migrate(fresh_database_url).returncode == 0
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
    result = _processor_migrate(fresh_database_url)
    assert result.returncode == exit_codes.FAILED, result.stdout + result.stderr
    assert result.stderr == ""
    [line] = _json_lines(result.stdout)
    assert line["event"] == "migration failed"
    assert "0001_positions" in str(line["error"])
