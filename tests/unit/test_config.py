from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from processor import config

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_match_the_documented_values() -> None:
    s = config.load({})
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.postgres_url == "postgresql://127.0.0.1:5432/processor"
    assert s.telemetry_stream == "telemetry:teltonika"
    assert s.consumer_group == "processor"
    assert s.future_tolerance_s == 600
    assert s.shutdown_budget_s == 10
    assert s.http_port == 8080
    assert s.dlq_stream_key == "telemetry:teltonika:dlq"


@pytest.mark.parametrize(
    ("env", "value", "fragment"),
    [
        ("BATCH_MAX", "0", "expected an integer 1-50000"),
        ("BATCH_MAX", "lots", "expected an integer 1-50000"),
        ("REDIS_URL", "http://x", "expected a redis:// URL"),
        ("LOG_LEVEL", "loud", "expected one of debug, info, warning, error"),
        ("SHUTDOWN_BUDGET_S", "-1", "expected seconds"),
        ("REDIS_TELEMETRY_STREAM", "two words", "expected a stream key"),
    ],
)
def test_bad_value_names_variable_value_and_expectation(
    env: str, value: str, fragment: str
) -> None:
    with pytest.raises(config.ConfigError) as info:
        config.load({env: value})
    message = str(info.value)
    assert message.startswith(f"{env}={value!r}")
    assert fragment in message
    assert "\n" not in message


def test_cli_reports_config_error_in_one_line_with_exit_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "processor", "run"],
        capture_output=True,
        text=True,
        env={"BATCH_MAX": "0", "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "BATCH_MAX='0'" in result.stderr
    assert result.stdout == ""


def test_run_help_documents_every_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "processor", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for var in config.VARIABLES:
        assert var.env in result.stdout


def test_env_example_is_in_sync_with_the_variables() -> None:
    assert (ROOT / ".env.example").read_text() == config.env_example()
