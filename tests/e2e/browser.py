"""Headless Chromium driven over the DevTools protocol (CDP), from Python, with trio.

No Playwright, no node: Chromium is started with ``--remote-debugging-port=0``, writes the
port it picked to ``DevToolsActivePort`` in its (fresh) profile directory, and a small
CDP client talks to its browser endpoint over trio-websocket. One page target is attached
in "flatten" mode, so every command is a JSON message with a ``sessionId``.

The flags are the ones that work on these machines: without the background-networking
ones Chromium tries to reach Google at every start and this network refuses it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import attrs
import orjson
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)
START_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 15.0


def find_chromium() -> str | None:
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else None
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


@attrs.define
class Chromium:
    """A running headless Chromium: its process, profile directory and CDP endpoint."""

    process: subprocess.Popen[bytes]
    profile: Path
    log_path: Path
    ws_url: str

    def log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(line for line in text.splitlines() if "dbus" not in line)[-4000:]


@contextlib.contextmanager
def launch_chromium(executable: str) -> Iterator[Chromium]:
    """Start Chromium on an empty profile; kill it and delete the profile on exit."""
    profile = Path(tempfile.mkdtemp(prefix="processor-e2e-chromium-"))
    log_path = profile.parent / f"{profile.name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT_S
        lines: list[str] = []
        while len(lines) < 2:
            if process.poll() is not None:
                raise RuntimeError(
                    f"chromium exited with {process.returncode}:\n{log_path.read_text()[-4000:]}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"chromium wrote no DevToolsActivePort in {START_TIMEOUT_S} s")
            time.sleep(0.05)
            with contextlib.suppress(OSError):
                lines = port_file.read_text().split()
        yield Chromium(process, profile, log_path, f"ws://127.0.0.1:{lines[0]}{lines[1]}")
    finally:
        _stop(process)
        shutil.rmtree(profile, ignore_errors=True)
        log_path.unlink(missing_ok=True)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


class CdpError(Exception):
    pass


@attrs.define
class Cdp:
    """A CDP connection to the browser endpoint; ``page`` is the attached page session."""

    ws: WebSocketConnection
    page: str = ""
    events: list[dict[str, Any]] = attrs.field(factory=list)
    _ids: Iterator[int] = attrs.field(factory=lambda: itertools.count(1))
    _waiting: dict[int, trio.MemorySendChannel[dict[str, Any]]] = attrs.field(factory=dict)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, chromium: Chromium) -> AsyncIterator[Cdp]:
        async with (
            open_websocket_url(chromium.ws_url, max_message_size=64 * 1024 * 1024) as ws,
            trio.open_nursery() as nursery,
        ):
            cdp = cls(ws)
            nursery.start_soon(cdp._read)
            # A browser context of its own: cookies and storage of no other test.
            context = (await cdp.call("Target.createBrowserContext"))["browserContextId"]
            try:
                await cdp._attach(context)
                yield cdp
            finally:
                with trio.move_on_after(COMMAND_TIMEOUT_S) as cleanup:
                    cleanup.shield = True
                    with contextlib.suppress(CdpError, ConnectionClosed):
                        await cdp.call("Target.disposeBrowserContext", browserContextId=context)
                nursery.cancel_scope.cancel()

    async def _attach(self, context: str) -> None:
        target = await self.call("Target.createTarget", url="about:blank", browserContextId=context)
        attached = await self.call(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        self.page = attached["sessionId"]
        for domain in ("Page", "Runtime", "Network"):
            await self.call(f"{domain}.enable", session=self.page)

    async def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send one command and return its result; CDP errors raise ``CdpError``."""
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._waiting[ident] = send
        try:
            await self.ws.send_message(orjson.dumps(message).decode())
            with trio.fail_after(COMMAND_TIMEOUT_S):
                answer = await receive.receive()
        finally:
            del self._waiting[ident]
        if "error" in answer:
            raise CdpError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def evaluate(self, expression: str) -> Any:
        """The value of a JS expression in the page (promises awaited, returned by value)."""
        result = await self.call(
            "Runtime.evaluate",
            session=self.page,
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
        )
        if "exceptionDetails" in result:
            raise CdpError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def console(self) -> list[str]:
        """What the page logged or threw, for failure messages."""
        lines = []
        for event in self.events:
            params = event.get("params", {})
            if event.get("method") == "Runtime.consoleAPICalled":
                args = [str(a.get("value", a.get("description", ""))) for a in params["args"]]
                lines.append(f"console.{params.get('type')}: {' '.join(args)}")
            elif event.get("method") == "Runtime.exceptionThrown":
                lines.append(f"exception: {params.get('exceptionDetails')}")
        return lines

    async def _read(self) -> None:
        while True:
            try:
                message = orjson.loads(await self.ws.get_message())
            except ConnectionClosed:
                return
            waiter = self._waiting.get(message.get("id", -1))
            if waiter is not None:
                waiter.send_nowait(message)
            elif message.get("method", "").startswith("Runtime."):
                self.events.append(message)
