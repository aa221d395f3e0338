"""Redis Streams adapter: every command the processor sends to Redis, Trio-side.

Callers get plain Python values and one error type for "Redis cannot be reached"
(``RedisUnavailable``), so reconnect policy lives in the components and the redis-py
exception zoo stays here. Calls cross into asyncio through ``bridge.call`` only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import hiredis
import redis.asyncio as aioredis
import redis.exceptions as rexc
import trio
from redis.asyncio.cluster import RedisCluster

from processor.core import bridge, redis_scripts
from processor.core.model import RawEntry
from processor.core.read_ahead import ReadsAhead

# Slack on top of a blocking read's own BLOCK time before the wait counts as a hang.
_BLOCK_GRACE_S = 5.0
# A non-blocking command that takes longer than this means Redis is in trouble.
_COMMAND_TIMEOUT_S = 10.0


# Entry fields as sent to XADD: str or bytes keys and values.
Fields = Mapping[Any, Any]


class RedisUnavailable(Exception):
    """Redis did not answer (refused, reset, timed out). Transient: back off and retry."""


def _id(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _fields(flat: Sequence[Any] | None) -> dict[Any, Any]:
    """An entry's field list as a dict; a trimmed entry still in a PEL has none."""
    if not flat:
        return {}
    if len(flat) == 2:  # one field (``payload``): nearly every entry
        return {flat[0]: flat[1]}
    pairs = iter(flat)
    return dict(zip(pairs, pairs, strict=False))


def _streams(response: Any) -> Any:
    """(key, entries) of an XREAD / XREADGROUP reply: a map in RESP3, a list in RESP2."""
    return response.items() if isinstance(response, dict) else response


def _group_reply(response: Any, **options: Any) -> list[RawEntry]:
    """XREADGROUP's reply (one stream) as entries, straight from the parser's lists.

    redis-py's own callback builds a dict per entry and a list per stream that
    ``_entries`` then walked again: 0.39 against 0.12 µs per entry (timeit, 1,000-entry
    replies), on every record the pipeline reads."""
    if not response:
        return []
    return [
        RawEntry(_id(entry_id), _fields(flat))
        for _, raw in _streams(response)
        for entry_id, flat in raw
    ]


def _read_reply(response: Any, **options: Any) -> list[tuple[str, str, dict[bytes, bytes]]]:
    """XREAD's reply as (key, entry id, fields), key after key: the broadcast tails
    read every record too."""
    if not response:
        return []
    return [
        (_id(key), _id(entry_id), _fields(flat))
        for key, raw in _streams(response)
        for entry_id, flat in raw
    ]


def _entries(raw: Sequence[Any]) -> list[RawEntry]:
    # A trimmed entry still in a PEL comes back with no fields (None or empty). The reply's
    # own dicts are kept (redis-py builds a new one per entry), not copied.
    return [
        RawEntry(_id(entry_id), fields if type(fields) is dict else dict(fields or {}))
        for entry_id, fields in raw
    ]


class _CPacking:
    """Commands packed by hiredis's C packer instead of redis-py's Python one.

    The acker's ``XACK`` names every committed entry: redis-py's asyncio connection packs
    ~1.1 µs per argument, hiredis ~0.1 µs, so this takes ~1 µs off every record. The
    same bytes (``tests/unit/test_redis_packing.py``); anything hiredis does not take
    (redis-py refuses those too, with its own error) goes to redis-py's packer.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        command = args[0]
        # As redis-py: a command of several words ("XINFO GROUPS") is sent as several.
        if isinstance(command, str):
            args = (*command.encode().split(), *args[1:])
        elif isinstance(command, bytes) and b" " in command:
            args = (*command.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            return super().pack_command(*args)  # type: ignore[misc, no-any-return]


# What a connection's asyncio ``StreamReader`` buffers before asyncio stops reading its
# socket (it pauses at twice this). asyncio's default, 64 KiB, paused and resumed the
# socket several times per 1,000-entry reply (~480 KB), and under trio-asyncio every
# resume adds the socket's reader again as a Trio task of its own. Replies are bounded
# by READ_COUNT, so a connection buffers at most ~2 MiB, and only while it is read late.
READER_LIMIT = 1 << 20


class _WholeReplies:
    """Connections whose ``StreamReader`` takes a large reply without pausing the socket
    (``READER_LIMIT``). TCP and TLS connections: redis-py opens a Unix socket without
    the arguments this extends, so those keep asyncio's default."""

    def _connection_arguments(self) -> Mapping[str, Any]:
        return {**super()._connection_arguments(), "limit": READER_LIMIT}  # type: ignore[misc]


