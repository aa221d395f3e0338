"""A real Directus for the end-to-end tests: installed, bootstrapped, started, torn down.

``ops/directus.sh install`` puts Directus (npm package, pinned version) into a cache dir
outside the checkout; here it is bootstrapped on a fresh PostgreSQL database, given the
race collections with ``directus schema apply`` of ``schema/directus/snapshot.yaml`` (the
way Directus users manage schema), and started on a free port. Everything talks to it
through its REST API, as the SPA and the processor do.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
from psycopg.conninfo import conninfo_to_dict

from tests.broadcast.live import Race

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "ops" / "directus.sh"
SNAPSHOT = ROOT / "schema" / "directus" / "snapshot.yaml"
COOKIE = "directus_session_token"
ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "e2e-admin-password"
# Exit codes of ops/directus.sh meaning "cannot be installed here" (no node, no registry).
CANNOT_INSTALL = (3, 4)
INSTALL_TIMEOUT_S = 900.0
CLI_TIMEOUT_S = 120.0
START_TIMEOUT_S = 60.0


class DirectusNotInstallable(Exception):
    pass


def install() -> Path:
    """The cached Directus install (installing it first if needed)."""
    try:
        done = subprocess.run(
            [str(SCRIPT), "install"],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError as exc:  # bash missing: as good as no node
        raise DirectusNotInstallable(str(exc)) from exc
    if done.returncode in CANNOT_INSTALL:
        raise DirectusNotInstallable(done.stderr.strip().splitlines()[-1])
    if done.returncode != 0:
        raise RuntimeError(f"ops/directus.sh install failed ({done.returncode}):\n{done.stderr}")
    return Path(done.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def environment(database_url: str, port: int, workdir: Path) -> dict[str, str]:
    """Directus' configuration: this database, this port, nothing from the network."""
    db = conninfo_to_dict(database_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "DIRECTUS_"))}
    env.update(
        DB_CLIENT="pg",
        DB_HOST=str(db.get("host", "127.0.0.1")),
        DB_PORT=str(db.get("port", 5432)),
        DB_DATABASE=str(db["dbname"]),
        DB_USER=str(db.get("user", "postgres")),
        DB_PASSWORD=str(db.get("password", "")),
        KEY=uuid.uuid4().hex,
        SECRET=uuid.uuid4().hex,
        ADMIN_EMAIL=ADMIN_EMAIL,
        ADMIN_PASSWORD=ADMIN_PASSWORD,
        HOST="127.0.0.1",
        PORT=str(port),
        PUBLIC_URL=f"http://127.0.0.1:{port}",
        TELEMETRY="false",
        LOG_LEVEL="warn",
        CACHE_ENABLED="false",
        RATE_LIMITER_ENABLED="false",
        WEBSOCKETS_ENABLED="false",
        EXTENSIONS_PATH=str(workdir / "extensions"),
        STORAGE_LOCAL_ROOT=str(workdir / "uploads"),
        SESSION_COOKIE_SECURE="false",
    )
    return env


