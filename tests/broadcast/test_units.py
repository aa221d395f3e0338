"""The broadcast's pure parts: outbox coalescing, snapshot/live joining, caches, guards."""

from __future__ import annotations

import json
from collections.abc import Hashable
from datetime import UTC, datetime, timedelta

import attrs
import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry

from processor import config
from processor.broadcast.directus import Credential, Directus, DirectusUnavailable
from processor.broadcast.frames import event_id_of, iso, position_body, position_frame
from processor.broadcast.handshake import (
    AUTH_FRAME_TIMEOUT_S,
    PATH,
    request_headers,
    session_cookie,
)
from processor.broadcast.hub import Hub
from processor.broadcast.metrics import BroadcastMetrics
from processor.broadcast.origin import origin_allowed
from processor.broadcast.outbox import ClientTooSlow, Outbox
from processor.broadcast.roster import Roster, RosterKeeper
from processor.broadcast.server import MAX_FRAME_BYTES
from processor.broadcast.subscription import Subscription
from processor.broadcast.ttl_cache import TtlCache
from processor.broadcast.wire import TextFrame
from tests.helpers import make_position

T0 = datetime(2026, 5, 12, 9, 0, tzinfo=UTC)


def at(second: float) -> datetime:
    return T0 + timedelta(seconds=second)


async def drain(outbox: Outbox) -> list[str]:
    out = []
    while len(outbox):
        out.append(await outbox.get())
    return out


async def test_outbox_is_fifo_until_full() -> None:
    box = Outbox(3)
    for text in ("a1", "a2", "b1"):
        assert box.push(text, key=text[0])
    assert await drain(box) == ["a1", "a2", "b1"]
    assert box.coalesced == 0


async def test_full_outbox_replaces_the_unsent_frame_of_the_same_device_in_place() -> None:
    box = Outbox(3)
    for text in ("a1", "b1", "c1", "b2", "a2", "b3"):
        assert box.push(text, key=text[0])
    assert await drain(box) == ["a2", "b3", "c1"]
    assert box.coalesced == 3


async def test_full_outbox_compacts_older_duplicates_before_giving_up() -> None:
    box = Outbox(3)
    for text in ("a1", "a2", "b1"):
        box.push(text, key=text[0])
    assert box.push("c1", key="c")  # a1 is dropped: a2 supersedes it
    assert await drain(box) == ["a2", "b1", "c1"]


async def test_outbox_overflows_when_coalescing_cannot_make_room() -> None:
    box = Outbox(2)
    assert box.push("snapshot")
    assert box.push("a1", key="a")
    assert not box.push("b1", key="b")
    assert box.overflowed
    with pytest.raises(ClientTooSlow):
        await box.get()


async def test_outbox_get_waits_for_a_push() -> None:
    box = Outbox(2)
    got: list[str] = []

    async def getter() -> None:
        got.append(await box.get())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(getter)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        box.push("x")
    assert got == ["x"]


async def test_outbox_get_many_takes_what_is_pending_in_order_up_to_the_byte_limit() -> None:
    box: Outbox[str] = Outbox(10)
    for text in ("a1", "b1", "c1", "snapshot-of-ten"):
        box.push(text, key=None if len(text) > 2 else text[0])
    assert await box.get_many(6) == ["a1", "b1", "c1"]  # 2 + 2 + 2 bytes; the next is over
    assert await box.get_many(6) == ["snapshot-of-ten"]  # larger than the limit: alone
    for text in ("a2", "b2", "a3"):
        box.push(text, key=text[0])
    assert await box.get_many(1000) == ["a2", "b2", "a3"]
    assert len(box) == 0


async def test_what_get_many_leaves_behind_is_still_coalesced() -> None:
    box: Outbox[str] = Outbox(3)
    for text in ("a1", "b1", "c1"):
        box.push(text, key=text[0])
    assert await box.get_many(2) == ["a1"]
    assert box.push("a2", key="a")
    assert box.push("b2", key="b")  # full: replaces b1 in place
    assert box.coalesced == 1
    assert await box.get_many(1000) == ["b2", "c1", "a2"]


