"""Run ``processor run`` as a real subprocess and watch it: JSON log lines, HTTP, exit code.

Fault tests need the daemon as operators see it: a process that gets signals, is killed,
exits with a code. ``Processor`` starts one with a clean environment (only the variables
a test sets, plus defaults chosen for fast tests), reads its stdout on a thread into parsed
JSON log lines, and offers the waits a test needs: for a log event, for the HTTP server,
for the exit. ``ProcessorFleet`` starts many and kills whatever is left at teardown.

HTTP: the daemon is started with ``HTTP_PORT=0`` and the bound URL is read from its
``http listening`` log line, so there is no port race between parallel processes.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from processor import config

LogLine = dict[str, Any]

# The daemon runs from an empty directory: it must work from anywhere (the package is
# installed), and ``python -m`` would otherwise put the test's cwd first on sys.path.
_RUN_DIR = tempfile.mkdtemp(prefix="processor-run-")
atexit.register(shutil.rmtree, _RUN_DIR, True)

# Defaults for test processes; each test overrides what it is about.
BASE_ENV = {
    "HTTP_HOST": "127.0.0.1",
    "HTTP_PORT": "0",
    "WS_HOST": "127.0.0.1",
    "WS_PORT": "0",
    "LOG_LEVEL": "info",
    "READ_BLOCK_MS": "500",
    "BATCH_LINGER_MS": "20",
    "LAG_SAMPLE_INTERVAL_S": "0.5",
    "SHUTDOWN_BUDGET_S": "10",
    "REDIS_CONSUMER_GROUP": "processor",
}


def processor_env(
    redis_url: str,
    postgres_url: str,
    stream: str,
    panic_dir: Path | str,
    **extra: str | int | float,
) -> dict[str, str]:
    """The variables every fault test sets; ``extra`` adds or overrides (any value type)."""
    env = {
        "REDIS_URL": redis_url,
        "POSTGRES_URL": postgres_url,
        "REDIS_TELEMETRY_STREAM": stream,
        "PANIC_DUMP_DIR": str(panic_dir),
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


def clean_environ() -> dict[str, str]:
    """This process's environment without any processor variable (nothing leaks in)."""
    names = {v.env for v in config.VARIABLES}
    env = {k: v for k, v in os.environ.items() if k not in names}
    env["PYTHONUNBUFFERED"] = "1"  # log lines must reach the pipe as they are written
    return env


class ProcessorExited(AssertionError):
    pass


