"""Columns of the race tables as the SQL fixture, the Directus snapshot and a database see them.

Types are compared by family (``text`` and ``varchar`` are both text; Directus' ``float``
is PostgreSQL ``real`` where the fixture has ``double precision``): the point is that a
column the processor reads or writes exists on both sides with a compatible type.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import attrs
import psycopg
import yaml

ROOT = Path(__file__).parents[2]
SQL_FIXTURE = ROOT / "schema" / "directus" / "race_tables.sql"
SNAPSHOT = ROOT / "schema" / "directus" / "snapshot.yaml"
RACE_TABLES = (
    "events",
    "devices",
    "entries",
    "stages",
    "geofences",
    "io_mappings",
    "timing_records",
    "zone_events",
    "stage_results",
)

# SQL type (as written in the fixture or as PostgreSQL names it) -> family.
SQL_FAMILIES = {
    "serial": "integer",
    "integer": "integer",
    "int": "integer",
    "bigserial": "bigint",
    "bigint": "bigint",
    "text": "text",
    "varchar": "text",
    "character varying": "text",
    "timestamptz": "timestamptz",
    "timestamp with time zone": "timestamptz",
    "double precision": "float",
    "real": "float",
    "numeric": "float",
    "jsonb": "json",
    "json": "json",
    "boolean": "boolean",
}
# Directus field type -> family.
DIRECTUS_FAMILIES = {
    "integer": "integer",
    "bigInteger": "bigint",
    "string": "text",
    "text": "text",
    "timestamp": "timestamptz",
    "float": "float",
    "decimal": "float",
    "json": "json",
    "boolean": "boolean",
}


@attrs.frozen
class Column:
    family: str
    nullable: bool


Tables = dict[str, dict[str, Column]]

_CREATE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*?)\n\);", re.DOTALL | re.IGNORECASE)
_NOT_COLUMN = re.compile(r"(unique|primary|check|constraint|foreign|exclude)\b", re.IGNORECASE)


def sql_fixture_columns(text: str | None = None) -> Tables:
    """Parse ``CREATE TABLE`` statements: one column per line, constraints skipped."""
    text = SQL_FIXTURE.read_text() if text is None else text
    tables: Tables = {}
    for name, body in _CREATE.findall(text):
        columns: dict[str, Column] = {}
        for raw in body.splitlines():
            line = raw.split("--", 1)[0].strip().rstrip(",")
            if not line or _NOT_COLUMN.match(line):
                continue
            column, rest = line.split(None, 1)
            kind = _sql_type(rest.lower())
            primary = "primary key" in rest.lower()
            nullable = not (primary or "not null" in rest.lower() or kind.endswith("serial"))
            columns[column] = Column(SQL_FAMILIES[kind], nullable)
        tables[name] = columns
    return tables


def _sql_type(declaration: str) -> str:
    for kind in sorted(SQL_FAMILIES, key=len, reverse=True):
        if re.match(rf"{re.escape(kind)}\b", declaration):
            return kind
    raise ValueError(f"unknown column type in {declaration!r}")


def snapshot_columns(path: Path = SNAPSHOT) -> Tables:
    """The fields of a Directus schema snapshot (``directus schema snapshot``), by table."""
    snapshot: dict[str, Any] = yaml.safe_load(path.read_text())
    tables: Tables = {c["collection"]: {} for c in snapshot["collections"]}
    for field in snapshot["fields"]:
        if field["type"] == "alias" or field.get("schema") is None:
            continue  # o2m and presentation fields have no column
        tables[field["collection"]][field["field"]] = Column(
            DIRECTUS_FAMILIES[field["type"]], bool(field["schema"]["is_nullable"])
        )
    return tables


def database_columns(database_url: str, tables: tuple[str, ...] = RACE_TABLES) -> Tables:
    """The race tables' columns as PostgreSQL's information_schema reports them."""
    found: Tables = {}
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable = 'YES'"
            " FROM information_schema.columns"
            " WHERE table_schema = 'public' AND table_name = ANY(%s)",
            (list(tables),),
        ).fetchall()
    for table, column, data_type, nullable in rows:
        found.setdefault(table, {})[column] = Column(SQL_FAMILIES[data_type], nullable)
    return found


def foreign_keys(database_url: str) -> set[tuple[str, str, str, str]]:
    """(table, column, referenced table, ON DELETE rule) of the race tables' foreign keys."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT kcu.table_name, kcu.column_name, ccu.table_name, rc.delete_rule"
            " FROM information_schema.referential_constraints AS rc"
            " JOIN information_schema.key_column_usage AS kcu"
            "   ON kcu.constraint_name = rc.constraint_name"
            " JOIN information_schema.constraint_column_usage AS ccu"
            "   ON ccu.constraint_name = rc.constraint_name"
            " WHERE kcu.table_schema = 'public' AND kcu.table_name = ANY(%s)",
            (list(RACE_TABLES),),
        ).fetchall()
    return {(t, c, ref, rule) for t, c, ref, rule in rows}


def unique_keys(database_url: str) -> set[tuple[str, tuple[str, ...]]]:
    """(table, columns) of every UNIQUE constraint or unique index on the race tables
    (primary keys left out)."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT t.relname, array_agg(a.attname ORDER BY k.n)"
            " FROM pg_index AS i"
            " JOIN pg_class AS t ON t.oid = i.indrelid"
            " CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)"
            " JOIN pg_attribute AS a ON a.attrelid = t.oid AND a.attnum = k.attnum"
            " WHERE i.indisunique AND NOT i.indisprimary AND t.relname = ANY(%s)"
            " GROUP BY i.indexrelid, t.relname",
            (list(RACE_TABLES),),
        ).fetchall()
    return {(table, tuple(columns)) for table, columns in rows}