@attrs.define
class FakeClient:
    outbox_capacity: int = 10
    pushed: list[tuple[str, Hashable | None]] = attrs.field(factory=list)
    slow: list[str] = attrs.field(factory=list)

    def push(self, text: str, key: Hashable | None = None) -> None:
        self.pushed.append((text, key))

    def push_many(self, keyed: list[tuple[Hashable, str]]) -> int:
        self.pushed.extend((text, key) for key, text in keyed)
        return len(self.pushed)

    def queued(self) -> int:
        return len(self.pushed)

    def too_slow(self, why: str) -> None:
        self.slow.append(why)


def test_a_batch_offered_at_once_is_what_offering_it_fix_by_fix_gives() -> None:
    """The hub hands an event's burst to a subscription in one ``offer_many``: during
    the snapshot, right after it (floors) and live, the client gets what ``offer``
    one fix at a time would have given it."""
    batches = [
        [("a", at(5), "a5"), ("b", at(3), "b3")],  # while the snapshot query runs
        [("b", at(2), "b2"), ("a", at(6), "a6"), ("b", at(4), "b4")],  # floors apply
        [("c", at(1), "c1"), ("b", at(5), "b5")],  # live
    ]
    got = []
    for batched in (True, False):
        client = FakeClient()
        sub = Subscription(client, "7")
        for n, batch in enumerate(batches):
            if n == 1:
                sub.release("SNAP", {"a": at(4), "b": at(3)})
            if batched:
                keyed = [(("7", d), text) for d, _, text in batch]
                sub.offer_many(
                    [(d, ts, k) for (d, ts, _), k in zip(batch, keyed, strict=True)], keyed
                )
            else:
                for d, ts, text in batch:
                    sub.offer(d, ts, text, ("7", d))
        got.append(client.pushed)
    assert got[0] == got[1]
    assert [t for t, _ in got[0]] == ["SNAP", "a5", "a6", "b4", "c1", "b5"]


def test_fixes_during_the_snapshot_are_held_then_only_newer_ones_delivered() -> None:
    client = FakeClient()
    sub = Subscription(client, "7")
    sub.offer("a", at(5), "a5")  # arrives while the snapshot query runs
    sub.offer("b", at(3), "b3")
    assert client.pushed == []
    sub.release("SNAP", {"a": at(4), "b": at(3)})  # snapshot has a@4, b@3
    assert [t for t, _ in client.pushed] == ["SNAP", "a5"]  # b3 is in the snapshot
    sub.offer("b", at(2), "b2")  # older than the snapshot: never a regression
    sub.offer("b", at(6), "b6")
    sub.offer("c", at(1), "c1")  # not in the snapshot at all
    assert [t for t, _ in client.pushed] == ["SNAP", "a5", "b6", "c1"]
    assert client.pushed[-1][1] == ("7", "c")


def test_held_backlog_is_coalesced_then_too_slow() -> None:
    client = FakeClient(outbox_capacity=2)
    sub = Subscription(client, "7")
    for second in range(5):
        sub.offer("a", at(second), f"a{second}")
    assert client.slow == []
    sub.offer("b", at(1), "b1")
    sub.offer("c", at(1), "c1")
    assert client.slow


def test_ttl_cache_expires_and_stays_bounded() -> None:
    now = [0.0]
    cache: TtlCache[str] = TtlCache(10, max_entries=2, clock=lambda: now[0])
    cache.put("a", "A")
    assert cache.get("a") == "A"
    now[0] = 10.0
    assert cache.get("a") is None
    for key in "bcd":
        cache.put(key, key.upper())
    assert len(cache) == 2
    assert cache.get("b") is None
    assert cache.get("d") == "D"
    assert TtlCache[str](0).get("x") is None


