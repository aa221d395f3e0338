"""The control channel: operator requests to every running instance, over Redis pub/sub.

A daemon's hot state lives in its own memory, so ``processor rehydrate DEVICE`` cannot
touch it; instead the CLI publishes ``{"op": "rehydrate", "device_id": ...}`` on
``<stream>:control`` and each instance's ``ControlListener`` acts on it. Pub/sub is
fire-and-forget: an instance that is reconnecting misses the message, which is why the
CLI reports how many instances received it (PUBLISH's reply).

Messages come from anyone who can write to Redis, so they are validated like stream
records: a bad one is logged at warning and ignored, never allowed to crash the tree.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

import attrs
import orjson
import structlog
import trio

from processor.core.backoff import Backoff
from processor.core.hot_state import DeviceStates
from processor.core.metrics import Metrics
from processor.core.pg_io import PositionStore, PostgresUnavailable, RowsRejected
from processor.core.redis_io import RedisStreams, RedisUnavailable

if TYPE_CHECKING:
    from redis.asyncio.client import PubSub

# Same rule as the position-record contract's device_id: a message naming anything else
# cannot refer to a device we hold.
_DEVICE_ID = re.compile(r"[0-9A-Za-z_-]{1,20}").fullmatch
# Control messages are tiny; anything bigger is not ours and is not parsed.
MAX_MESSAGE_BYTES = 4096
# How long one wait for a message lasts before the loop goes round (keeps each bridged
# call short; cancellation ends a wait at once regardless).
POLL_S = 5.0
# A subscription that lasted this long was healthy: its loss starts the backoff afresh.
# A shorter one keeps backing off, so a flapping Redis is not hammered with SUBSCRIBEs.
STABLE_S = 30.0
# Lookups a rehydrate makes at most while records for the device keep being committed.
REHYDRATE_TRIES = 3


class InvalidControlMessage(Exception):
    """A message on the control channel that is not a request we understand."""


@attrs.frozen
class Rehydrate:
    device_id: str


@attrs.frozen
class Reload:
    """Reload what was loaded from the database (the race definition) now."""


Request = Rehydrate | Reload


def control_channel(stream: str) -> str:
    return f"{stream}:control"


def valid_device_id(device_id: str) -> bool:
    return _DEVICE_ID(device_id) is not None


def rehydrate_message(device_id: str) -> bytes:
    if not valid_device_id(device_id):
        raise ValueError(f"{device_id!r} is not a device id")
    return orjson.dumps({"op": "rehydrate", "device_id": device_id})


def reload_message() -> bytes:
    return orjson.dumps({"op": "reload"})


def parse_message(data: bytes) -> Request:
    """The request a message carries; raises ``InvalidControlMessage`` saying why not."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise InvalidControlMessage(f"{len(data)} bytes is longer than {MAX_MESSAGE_BYTES}")
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidControlMessage(f"not JSON ({exc})") from None
    if type(obj) is not dict:
        raise InvalidControlMessage("not a JSON object")
    op = obj.get("op")
    if op == "reload":
        return Reload()
    if op != "rehydrate":
        raise InvalidControlMessage(f"unknown op {op!r}")
    device_id = obj.get("device_id")
    if type(device_id) is not str or not valid_device_id(device_id):
        raise InvalidControlMessage(f"device_id {device_id!r} is not 1-20 of [0-9A-Za-z_-]")
    return Rehydrate(device_id)


@attrs.define(kw_only=True)
class ControlListener:
    """Subscribes to the control channel and carries out requests; owns ``store``.

    ``store`` should be a PositionStore of its own: the writer's connection is busy with
    batches, and a rehydrate must not queue behind (or disturb) them.
    """

    streams: RedisStreams
    store: PositionStore
    channel: str
    states: DeviceStates
    metrics: Metrics
    log: structlog.typing.FilteringBoundLogger
    poll_s: float = POLL_S
    # Called on a reload request; plug-ins that load from the database add theirs.
    reload_hooks: list[Callable[[], None]] = attrs.field(factory=list)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        backoff = Backoff()
        try:
            while True:
                try:
                    pubsub = await self.streams.subscribe(self.channel)
                except RedisUnavailable as exc:
                    self.log.warning("control channel unavailable", error=str(exc))
                    await backoff.wait()
                    continue
                if backoff.attempt:
                    self.log.info("control channel resubscribed", channel=self.channel)
                task_status.started()
                task_status = trio.TASK_STATUS_IGNORED
                since = trio.current_time()
                try:
                    await self._listen(pubsub)
                except RedisUnavailable as exc:
                    self.log.warning("control channel lost", error=str(exc))
                    if trio.current_time() - since > STABLE_S:
                        backoff.reset()
                    await backoff.wait()
                finally:
                    await self.streams.unsubscribe(pubsub)
        finally:
            await self.store.aclose()

    async def _listen(self, pubsub: PubSub) -> None:
        while True:
            data = await self.streams.next_message(pubsub, self.poll_s)
            if data is None:
                continue
            try:
                request = parse_message(data)
            except InvalidControlMessage as exc:
                shown = data[:200].decode("utf-8", "replace")
                self.log.warning("ignored control message", reason=str(exc), message=shown)
                continue
            if isinstance(request, Reload):
                for hook in self.reload_hooks:
                    hook()
                self.log.info("reload requested", hooks=len(self.reload_hooks))
            else:
                await self.rehydrate(request.device_id)

    async def rehydrate(self, device_id: str) -> bool:
        """Replace a device's hot state with its newest stored fix; False if it failed.

        The query runs first and the swap after it has no await in between, so the
        writer never sees the device missing, and a failed query leaves the state as it
        was. A record committed for the device while the query ran is in the database but
        maybe not in what the query read, so then it asks again (a few times at most: a
        device sending non-stop gets the last answer), rather than put back an older fix.
        """
        for _ in range(REHYDRATE_TRIES):
            seen = self._last_seen(device_id)
            try:
                newest = await self.store.newest([device_id])
            except (PostgresUnavailable, RowsRejected) as exc:
                self.log.warning("rehydrate failed", device_id=device_id, error=str(exc))
                return False
            if self._last_seen(device_id) == seen:
                break
        had_state = self.states.forget(device_id)
        self.states.seed(device_id, newest[0] if newest else None)
        self.metrics.rehydrations.inc()
        self.log.info(
            "rehydrated on request",
            device_id=device_id,
            had_state=had_state,
            newest_ts=newest[0].ts.isoformat() if newest else None,
        )
        return True

    def _last_seen(self, device_id: str) -> datetime | None:
        state = self.states.get(device_id)
        return None if state is None else state.last_seen