def tuned_client(client: aioredis.Redis) -> aioredis.Redis:
    """``client`` with its connections (TCP, TLS or Unix socket, as its URL chose)
    packing commands in C and reading whole replies (``_WholeReplies``); to be called
    before its first command."""
    pool = client.connection_pool
    base = pool.connection_class
    if not issubclass(base, _CPacking):
        pool.connection_class = type(f"Tuned{base.__name__}", (_CPacking, _WholeReplies, base), {})
    return client


def cluster_url(url: str) -> str:
    """``redis+cluster://h:p`` -> ``redis://h:p``: the seed node redis-py's cluster takes."""
    scheme, sep, rest = url.partition("://")
    return scheme.removesuffix("+cluster") + sep + rest


@attrs.define
class RedisStreams:
    """Every command goes to one key (or keys sharing a hash tag), so the same calls work
    on a single Redis and on a Redis Cluster, where redis-py routes each by its slot."""

    client: aioredis.Redis | RedisCluster
    _url: str
    # Lua scripts by text, registered on first use; redis-py reloads one by itself when
    # a restarted Redis answers NOSCRIPT.
    _scripts: dict[str, Any] = attrs.field(factory=dict, init=False, repr=False)
    # Reads queued on a connection of their own (``read_ahead``); not on a cluster.
    _reads_ahead: ReadsAhead | None = attrs.field(default=None, init=False, repr=False)

    @classmethod
    async def connect(cls, url: str, *, cluster: bool = False) -> RedisStreams:
        client: aioredis.Redis | RedisCluster
        if cluster:
            # No socket timeout: blocking reads last up to READ_BLOCK_MS (up to 60 s) and
            # every call already has its own deadline in ``_call``.
            client = RedisCluster.from_url(
                cluster_url(url),
                socket_connect_timeout=5,
                socket_timeout=None,
                socket_keepalive=True,
                health_check_interval=0,
            )
        else:
            client = tuned_client(
                aioredis.Redis.from_url(
                    url, socket_connect_timeout=5, socket_keepalive=True, health_check_interval=0
                )
            )
        client.set_response_callback("XREADGROUP", _group_reply)
        client.set_response_callback("XREAD", _read_reply)
        streams = cls(client, url)
        if isinstance(client, aioredis.Redis):
            streams._reads_ahead = ReadsAhead(client.connection_pool, _group_reply)
        try:
            await streams.ping()
        except BaseException:
            await streams.aclose()
            raise
        return streams

    async def aclose(self) -> None:
        with trio.move_on_after(2) as scope:
            scope.shield = True
            with contextlib.suppress(rexc.RedisError, OSError):
                await bridge.call(self._close)

    async def _close(self) -> None:  # asyncio side
        if self._reads_ahead is not None:
            await self._reads_ahead.close()
        await self.client.aclose()

    async def _call(
        self, fn: Any, *args: Any, deadline_s: float = _COMMAND_TIMEOUT_S, **kwargs: Any
    ) -> Any:
        try:
            with trio.fail_after(deadline_s):
                return await bridge.call(fn, *args, **kwargs)
        except trio.TooSlowError as exc:
            raise RedisUnavailable(f"no answer within {deadline_s:.0f} s") from exc
        except (rexc.ConnectionError, rexc.TimeoutError, OSError) as exc:
            raise RedisUnavailable(str(exc) or type(exc).__name__) from exc
        except (rexc.ClusterDownError, rexc.RedisClusterException) as exc:
            # A cluster that is down, resharding or not yet reachable: wait, as for one Redis.
            raise RedisUnavailable(str(exc) or type(exc).__name__) from exc
        except rexc.ResponseError as exc:
            # LOADING / MASTERDOWN / READONLY while Redis restarts or fails over.
            if str(exc).split(" ", 1)[0] in {"LOADING", "MASTERDOWN", "READONLY", "TRYAGAIN"}:
                raise RedisUnavailable(str(exc)) from exc
            raise

    async def ping(self) -> None:
        await self._call(self.client.ping)

    async def ensure_group(self, stream: str, group: str) -> bool:
        """Create the group (and stream) if missing; returns True when it was created.

        A new group starts at ``0`` so records published before the first deploy are
        stored too; re-reading is harmless because writes are idempotent.
        """
        try:
            await self._call(self.client.xgroup_create, stream, group, id="0", mkstream=True)
        except rexc.ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            raise
        return True

    async def read_group(
        self,
        stream: str,
        group: str,
        consumer: str,
        start: str,
        count: int,
        block_ms: int,
        ahead: int = 0,
    ) -> list[RawEntry]:
        """XREADGROUP (shaped by ``_group_reply``). Reading new entries with ``ahead``,
        a full read leaves that many more queued in Redis (``read_ahead``; not on a
        cluster, where a read is sent when asked for)."""
        deadline_s = block_ms / 1000 + _BLOCK_GRACE_S
        if ahead and start == ">" and self._reads_ahead is not None:
            queued: list[RawEntry] = await self._call(
                self._reads_ahead.read,
                (stream, group, consumer),
                count,
                block_ms,
                ahead,
                deadline_s=deadline_s,
            )
            return queued
        entries: list[RawEntry] = await self._call(
            self.client.xreadgroup,
            group,
            consumer,
            {stream: start},
            count=count,
            block=block_ms,
            deadline_s=deadline_s,
        )  # shaped by _group_reply
        return entries

    async def collect_reads_ahead(
        self, stream: str, group: str, consumer: str, wait_s: float = 1.0
    ) -> list[list[RawEntry]]:
        """What this consumer's queued reads took (``ReadsAhead.collect``): for a
        consumer that stops reading to hand on."""
        if self._reads_ahead is None:
            return []
        replies: list[list[RawEntry]] = await self._call(
            self._reads_ahead.collect, (stream, group, consumer), wait_s
        )
        return replies

    async def ack(self, stream: str, group: str, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        return int(await self._call(self.client.xack, stream, group, *ids))

    async def group_stats(self, stream: str, group: str) -> tuple[int | None, int]:
        """(lag, pending) of the group from XINFO GROUPS; lag is None when Redis can't tell."""
        try:
            groups = await self._call(self.client.xinfo_groups, stream)
        except rexc.ResponseError as exc:
            if "no such key" in str(exc):  # the consumer has not created the stream yet
                return None, 0
            raise
        for info in groups:
            if _id(info["name"]) == group:
                lag = info.get("lag")
                return (None if lag is None else int(lag)), int(info["pending"])
        return None, 0

    async def length(self, stream: str) -> int:
        return int(await self._call(self.client.xlen, stream))

    async def _script(self, lua: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        script = self._scripts.get(lua)
        if script is None:
            script = self._scripts[lua] = self.client.register_script(lua)
        return await self._call(script, keys=list(keys), args=list(args))

    async def dead_letter(
        self, stream: str, group: str, dlq: str, records: Sequence[tuple[str, bool, Fields]]
    ) -> list[str]:
        """XADD each ``(id, still_pending, fields)`` to the DLQ and XACK it, atomically;
        returns the ids lettered.

        An entry expected to be ``still_pending`` is lettered only if it is, so every
        entry gets exactly one dead letter: a crash leaves it pending (lettered on the
        next try), and a second router holding it, or a retry after a lost reply, adds
        nothing (``redis_scripts.DEAD_LETTER``).
        """
        if not records:
            return []
        args: list[Any] = [group]
        for entry_id, still_pending, fields in records:
            args += [entry_id, "1" if still_pending else "0", 2 * len(fields)]
            for key, value in fields.items():
                args += [key, value]
        lettered = await self._script(redis_scripts.DEAD_LETTER, [stream, dlq], args)
        return [_id(i) for i in lettered]

    async def replay_letter(
        self, dlq: str, entry_id: str, target: str, fields: Fields
    ) -> str | None:
        """XADD ``fields`` to ``target`` and XDEL ``entry_id`` from ``dlq`` in one step, if
        the entry is still in the DLQ; the new entry's id, or None when it was not."""
        args: list[Any] = [entry_id]
        for key, value in fields.items():
            args += [key, value]
        new_id = await self._script(redis_scripts.REPLAY_LETTER, [dlq, target], args)
        return None if new_id is None else _id(new_id)

    async def delete_consumer_if_idle(self, stream: str, group: str, consumer: str) -> bool:
        """XGROUP DELCONSUMER, only if ``consumer`` owns no pending entry at that moment."""
        args = [group, consumer]
        return bool(await self._script(redis_scripts.DELETE_CONSUMER_IF_IDLE, [stream], args))

    async def autoclaim(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, start: str, count: int
    ) -> tuple[str, list[RawEntry], list[str]]:
        """XAUTOCLAIM: (next start id, claimed entries, ids deleted from the stream)."""
        reply = await self._call(
            self.client.xautoclaim,
            stream,
            group,
            consumer,
            min_idle_ms,
            start_id=start,
            count=count,
        )
        next_start, raw, *rest = reply
        deleted = [_id(i) for i in rest[0]] if rest else []
        return _id(next_start), _entries(raw), deleted

    async def delivery_counts(self, stream: str, group: str, ids: Sequence[str]) -> dict[str, int]:
        """Times each entry was delivered (XPENDING extended form over the id range)."""
        if not ids:
            return {}
        rows = await self._call(
            self.client.xpending_range,
            stream,
            group,
            min=min(ids, key=_id_key),
            max=max(ids, key=_id_key),
            count=len(ids) * 4 + 16,
        )
        wanted = set(ids)
        return {
            _id(r["message_id"]): int(r["times_delivered"])
            for r in rows
            if _id(r["message_id"]) in wanted
        }

    async def pending_entries(
        self, stream: str, group: str, count: int, consumer: str | None = None
    ) -> list[dict[str, Any]]:
        rows = await self._call(
            self.client.xpending_range,
            stream,
            group,
            min="-",
            max="+",
            count=count,
            consumername=consumer,
        )
        return [
            {
                "id": _id(r["message_id"]),
                "consumer": _id(r["consumer"]),
                "idle_ms": int(r["time_since_delivered"]),
                "deliveries": int(r["times_delivered"]),
            }
            for r in rows
        ]

    async def consumers(self, stream: str, group: str) -> list[dict[str, Any]]:
        rows = await self._call(self.client.xinfo_consumers, stream, group)
        return [
            {
                "name": _id(r["name"]),
                "pending": int(r["pending"]),
                "idle_ms": int(r["idle"]),
                "inactive_ms": int(r.get("inactive", r["idle"])),
            }
            for r in rows
        ]

    async def delete_consumer(self, stream: str, group: str, consumer: str) -> int:
        return int(await self._call(self.client.xgroup_delconsumer, stream, group, consumer))

    async def groups(self, stream: str) -> list[dict[str, Any]]:
        rows = await self._call(self.client.xinfo_groups, stream)
        return [
            {
                "name": _id(r["name"]),
                "consumers": int(r["consumers"]),
                "pending": int(r["pending"]),
                "last_delivered_id": _id(r["last-delivered-id"]),
                "lag": None if r.get("lag") is None else int(r["lag"]),
            }
            for r in rows
        ]

    async def range(
        self, stream: str, start: str = "-", end: str = "+", count: int | None = None
    ) -> list[RawEntry]:
        return _entries(await self._call(self.client.xrange, stream, start, end, count=count))

    async def add(self, stream: str, fields: Fields) -> str:
        return _id(await self._call(self.client.xadd, stream, dict(fields)))

    async def append(self, stream: str, entries: Sequence[Fields], maxlen: int) -> list[str]:
        """XADD each entry (one pipelined round trip), keeping about ``maxlen`` entries."""
        if not entries:
            return []

        async def send() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                for fields in entries:
                    pipe.xadd(stream, dict(fields), maxlen=maxlen, approximate=True)
                return list(await pipe.execute())

        return [_id(entry_id) for entry_id in await self._call(send)]

    async def read_after(
        self, starts: Mapping[str, str], count: int, block_ms: int
    ) -> list[tuple[str, str, dict[bytes, bytes]]]:
        """Plain XREAD BLOCK (no group) of what arrived after ``starts`` (key -> last id):
        (key, entry id, fields), key after key. Empty when nothing came within the block."""
        entries: list[tuple[str, str, dict[bytes, bytes]]] = await self._call(
            self.client.xread,
            dict[Any, Any](starts),
            count=count,
            block=block_ms,
            deadline_s=block_ms / 1000 + _BLOCK_GRACE_S,
        )  # shaped by _read_reply
        return entries

    async def delete(self, stream: str, ids: Sequence[str]) -> int:
        return int(await self._call(self.client.xdel, stream, *ids)) if ids else 0

    # Operator commands (processor.operator) and the control channel (core.control).

    async def exists(self, key: str) -> bool:
        return bool(await self._call(self.client.exists, key))

    async def newest_id(self, stream: str) -> str | None:
        """Id of the stream's last entry, or None when it is empty (XREVRANGE + - COUNT 1)."""
        raw = await self._call(self.client.xrevrange, stream, "+", "-", count=1)
        return _id(raw[0][0]) if raw else None

    async def pending_page(
        self, stream: str, group: str, start: str, count: int, consumer: str | None = None
    ) -> list[dict[str, Any]]:
        """Like ``pending_entries`` but from ``start`` (``(id`` excludes it), for paging."""
        rows = await self._call(
            self.client.xpending_range,
            stream,
            group,
            min=start,
            max="+",
            count=count,
            consumername=consumer,
        )
        return [
            {
                "id": _id(r["message_id"]),
                "consumer": _id(r["consumer"]),
                "idle_ms": int(r["time_since_delivered"]),
                "deliveries": int(r["times_delivered"]),
            }
            for r in rows
        ]

    async def claim_ids(
        self,
        stream: str,
        group: str,
        consumer: str,
        ids: Sequence[str],
        *,
        min_idle_ms: int,
        idle_ms: int,
    ) -> list[str]:
        """XCLAIM ... IDLE JUSTID: hand entries over without counting a delivery.

        Returns the ids now owned by ``consumer``; an entry deleted from the stream is
        dropped from the pending list by Redis and not returned.
        """
        if not ids:
            return []
        reply = await self._call(
            self.client.xclaim,
            stream,
            group,
            consumer,
            min_idle_ms,
            list(ids),
            idle=idle_ms,
            justid=True,
        )
        return [_id(i) for i in reply]

    async def trim_before(self, stream: str, min_id: str) -> int:
        """XTRIM MINID (exact): delete every entry whose id is lower than ``min_id``."""
        return int(await self._call(self.client.xtrim, stream, minid=min_id, approximate=False))

    async def publish(self, channel: str, message: bytes) -> int:
        """PUBLISH; returns how many subscribers received the message."""
        return int(await self._call(self.client.publish, channel, message))

    async def subscribe(self, channel: str) -> aioredis.client.PubSub:
        """A pub/sub connection subscribed to ``channel``, returned once Redis confirmed."""
        pubsub = self.client.pubsub()
        try:
            await self._call(pubsub.subscribe, channel)
            with trio.move_on_after(_COMMAND_TIMEOUT_S):
                while True:
                    reply = await self._call(pubsub.get_message, timeout=1.0)
                    if reply is not None and reply["type"] in {"subscribe", b"subscribe"}:
                        return pubsub
            raise RedisUnavailable(f"SUBSCRIBE not confirmed within {_COMMAND_TIMEOUT_S:.0f} s")
        except BaseException:
            await self.unsubscribe(pubsub)
            raise

    async def next_message(self, pubsub: aioredis.client.PubSub, timeout_s: float) -> bytes | None:
        """The next published message's data, or None after ``timeout_s`` without one."""
        reply = await self._call(
            pubsub.get_message,
            ignore_subscribe_messages=True,
            timeout=timeout_s,
            deadline_s=timeout_s + _BLOCK_GRACE_S,
        )
        if reply is None or reply["type"] not in {"message", b"message"}:
            return None
        data = reply["data"]
        return data if isinstance(data, bytes) else str(data).encode()

    async def unsubscribe(self, pubsub: aioredis.client.PubSub) -> None:
        """Close a pub/sub connection; never raises, bounded even when Redis is gone."""
        with trio.move_on_after(2) as scope:
            scope.shield = True
            with contextlib.suppress(rexc.RedisError, OSError):
                await bridge.call(pubsub.aclose)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
