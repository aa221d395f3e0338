"""Fixtures of the end-to-end tests: a real Directus and a real (headless) Chromium.

Both are started once for this package (tests/e2e), lazily (only when a selected test
asks for them), and stopped, their database and profile removed, after its last test.
Each test then makes what it needs of its own: a race and a Directus user through the
Directus API, a browser context (own cookies) in Chromium.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests.conftest import ADMIN_URL
from tests.e2e.browser import Chromium, find_chromium, launch_chromium
from tests.e2e.directus import (
    DirectusNotInstallable,
    DirectusServer,
    Viewer,
    install,
    running_directus,
)

# Start-up times of this session's Directus and Chromium, shown in pytest's summary.
TIMINGS: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in TIMINGS.items())
        terminalreporter.write_line(f"e2e start-up: {parts}")


@pytest.fixture(scope="package")
def directus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DirectusServer]:
    """Directus (ops/directus.sh's cached install) on a fresh database, schema applied.

    ``PROCESSOR_E2E_DIRECTUS=0`` leaves it out (its tests skip; the browser test then
    runs against the Directus stand-in).
    """
    if os.environ.get("PROCESSOR_E2E_DIRECTUS") == "0":
        pytest.skip("real Directus disabled by PROCESSOR_E2E_DIRECTUS=0")
    try:
        install()
    except DirectusNotInstallable as exc:
        pytest.skip(f"Directus cannot be installed here: {exc}")
    name = f"processor_e2e_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        with running_directus(
            f"{ADMIN_URL.rpartition('/')[0]}/{name}", tmp_path_factory.mktemp("directus")
        ) as server:
            TIMINGS.update({f"directus {k}": v for k, v in server.timings.items()})
            yield server
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def viewer(directus_server: DirectusServer) -> Viewer:
    race = directus_server.make_race()
    user_id, email, password = directus_server.make_viewer(race.event_id)
    return Viewer(
        user_id,
        directus_server.session_cookie(email, password),
        directus_server.access_token(email, password),
        race,
    )


@pytest.fixture(scope="package")
def chromium() -> Iterator[Chromium]:
    executable = find_chromium()
    if executable is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    started = time.monotonic()
    with launch_chromium(executable) as browser:
        TIMINGS["chromium start_s"] = time.monotonic() - started
        yield browser
