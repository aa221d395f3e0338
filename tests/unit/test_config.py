from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import attrs
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


@pytest.mark.parametrize("var", config.VARIABLES, ids=lambda v: v.env)
def test_every_variable_rejects_garbage_in_one_line_naming_it(var: config.Variable) -> None:
    with pytest.raises(config.ConfigError) as info:
        config.load({var.env: "two words\nand a line"})
    message = str(info.value)
    assert info.value.variable == var.env
    assert message.startswith(f"{var.env}=")
    assert f"expected {var.expected}" in message
    assert "\n" not in message


@pytest.mark.parametrize("var", config.VARIABLES, ids=lambda v: v.env)
def test_every_default_is_valid_and_documented(var: config.Variable) -> None:
    parsed = var.parse(var.default_text())
    assert getattr(config.load({}), var.field) == parsed
    assert var.help
    assert var.expected
    example = config.env_example()
    assert f"{var.env}=" in example


def test_consumer_name_defaults_to_hostname_pid() -> None:
    name = config.load({}).consumer_name
    assert name == f"{socket.gethostname()}-{os.getpid()}"


def test_settings_are_frozen() -> None:
    settings = config.load({})
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        settings.batch_max = 5  # type: ignore[misc]


def test_issue_variables_are_all_present() -> None:
    names = {var.env for var in config.VARIABLES}
    assert {
        "REDIS_URL",
        "POSTGRES_URL",
        "REDIS_TELEMETRY_STREAM",
        "REDIS_CONSUMER_GROUP",
        "REDIS_CONSUMER_NAME",
        "BATCH_MAX",
        "BATCH_LINGER_MS",
        "DEVICE_STATE_MAX",
        "FUTURE_TOLERANCE_S",
        "SHUTDOWN_BUDGET_S",
        "HTTP_PORT",
        "LOG_LEVEL",
    } <= names


def test_an_instance_with_neither_pipeline_nor_broadcast_is_refused() -> None:
    with pytest.raises(config.ConfigError) as info:
        config.load({"PIPELINE_ENABLED": "false", "WS_ENABLED": "false"})
    assert info.value.variable == "PIPELINE_ENABLED"
    assert "WS_ENABLED=false" in str(info.value)
    assert not config.load({"PIPELINE_ENABLED": "false"}).pipeline_enabled


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, True),
        ({"TIMING": "publish"}, False),
        ({"TIMING": "consume", "PIPELINE_ENABLED": "false"}, True),
        ({"PIPELINE_ENABLED": "false"}, False),  # broadcast-only: times nothing
        ({"DOMAIN_ENABLED": "false"}, False),
    ],
)
def test_timing_runs_where_the_timing_mode_says(env: dict[str, str], expected: bool) -> None:
    assert config.load(env).times_here is expected


def test_a_timing_instance_needs_neither_pipeline_nor_broadcast() -> None:
    alone = config.load({"TIMING": "consume", "PIPELINE_ENABLED": "false", "WS_ENABLED": "false"})
    assert alone.times_here
    assert not alone.pipeline_enabled
    assert not alone.ws_enabled


@pytest.mark.parametrize(
    ("env", "why"),
    [
        ({"TIMING": "publish", "PIPELINE_ENABLED": "false"}, "no committed fixes"),
        ({"TIMING": "consume"}, "without the pipeline"),
        ({"TIMING": "consume", "PIPELINE_ENABLED": "false", "DOMAIN_ENABLED": "false"},
         "needs the race domain"),
    ],
)  # fmt: skip
def test_a_timing_mode_that_does_not_fit_the_roles_is_refused(
    env: dict[str, str], why: str
) -> None:
    with pytest.raises(config.ConfigError) as info:
        config.load(env)
    assert info.value.variable == "TIMING"
    assert why in str(info.value)


@pytest.mark.parametrize("value", ["-1", "20", "low"])
def test_nice_is_an_increment_of_0_to_19(value: str) -> None:
    with pytest.raises(config.ConfigError) as info:
        config.load({"NICE": value})
    assert info.value.variable == "NICE"
    assert config.load({"NICE": "10"}).nice == 10
    assert config.load({}).nice == 0


def test_the_broadcast_tail_is_paced_on_its_own() -> None:
    settings = config.load({"READ_PACE_MS": "5", "WS_READ_PACE_MS": "40"})
    assert (settings.read_pace_ms, settings.ws_read_pace_ms) == (5, 40)
    assert config.load({}).ws_read_pace_ms == 30
