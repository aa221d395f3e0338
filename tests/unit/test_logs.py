"""The log format operators and log shippers parse: one JSON object per line on stdout."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from processor.logs import make_logger


def _lines(out: io.StringIO) -> list[dict[str, object]]:
    lines = [json.loads(text) for text in out.getvalue().splitlines()]
    assert all(isinstance(line, dict) for line in lines)
    return lines


def test_each_event_is_one_json_line_with_iso_utc_time_and_string_level() -> None:
    out = io.StringIO()
    log = make_logger("info", file=out)
    before = datetime.now(UTC)
    log.info("consumer started", stream="telemetry:teltonika", n=3)
    log.warning("redis unavailable", error="line one\nline two")
    after = datetime.now(UTC)

    first, second = _lines(out)
    assert first["event"] == "consumer started"
    assert first["level"] == "info"
    assert (first["stream"], first["n"]) == ("telemetry:teltonika", 3)
    assert second["level"] == "warning"
    assert second["error"] == "line one\nline two"  # escaped: still one physical line
    for line in (first, second):
        stamp = line["timestamp"]
        assert isinstance(stamp, str)
        moment = datetime.fromisoformat(stamp)
        assert moment.utcoffset() == timedelta(0)
        assert before - timedelta(seconds=1) <= moment <= after + timedelta(seconds=1)


@pytest.mark.parametrize(
    ("level", "written"),
    [
        ("debug", ["debug", "info", "warning", "error"]),
        ("info", ["info", "warning", "error"]),
        ("warning", ["warning", "error"]),
        ("error", ["error"]),
    ],
)
def test_log_level_filters_lower_levels(level: str, written: list[str]) -> None:
    out = io.StringIO()
    log = make_logger(level, file=out)
    log.debug("consumed", n=1)
    log.info("ready")
    log.warning("postgres unavailable")
    log.error("poison record")
    assert [line["level"] for line in _lines(out)] == written


def test_values_json_cannot_carry_are_written_as_text() -> None:
    out = io.StringIO()
    log = make_logger("info", file=out)
    log.info("odd values", raw=b"\xff", moment=datetime(2026, 5, 12, tzinfo=UTC), ids={7: "a"})
    [line] = _lines(out)
    assert line["raw"] == str(b"\xff")
    assert line["moment"] == "2026-05-12T00:00:00+00:00"
    assert line["ids"] == {"7": "a"}


def test_a_logged_value_never_makes_the_log_call_raise() -> None:
    # orjson refuses integers beyond 64 bits (a __bigint IO value); a log call that raised
    # would crash the task that made it.
    out = io.StringIO()
    log = make_logger("info", file=out)
    circular: list[object] = []
    circular.append(circular)
    log.info("bigint", value=2**70, moment=datetime(2026, 5, 12, tzinfo=UTC))
    log.info("circular", value=circular, n=1)
    bigint, odd = _lines(out)
    assert bigint["value"] == 2**70
    assert bigint["moment"] == "2026-05-12T00:00:00+00:00"
    assert bigint["level"] == "info"
    assert isinstance(bigint["timestamp"], str)
    assert (odd["event"], odd["n"], odd["level"]) == ("circular", "1", "info")


def test_exceptions_are_rendered_inside_the_json_line() -> None:
    out = io.StringIO()
    log = make_logger("info", file=out)
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        log.error("panic: unexpected error, exiting", exc_info=exc)
    [line] = _lines(out)
    assert "RuntimeError: boom" in str(line["exception"])
