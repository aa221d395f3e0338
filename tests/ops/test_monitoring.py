"""Prometheus configuration, alert rules and the Grafana dashboard, against the real app.

``promtool`` (from Debian's ``prometheus`` package, fetched by ``ops/setup.sh``) checks the
configuration, the rules and the rules' unit tests (``ops/prometheus/alerts.test.yml``),
and lints a live ``/metrics`` scrape of the processor. Every metric name used by an alert
or a dashboard panel must be one the running processor exposes, so a renamed metric
cannot leave a silent alert or an empty panel behind.
"""

from __future__ import annotations

import json
import re
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import redis
import trio
import yaml

from processor import config
from tests.helpers import count_rows, make_position, publish, publish_fields, start_app, wait_for
from tests.ops.test_dockerfile import healthcheck_command
from tests.ops.tools import OPS, REPO, output, require_tool, run

PROMETHEUS = OPS / "prometheus"
DASHBOARD = OPS / "grafana" / "processor.json"

# Metrics a dashboard or alert may use before the app exposes them (a feature being wired
# in). Empty: every name used must be in a live scrape. Only processor_ws_* names may be
# added here, and only while the broadcast is not yet registered on the app's registry.
PENDING_METRICS: set[str] = set()
# Series Prometheus itself adds to every scrape target.
PROMETHEUS_SERIES = {"up"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
METRIC_NAME = re.compile(r"\b(processor_[a-z0-9_]+|up)\b(?!\s*\()")


def promtool() -> str:
    return require_tool("promtool", "Debian package prometheus")


# -- configuration and rules ------------------------------------------------------------


def test_promtool_accepts_the_prometheus_configuration() -> None:
    result = run([promtool(), "check", "config", str(PROMETHEUS / "prometheus.yml")])
    assert result.returncode == 0, output(result)
    assert "SUCCESS: 1 rule files found" in result.stdout, output(result)


def test_promtool_accepts_the_alert_rules() -> None:
    result = run([promtool(), "check", "rules", str(PROMETHEUS / "alerts.yml")])
    assert result.returncode == 0, output(result)


def test_alert_rules_fire_as_their_unit_tests_expect() -> None:
    result = run([promtool(), "test", "rules", str(PROMETHEUS / "alerts.test.yml")])
    assert result.returncode == 0, output(result)


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def github_anchors(markdown: Path) -> set[str]:
    """The anchors GitHub gives the headings of a markdown file."""
    anchors = set()
    for line in markdown.read_text().splitlines():
        match = re.match(r"#+\s+(.*)", line)
        if match:
            text = match.group(1).strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return anchors


def test_every_alert_says_what_it_means_and_where_the_runbook_is() -> None:
    anchors = github_anchors(REPO / "OPERATIONS.md")
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), "alert names are unique"
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        assert annotations["description"].strip(), name
        document, _, anchor = annotations["runbook_url"].partition("#")
        assert document == "OPERATIONS.md", f"{name}: runbook_url {annotations['runbook_url']}"
        assert anchor in anchors, f"{name}: OPERATIONS.md has no section #{anchor}"


def test_alerts_cover_the_operations_table() -> None:
    """The alert conditions OPERATIONS.md's metrics table names, each with a rule."""
    expressions = " ".join(rule["expr"] for rule in alert_rules())
    for metric in (
        "up",
        "processor_ready",
        "processor_group_lag_entries",
        "processor_group_pending_entries",
        "processor_dlq_length_entries",
        "processor_records_consumed_total",
        "processor_rows_total",
        "processor_poison_records_total",
        "processor_batch_write_seconds_bucket",
        "processor_end_to_end_seconds_bucket",
        "processor_write_retries_total",
        "processor_panic_exits_total",
        "processor_feed_dropped_total",
    ):
        assert re.search(rf"\b{metric}\b", expressions), f"no alert uses {metric}"


# -- the dashboard ----------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def dashboard_panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_expressions() -> list[str]:
    return [
        target["expr"]
        for panel in dashboard_panels()
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def test_dashboard_is_a_provisionable_grafana_dashboard() -> None:
    board = dashboard()
    assert board["uid"] == "processor"
    assert board["title"]
    assert isinstance(board["schemaVersion"], int)
    panels = list(dashboard_panels())
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "instance"} <= variables
    for panel in panels:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_dashboard_shows_what_an_operator_looks_at() -> None:
    expressions = "\n".join(dashboard_expressions())
    for wanted in (
        r"rate\(processor_records_consumed_total",  # throughput
        r"sum by \(outcome\) \(rate\(processor_rows_total",  # rows by outcome
        r"processor_group_lag_entries",
        r"processor_group_pending_entries",
        r"rate\(processor_dead_lettered_total",  # DLQ rate
        r"histogram_quantile\(0\.99, sum by \(le\) \(rate\(processor_batch_write_seconds_bucket",
        r"histogram_quantile\(0\.99, sum by \(le\) \(rate\(processor_end_to_end_seconds_bucket",
        r"processor_ws_clients",
        r"processor_ready",
    ):
        assert re.search(wanted, expressions), f"no panel query matches {wanted}"