@pytest.mark.parametrize(
    ("headers", "allowed", "ok"),
    [
        ({"host": "race.example:8081", "origin": "http://race.example:8081"}, (), True),
        ({"host": "race.example:8081", "origin": "https://race.example"}, (), True),
        ({"host": "race.example:8081", "origin": "https://evil.example"}, (), False),
        ({"host": "race.example", "origin": "https://race.example.evil.example"}, (), False),
        ({"host": "[::1]:8081", "origin": "http://[::1]:3000"}, (), True),
        ({"host": "ws.example", "origin": "https://app.example"}, ("https://app.example",), True),
        ({"host": "ws.example", "origin": "https://app.example/"}, ("https://app.example",), True),
        ({"host": "ws.example", "origin": "https://ws.example"}, ("https://app.example",), False),
        ({"host": "ws.example"}, ("https://app.example",), True),  # not a browser
        ({"origin": "http://x"}, (), False),
    ],
)
def test_origin_guard(headers: dict[str, str], allowed: tuple[str, ...], ok: bool) -> None:
    assert origin_allowed(headers, allowed) is ok


def test_session_cookie_and_headers() -> None:
    headers = request_headers(
        [(b"Cookie", b"a=1; directus_session_token=tok"), (b"cookie", b"b=2")]
    )
    assert headers["cookie"] == "a=1; directus_session_token=tok; b=2"
    assert session_cookie(headers["cookie"], "directus_session_token") == "tok"
    assert session_cookie("directus_session_token=", "directus_session_token") is None
    assert session_cookie("", "directus_session_token") is None


def test_position_frames_carry_integers_beyond_64_bits() -> None:
    """A contract ``__bigint`` may have any number of digits; orjson refuses them, and
    the frame must still go out (exact: JSON numbers have no size limit)."""
    position = make_position(attributes={"16": 2**70, "10": b"\x01\xff"})
    body = position_body(position, 7, {"raw": 2**70, "odometer_km": 2**70 * 0.001})
    frame = json.loads(position_frame("9", body))
    assert frame["attrs"] == {"raw": 2**70, "odometer_km": pytest.approx(2**70 * 0.001)}
    assert frame["type"] == "position"
    assert frame["device_id"] == position.device_id
    assert json.loads(position_frame("9", position_body(position, 7, None)))["attrs"] == {}


def test_event_ids_are_plain_identifiers() -> None:
    assert event_id_of(12) == "12"
    assert event_id_of("abc-1") == "abc-1"
    for bad in ("../users", "", "a" * 65, True, None, 1.5, -1, "1?x=2"):
        assert event_id_of(bad) is None
    assert iso(datetime(2026, 5, 12, 9, 31, 2, 123456, tzinfo=UTC)) == "2026-05-12T09:31:02.123Z"


def test_contract_defaults() -> None:
    """The numbers live-protocol.md promises, as the daemon's defaults."""
    s = config.load({})
    assert (s.ws_port, s.ws_cookie_name, s.ws_allowed_origins) == (
        8081,
        "directus_session_token",
        (),
    )
    assert (s.ws_ping_interval_s, s.ws_ping_timeout_s) == (25.0, 10.0)
    assert (s.ws_max_subscriptions, s.ws_auth_cache_s) == (50, 30.0)
    assert (MAX_FRAME_BYTES, PATH, AUTH_FRAME_TIMEOUT_S) == (64 * 1024, "/ws", 5.0)
    origins = config.load({"WS_ALLOWED_ORIGINS": "https://a.example, https://b.example/"})
    assert origins.ws_allowed_origins == ("https://a.example", "https://b.example")


async def test_directus_that_does_not_answer_is_unavailable_within_the_timeout() -> None:
    """A Directus that accepts the connection but never answers, and one not listening."""
    credential = Credential("cookie", "directus_session_token=t")
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")  # never accepts
    async with listener:
        port = listener.socket.getsockname()[1]
        async with Directus.open(f"http://127.0.0.1:{port}", 30, timeout_s=0.3) as directus:
            started = trio.current_time()
            with pytest.raises(DirectusUnavailable), trio.fail_after(5):
                await directus.user_id(credential)
            assert trio.current_time() - started >= 0.3
            with pytest.raises(DirectusUnavailable), trio.fail_after(5):
                await directus.may_read_event(credential, "1")
            assert (len(directus.users), len(directus.events)) == (0, 0)  # never cached
    async with Directus.open(f"http://127.0.0.1:{port}", 30, timeout_s=0.3) as directus:
        with pytest.raises(DirectusUnavailable), trio.fail_after(5):
            await directus.user_id(credential)