def run_cli(args: list[str], env: dict[str, str], workdir: Path) -> float:
    """Run a Directus CLI command to completion; return its duration in seconds."""
    started = time.monotonic()
    done = subprocess.run(
        [str(SCRIPT), "cli", *args],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"directus {' '.join(args)} failed ({done.returncode}):\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return time.monotonic() - started


@attrs.frozen
class Viewer:
    """A Directus user who may read ``race.event_id`` but not ``race.other_event_id``."""

    user_id: str
    session_token: str  # the value of the directus_session_token cookie
    access_token: str  # a bearer token of the same user (``mode: json`` login)
    race: Race


@attrs.define
class DirectusServer:
    url: str
    database_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    admin: httpx.Client
    timings: dict[str, float]

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """An admin request; the answer's ``data`` (fails the test on an error status)."""
        response = self.admin.request(method, path, **kwargs)
        if response.status_code >= 300:
            raise AssertionError(f"{method} {path}: HTTP {response.status_code} {response.text}")
        return response.json()["data"] if response.content else None

    def make_race(self, devices: int = 3) -> Race:
        """Like ``tests.broadcast.live.make_race``, but through Directus' items API."""
        prefix = uuid.uuid4().hex[:8]
        events = self.request(
            "POST",
            "/items/events",
            json=[{"name": prefix, "status": "live"}, {"name": f"{prefix}-x"}],
        )
        imeis = [f"D{prefix}{n:03d}" for n in range(devices)]
        made = self.request(
            "POST", "/items/devices", json=[{"imei": i, "model": "FMB920"} for i in imeis]
        )
        entries = self.request(
            "POST",
            "/items/entries",
            json=[
                {"event_id": events[0]["id"], "device_id": d["id"], "number": str(n)}
                for n, d in enumerate(made)
            ],
        )
        return Race(
            event_id=str(events[0]["id"]),
            other_event_id=str(events[1]["id"]),
            devices=imeis,
            entries={imei: int(e["id"]) for imei, e in zip(imeis, entries, strict=True)},
        )

    def make_viewer(self, *event_ids: str) -> tuple[str, str, str]:
        """A user whose role's policy may read only ``event_ids``: (user id, email, password).

        Directus 11: permissions belong to a policy, policies are attached to roles, users
        have a role. The permission's filter is what limits the rows.
        """
        name = f"viewer-{uuid.uuid4().hex[:8]}"
        policy = self.request(
            "POST", "/policies", json={"name": name, "admin_access": False, "app_access": False}
        )
        self.request(
            "POST",
            "/permissions",
            json={
                "policy": policy["id"],
                "collection": "events",
                "action": "read",
                "permissions": {"id": {"_in": [int(e) for e in event_ids]}},
                "fields": ["id", "name", "status", "starts_at", "ends_at"],
            },
        )
        role = self.request(
            "POST", "/roles", json={"name": name, "policies": [{"policy": policy["id"]}]}
        )
        email, password = f"{name}@example.com", uuid.uuid4().hex
        user = self.request(
            "POST", "/users", json={"email": email, "password": password, "role": role["id"]}
        )
        return str(user["id"]), email, password

    def session_cookie(self, email: str, password: str) -> str:
        """Log in as the SPA does (session mode): the ``directus_session_token`` value."""
        response = httpx.post(
            f"{self.url}/auth/login",
            json={"email": email, "password": password, "mode": "session"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        token = response.cookies.get(COOKIE)
        assert token, f"no {COOKIE} cookie in {response.headers.get_list('set-cookie')}"
        return token

    def access_token(self, email: str, password: str) -> str:
        """Log in as an API client does (``mode: json``): a bearer access token."""
        response = httpx.post(
            f"{self.url}/auth/login", json={"email": email, "password": password}, timeout=30
        )
        assert response.status_code == 200, response.text
        token: str = response.json()["data"]["access_token"]
        return token


def _wait_until_up(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"directus start exited with {process.returncode}:\n{log_path.read_text()[-4000:]}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/server/ping", timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"directus did not answer /server/ping in {START_TIMEOUT_S} s")
        time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


@contextlib.contextmanager
def running_directus(database_url: str, workdir: Path) -> Iterator[DirectusServer]:
    """Bootstrap ``database_url`` (empty), apply the snapshot, start, log the admin in."""
    timings: dict[str, float] = {}
    port = free_port()
    env = environment(database_url, port, workdir)
    # Directus looks for package extensions in its working directory's package.json.
    (workdir / "package.json").write_text('{"name": "processor-e2e-directus", "private": true}')
    for folder in ("extensions", "uploads"):
        (workdir / folder).mkdir(exist_ok=True)
    timings["bootstrap_s"] = run_cli(["bootstrap"], env, workdir)
    timings["schema_apply_s"] = run_cli(["schema", "apply", "--yes", str(SNAPSHOT)], env, workdir)
    url = f"http://127.0.0.1:{port}"
    log_path = workdir / "directus.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(SCRIPT), "cli", "start"],
            env=env,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: teardown stops all of it
        )
    try:
        _wait_until_up(url, process, log_path)
        timings["start_s"] = time.monotonic() - started
        login = httpx.post(
            f"{url}/auth/login", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
        )
        assert login.status_code == 200, login.text
        token = login.json()["data"]["access_token"]
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as admin:
            yield DirectusServer(url, database_url, process, log_path, admin, timings)
    finally:
        _stop(process)