def _as_promql(expression: str) -> str:
    """Grafana's variables replaced by values Prometheus accepts."""
    return (
        expression.replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$instance", ".*")
    )


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool has no expression checker; a rules file of the queries is checked instead."""
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": _as_promql(expression)}
                    for i, expression in enumerate(dashboard_expressions())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run([promtool(), "check", "rules", str(path)])
    assert result.returncode == 0, output(result)


# -- against a live processor -----------------------------------------------------------


@attrs.frozen
class Scrape:
    http_url: str
    text: str

    def names(self) -> set[str]:
        """Every series name the scrape declares (# TYPE), histogram series included."""
        names = set()
        for match in re.finditer(r"^# TYPE (\S+) (\S+)$", self.text, re.MULTILINE):
            name, kind = match.groups()
            names.add(name)
            if kind == "histogram":
                names.update(name + suffix for suffix in HISTOGRAM_SUFFIXES)
            if kind == "counter" and not name.endswith("_total"):
                names.add(name + "_total")
        return names


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read()


@pytest.fixture
async def live(settings: config.Settings, nursery: trio.Nursery) -> AsyncIterator[Scrape]:
    """The real app, in-process, after writing a few rows and dead-lettering one record,
    so counters, histograms and labelled series all have samples."""
    settings = attrs.evolve(settings, ws_port=0, ws_host="127.0.0.1")
    running = await start_app(nursery, settings)
    app = running.app
    assert app.http_url is not None

    prefix = f"M{uuid.uuid4().hex[:10]}"
    positions = [make_position(f"{prefix}-1", second) for second in range(5)]
    client = redis.Redis.from_url(settings.redis_url)
    try:
        publish(client, settings.telemetry_stream, positions)
        publish_fields(client, settings.telemetry_stream, [{b"payload": b"not json"}])
    finally:
        client.close()
    await wait_for(lambda: count_rows(settings.postgres_url, prefix) == 5, what="rows")
    metrics_url = app.http_url + "/metrics"

    async def scrape() -> str:
        status, body = await trio.to_thread.run_sync(_get, metrics_url)
        assert status == 200
        return body.decode()

    async def dead_lettered() -> bool:
        return "processor_dead_lettered_total{" in await scrape()

    await wait_for(dead_lettered, what="a dead letter in /metrics")
    yield Scrape(http_url=app.http_url, text=await scrape())
    assert await running.stop() == 0


async def test_promtool_finds_no_problem_in_a_live_scrape(live: Scrape) -> None:
    result = await trio.to_thread.run_sync(
        lambda: run([promtool(), "check", "metrics"], stdin=live.text)
    )
    assert result.returncode == 0, output(result) + "\n" + live.text
    assert not result.stdout.strip(), output(result)
    assert not result.stderr.strip(), output(result)


def _unknown_names(expressions: list[str], exposed: set[str]) -> set[str]:
    used = {name for expression in expressions for name in METRIC_NAME.findall(expression)}
    return used - exposed - PROMETHEUS_SERIES - PENDING_METRICS


def test_only_websocket_metrics_may_be_pending() -> None:
    assert all(name.startswith("processor_ws_") for name in PENDING_METRICS)


async def test_the_live_scrape_carries_the_websocket_metrics(live: Scrape) -> None:
    """The dashboard's WebSocket panels read the broadcast's series from the same
    /metrics as the pipeline's (one registry, one scrape target per instance)."""
    ws_panels = {
        name
        for expression in dashboard_expressions()
        for name in METRIC_NAME.findall(expression)
        if name.startswith("processor_ws_")
    }
    assert "processor_ws_clients" in ws_panels
    assert ws_panels <= live.names()


async def test_alerts_use_only_metrics_the_processor_exposes(live: Scrape) -> None:
    unknown = _unknown_names([rule["expr"] for rule in alert_rules()], live.names())
    assert not unknown, f"alerts.yml uses metrics /metrics does not have: {sorted(unknown)}"


async def test_dashboard_uses_only_metrics_the_processor_exposes(live: Scrape) -> None:
    unknown = _unknown_names(dashboard_expressions(), live.names())
    assert not unknown, f"processor.json uses metrics /metrics does not have: {sorted(unknown)}"
    assert METRIC_NAME.findall("rate(processor_rows_total[5m])") == ["processor_rows_total"]


async def test_container_healthchecks_pass_against_a_live_processor(live: Scrape) -> None:
    """The Dockerfile's HEALTHCHECK (liveness, /healthz) and compose's (readiness,
    /readyz), run as written, against the processor's real port."""
    port = live.http_url.rsplit(":", 1)[1]
    docker = healthcheck_command()
    compose = yaml.safe_load((OPS / "compose.dev.yaml").read_text())
    readiness = compose["services"]["processor"]["healthcheck"]["test"][1:]
    readiness = [arg.replace("127.0.0.1:8080", f"127.0.0.1:{port}") for arg in readiness]
    for command in (docker, readiness):
        assert command[0] == "python"
        result = await trio.to_thread.run_sync(
            lambda argv=[sys.executable, *command[1:]]: run(argv, env={"HTTP_PORT": port})
        )
        assert result.returncode == 0, output(result)
    # And it fails when nothing answers (a port nobody listens on).
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        closed = str(sock.getsockname()[1])
    failed = await trio.to_thread.run_sync(
        lambda: run(
            [str(REPO / ".venv" / "bin" / "python"), *docker[1:]], env={"HTTP_PORT": closed}
        )
    )
    assert failed.returncode != 0, output(failed)