def test_timing_frames_during_the_snapshot_come_after_it_and_are_never_coalesced() -> None:
    client = FakeClient(outbox_capacity=4)
    sub = Subscription(client, "7")
    sub.offer("a", at(5), "a5")
    sub.offer_unkeyed("T1")
    sub.offer("a", at(6), "a6")
    sub.offer("b", at(6), "b6")
    sub.offer("a", at(7), "a7")  # over capacity: a's fixes coalesce, T1 stays
    assert client.pushed == []
    assert client.slow == []
    sub.release("SNAP", {})
    assert [t for t, _ in client.pushed] == ["SNAP", "a7", "T1", "b6"]
    sub.offer_unkeyed("T2")  # live now: straight through
    assert client.pushed[-1] == ("T2", None)


def test_pre_encoded_frames_are_held_and_coalesced_like_texts() -> None:
    """The hub hands out ``TextFrame``s (encoded once): held, coalesced, ordered the same."""
    client = FakeClient(outbox_capacity=4)
    sub = Subscription(client, "7")
    a5, t1, a6, b6, a7 = (TextFrame.of(t) for t in ("a5", "T1", "a6", "b6", "a7"))
    sub.offer("a", at(5), a5)
    sub.offer_unkeyed(t1)
    sub.offer("a", at(6), a6)
    sub.offer("b", at(6), b6)
    sub.offer("a", at(7), a7)  # over capacity: a's fixes coalesce, T1 stays
    sub.release("SNAP", {})
    assert [t for t, _ in client.pushed] == ["SNAP", a7, t1, b6]
    assert client.pushed[2][1] is None  # timing: never coalesced later either
    assert client.pushed[1][1] == ("7", "a")


async def test_publish_many_says_how_full_the_fullest_outbox_it_filled_is() -> None:
    keeper = RosterKeeper(store=None, interval_s=30, log=None)  # type: ignore[arg-type]
    keeper.current = Roster.from_rows([("a", "7", 1), ("b", "8", 2), ("c", "9", 3)])
    hub = Hub(keeper, BroadcastMetrics.create(CollectorRegistry()))
    clients = {event: FakeClient() for event in ("7", "8", "9")}
    for event, client in clients.items():
        sub = Subscription(client, event)
        sub.release("SNAP", {})
        hub.add(sub)
    clients["9"].pushed.extend([("old", None)] * 5)  # fuller, but nothing for it now
    burst = [(make_position(d, second=s), None) for d, s in [("a", 1), ("a", 2), ("b", 1)]]
    assert hub.publish_many(burst) == 3  # event 7's client: the snapshot and a1, a2
    assert [len(c.pushed) for c in clients.values()] == [3, 2, 6]
    assert hub.publish_many([(make_position("z", second=1), None)]) == 0  # nobody's


async def test_hub_forgets_the_last_fix_of_a_device_no_event_enters_any_more() -> None:
    """``Hub.last`` is bounded by the roster: a device dropped from every event loses its
    entry at the first fix after the new roster, and an entered device keeps its own."""
    keeper = RosterKeeper(store=None, interval_s=30, log=None)  # type: ignore[arg-type]
    keeper.current = Roster.from_rows([("a", "7", 1), ("b", "7", 2)])
    hub = Hub(keeper, BroadcastMetrics.create(CollectorRegistry()))
    client = FakeClient()
    sub = Subscription(client, "7")
    sub.release("SNAP", {})
    hub.add(sub)
    hub.publish(make_position("a", second=1))
    hub.publish(make_position("b", second=1))
    assert set(hub.last) == {"a", "b"}

    keeper.current = Roster.from_rows([("a", "7", 1)])  # b is no longer entered
    hub.publish(make_position("a", second=2))
    assert set(hub.last) == {"a"}
    assert hub.last["a"].ts == make_position("a", second=2).ts
    hub.publish(make_position("a", second=1))  # late for a: still not broadcast
    assert [json.loads(t.text)["device_id"] for t, _ in client.pushed[1:]] == ["a", "b", "a"]