class Processor:
    """One ``python -m processor run`` subprocess."""

    def __init__(self, env: Mapping[str, str], name: str | None = None) -> None:
        self.name = name or env.get("REDIS_CONSUMER_NAME") or f"proc-{uuid.uuid4().hex[:6]}"
        self.env = {**clean_environ(), **BASE_ENV, "REDIS_CONSUMER_NAME": self.name, **env}
        self.lines: list[LogLine] = []
        self.raw_stdout: list[str] = []
        self.stderr: list[str] = []
        self._cond = threading.Condition()
        self._stdout_done = False
        self.started_at = time.monotonic()
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "processor", "run"],
            env=self.env,
            cwd=_RUN_DIR,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.pid = self.popen.pid
        self._threads = [
            threading.Thread(target=self._pump_stdout, daemon=True),
            threading.Thread(target=self._pump_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self._http_url: str | None = None

    # -- output ----------------------------------------------------------------------

    def _pump_stdout(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            line = raw.rstrip("\n")
            try:
                parsed = json.loads(line)
            except ValueError:
                parsed = None
            with self._cond:
                self.raw_stdout.append(line)
                if isinstance(parsed, dict):
                    parsed["_received"] = time.monotonic()
                    self.lines.append(parsed)
                self._cond.notify_all()
        with self._cond:
            self._stdout_done = True
            self._cond.notify_all()

    def _pump_stderr(self) -> None:
        assert self.popen.stderr is not None
        for raw in self.popen.stderr:
            with self._cond:
                self.stderr.append(raw.rstrip("\n"))

    def events(self, event: str) -> list[LogLine]:
        with self._cond:
            return [line for line in self.lines if line.get("event") == event]

    def wait_log(
        self,
        event: str,
        timeout: float = 30,
        where: Callable[[LogLine], bool] = lambda _: True,
    ) -> LogLine:
        """The first log line with this ``event`` (and matching ``where``), waiting for it."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if line.get("event") == event and where(line):
                        return line
                seen = len(self.lines)
                if self._stdout_done:
                    raise ProcessorExited(
                        f"{self.name} exited ({self.popen.poll()}) without logging {event!r}"
                        f"\n{self.tail()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"{self.name}: no {event!r} log line within {timeout} s\n{self.tail()}"
                    )
                self._cond.wait(remaining)

    def tail(self, n: int = 25) -> str:
        with self._cond:
            out = self.raw_stdout[-n:]
            err = self.stderr[-n:]
        text = "stdout:\n  " + "\n  ".join(out)
        if err:
            text += "\nstderr:\n  " + "\n  ".join(err)
        return text

    # -- HTTP ------------------------------------------------------------------------

    @property
    def http_url(self) -> str:
        if self._http_url is None:
            self._http_url = str(self.wait_log("http listening")["url"])
        return self._http_url

    def get(self, path: str, timeout: float = 2) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.http_url + path, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, ConnectionError):
            if self.popen.poll() is not None:
                raise ProcessorExited(
                    f"{self.name} exited ({self.popen.poll()}): no {path}\n{self.tail()}"
                ) from None
            raise

    def readyz(self) -> tuple[int, dict[str, Any]]:
        status, body = self.get("/readyz")
        return status, json.loads(body)

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as {"name{labels}": value} (label text kept as printed)."""
        status, body = self.get("/metrics")
        assert status == 200, body
        values: dict[str, float] = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                values[key] = float(value)
        return values

    def metric(self, name: str) -> float:
        return self.metrics().get(name, 0.0)

    # -- lifecycle -------------------------------------------------------------------

    def wait_ready(self, timeout: float = 60) -> Processor:
        self.wait_log("ready", timeout)
        return self

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def signal(self, sig: int) -> float:
        """Send ``sig``; returns the monotonic time it was sent."""
        at = time.monotonic()
        self.popen.send_signal(sig)
        return at

    def terminate(self) -> float:
        return self.signal(signal.SIGTERM)

    def interrupt(self) -> float:
        return self.signal(signal.SIGINT)

    def kill(self) -> float:
        return self.signal(signal.SIGKILL)

    def wait(self, timeout: float) -> int:
        """The exit code; fails the test if the process is still running at the deadline."""
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} still running {timeout} s later\n{self.tail()}"
            ) from None
        for thread in self._threads:
            thread.join(timeout=5)
        return code

    def stop(self, timeout: float = 20) -> int:
        """Graceful stop: SIGTERM and wait for the exit code."""
        if self.alive:
            self.terminate()
        return self.wait(timeout)

    def close(self) -> None:
        if self.alive:
            self.kill()
            self.popen.wait(timeout=10)
        for thread in self._threads:
            thread.join(timeout=5)


class ProcessorFleet:
    """Starts processors with shared settings; ``close`` kills whatever still runs."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self.all: list[Processor] = []

    def start(self, name: str | None = None, **overrides: str) -> Processor:
        proc = Processor({**self.env, **overrides}, name=name)
        self.all.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.all:
            proc.close()

    def dump(self) -> str:
        return "\n".join(f"== {p.name} (exit {p.returncode})\n{p.tail()}" for p in self.all)


@contextmanager
def fleet(env: Mapping[str, str]) -> Iterator[ProcessorFleet]:
    processors = ProcessorFleet(env)
    try:
        yield processors
    finally:
        processors.close()


def run_processor_once(
    env: Mapping[str, str], timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    """Run ``processor run`` to completion (for runs that must exit by themselves)."""
    return subprocess.run(
        [sys.executable, "-m", "processor", "run"],
        env={**clean_environ(), **env},
        cwd=_RUN_DIR,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def panic_dumps(directory: Path) -> list[Path]:
    return sorted(directory.glob("processor-panic-*.json"))
