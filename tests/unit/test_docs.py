"""The documentation names what the code has: every variable, every metric."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from processor import config
from processor.broadcast.metrics import BroadcastMetrics
from processor.core.metrics import Metrics
from processor.domain.plugin import DomainMetrics

ROOT = Path(__file__).resolve().parents[2]


def test_readme_configuration_table_lists_every_variable() -> None:
    readme = (ROOT / "README.md").read_text()
    for var in config.VARIABLES:
        assert f"| `{var.env}` |" in readme, var.env


def test_runbook_explains_every_metric() -> None:
    runbook = (ROOT / "OPERATIONS.md").read_text()
    plugins = CollectorRegistry()
    BroadcastMetrics.create(plugins)
    DomainMetrics.create(plugins)
    registries = [Metrics.create("s").registry, plugins]
    names = {m.name for registry in registries for m in registry.collect()}
    documented = set(re.findall(r"`(processor_[a-z_]+)", runbook))
    missing = {n for n in names if n not in documented and f"{n}_total" not in documented}
    assert not missing, f"OPERATIONS.md does not explain {sorted(missing)}"
