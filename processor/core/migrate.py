"""Schema migrations, applied at startup before the pipeline touches PostgreSQL.

Migrations are plain SQL files named ``NNNN_name.sql``; ``NNNN`` is the version. Each one
runs in its own transaction together with its ``schema_migrations`` row, so a failed
migration leaves no trace and is retried on the next start. Applied files are pinned by
sha256: editing one after it ran is refused, because the database would no longer match
what the file says (add a new migration instead).

Several instances may start at once (rolling deploys, ``docker compose up --scale``). A
session-level advisory lock serialises them: the first applies, the others wait and then
find nothing to do.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import pathlib
import re
from typing import Any, Literal

import attrs
import psycopg
from structlog.typing import FilteringBoundLogger

from processor.core import bridge
from processor.core.pg_io import FastCancelConnection, PostgresUnavailable
from processor.core.pg_session import CONNECT_TIMEOUT_S, describe

MIGRATION_LOCK_KEY = 0x7072_6F63_6D69_67
"""``pg_advisory_lock`` key held while migrating: the bytes of ASCII "procmig".

Fixed so every instance, of every version, contends on the same lock. Advisory keys are
per database, so this only has to avoid other users of advisory locks in our database.
"""

StorageMode = Literal["hypertable", "plain"]

_FILENAME = re.compile(r"(?P<version>\d{4})_(?P<name>\w+)\.sql")


class MigrationError(Exception):
    """The schema cannot be brought up to date; the service must not start."""


@attrs.frozen(kw_only=True)
class Migration:
    version: int
    name: str
    sql: bytes
    checksum: str


@attrs.frozen(kw_only=True)
class MigrationReport:
    """What startup did: versions applied now, versions found already applied."""

    applied: tuple[int, ...]
    already_present: tuple[int, ...]
    storage_mode: StorageMode


def migrations_dir() -> pathlib.Path:
    """Where the SQL lives: inside the package in a wheel, at ``<repo>/schema`` in a checkout."""
    packaged = importlib.resources.files("processor") / "_schema" / "migrations"
    if isinstance(packaged, pathlib.Path) and packaged.is_dir():
        return packaged
    return pathlib.Path(__file__).resolve().parents[2] / "schema" / "migrations"


def load_migrations(directory: pathlib.Path) -> list[Migration]:
    """Every migration file in ``directory``, in version order.

    A ``.sql`` file with a malformed name is an error rather than silently skipped: it is
    almost certainly a migration someone meant to run.
    """
    migrations: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILENAME.fullmatch(path.name)
        if match is None:
            raise MigrationError(f"{path}: migration files must be named NNNN_name.sql")
        version = int(match["version"])
        if version in migrations:
            raise MigrationError(f"{path}: version {version} is used twice")
        sql = path.read_bytes()
        migrations[version] = Migration(
            version=version,
            name=match["name"],
            sql=sql,
            checksum=hashlib.sha256(sql).hexdigest(),
        )
    return [migrations[v] for v in sorted(migrations)]


async def apply_migrations(
    postgres_url: str, *, log: FilteringBoundLogger, directory: pathlib.Path | None = None
) -> MigrationReport:
    """Bring the database's schema up to date; raise :class:`MigrationError` if it cannot.

    ``log`` is a structlog bound logger. ``directory`` defaults to :func:`migrations_dir`.
    """
    migrations = load_migrations(directory or migrations_dir())
    try:
        report = await bridge.call(_migrate, postgres_url, migrations, log)
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        # The server went away or cannot be reached: transient, unlike a bad migration.
        # First line only: it becomes a readiness reason and a one-line log field.
        raise PostgresUnavailable(describe(exc)) from exc
    log.info("storage", mode=report.storage_mode)
    return report


async def _migrate(
    url: str, migrations: list[Migration], log: FilteringBoundLogger
) -> MigrationReport:
    """The asyncio side: the whole run holds one connection and the lock on it.

    Closing the connection ends the session and with it the lock, which is what releases it
    on every error or cancellation path; the explicit unlock covers the normal one.
    """
    # A bounded connect (a black-holed host would otherwise hang for the OS's TCP
    # timeout); the lock wait below is unbounded on purpose: another instance migrating.
    connect = FastCancelConnection.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
    async with await connect as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                checksum   text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        cursor = await conn.execute("SELECT version, name, checksum FROM schema_migrations")
        recorded = {
            version: (name, checksum) for version, name, checksum in await cursor.fetchall()
        }
        _check_unchanged(migrations, recorded)

        applied: list[int] = []
        for migration in migrations:
            if migration.version in recorded:
                continue
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum)"
                        " VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
            except psycopg.Error as exc:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} failed: {exc}"
                ) from exc
            log.info("migration applied", version=migration.version, name=migration.name)
            applied.append(migration.version)

        unknown = sorted(set(recorded) - {m.version for m in migrations})
        if unknown:
            log.warning("database has migrations this build does not know", versions=unknown)

        mode = await _storage_mode(conn)
        await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    return MigrationReport(
        applied=tuple(applied),
        already_present=tuple(sorted(recorded)),
        storage_mode=mode,
    )


def _check_unchanged(migrations: list[Migration], recorded: dict[int, tuple[str, str]]) -> None:
    changed = [
        f"{m.version:04d}_{m.name}"
        for m in migrations
        if m.version in recorded and recorded[m.version][1] != m.checksum
    ]
    if changed:
        raise MigrationError(
            f"applied migrations were edited since they ran: {', '.join(changed)};"
            " restore the original files and put schema changes in a new migration"
        )


async def _storage_mode(conn: psycopg.AsyncConnection[Any]) -> StorageMode:
    """``hypertable`` if TimescaleDB manages ``positions``, else ``plain``."""
    cursor = await conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
    if await cursor.fetchone() is None:
        return "plain"
    cursor = await conn.execute(
        "SELECT 1 FROM timescaledb_information.hypertables"
        " WHERE hypertable_schema = current_schema() AND hypertable_name = 'positions'"
    )
    return "hypertable" if await cursor.fetchone() is not None else "plain"
