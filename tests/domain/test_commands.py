"""``processor replay`` and ``processor backfill-derived`` against PostgreSQL."""

from __future__ import annotations

import argparse

import psycopg
import pytest

from processor import config, exit_codes
from processor.core.bridge import open_bridge
from processor.core.migrate import apply_migrations
from processor.domain import commands
from processor.logs import make_logger
from tests.domain.course import at, fix
from tests.domain.model_store import position_of
from tests.domain.test_app import LONS, insert_race, rows
from tests.helpers import store_positions


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    commands.add_commands(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


async def test_replay_is_idempotent_and_backfill_fills_derived(
    fresh_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = fresh_database_url
    settings = config.load({"POSTGRES_URL": url})
    async with open_bridge():
        await apply_migrations(url, log=make_logger("warning"))
    race = insert_race(url)
    positions = [position_of(race["imei"], fix(i * 10, lon)) for i, lon in enumerate(LONS)]
    store_positions(url, positions)

    args = parse(["replay", "--event", str(race["event"])])
    assert await commands._run(args, settings) == exit_codes.OK
    out = capsys.readouterr().out
    assert "timing_records: 4 added, 0 changed, 0 removed" in out
    assert "stage_results: 1 added" in out
    finish = rows(
        url, "SELECT crossed_at FROM timing_records WHERE kind = 'finish' AND entry_id = %s",
        race["entry"],
    )  # fmt: skip
    assert finish == [(at(95),)]
    assert await commands._run(args, settings) == exit_codes.OK
    assert "timing_records: 0 added, 0 changed, 0 removed" in capsys.readouterr().out

    # One stage only: that stage's rows are rewritten (and here already right).
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM timing_records WHERE kind = 'finish'")
    stage = parse(["replay", "--event", str(race["event"]), "--stage", str(race["stage"])])
    assert await commands._run(stage, settings) == exit_codes.OK
    assert "timing_records: 1 added, 0 changed, 0 removed" in capsys.readouterr().out

    missing = parse(["replay", "--event", "999999"])
    assert await commands._run(missing, settings) == exit_codes.FAILED

    backfill = parse(["backfill-derived", "--batch", "4"])
    assert await commands._run(backfill, settings) == exit_codes.OK
    assert f"{len(LONS)} rows updated" in capsys.readouterr().out
    derived = rows(url, "SELECT DISTINCT derived->>'ignition' FROM positions")
    assert derived == [("true",)]
