"""The operator CLI as operators run it: ``python -m processor ...`` subprocesses against a
real Redis (and PostgreSQL for rehydrate), on streams populated by the test."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
import redis
import redis.asyncio as aioredis
import trio
from redis.crc import key_slot

from processor import config, exit_codes
from processor.cli import _parser
from processor.core.codec import encode
from processor.core.control import ControlListener, control_channel
from processor.core.dead_letters import DeadLetterRouter
from processor.core.hot_state import DeviceStates
from processor.core.messages import DeadLetter
from processor.core.metrics import Metrics
from processor.core.migrate import apply_migrations
from processor.core.model import RawEntry
from processor.core.pg_io import PositionStore
from processor.core.redis_io import RedisStreams
from processor.logs import make_logger
from processor.operator import replay
from processor.operator.session import Context
from tests.helpers import BASE_TIME, make_position, publish, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
GROUP = "processor"
THRESHOLD_MS = 30_000


@attrs.frozen
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.code in (0, 1), self
        return orjson.loads(self.stdout)


def _env(settings: config.Settings, **overrides: str) -> dict[str, str]:
    ours = {var.env for var in config.VARIABLES}
    env = {k: v for k, v in os.environ.items() if k not in ours}
    env.update(
        REDIS_URL=settings.redis_url,
        POSTGRES_URL=settings.postgres_url,
        REDIS_TELEMETRY_STREAM=settings.telemetry_stream,
        REDIS_CONSUMER_GROUP=GROUP,
        CLAIM_THRESHOLD_MS=str(THRESHOLD_MS),
    )
    env.update(overrides)
    return env


def _argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "processor", *args]


def cli(settings: config.Settings, *args: str, **env: str) -> Result:
    proc = subprocess.run(
        _argv(*args),
        env=_env(settings, **env),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def _one_line_error(result: Result, code: int) -> str:
    assert result.code == code, result
    assert result.stdout == "", result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def group(settings: config.Settings, sync_redis: redis.Redis) -> str:
    sync_redis.xgroup_create(settings.telemetry_stream, GROUP, id="0", mkstream=True)
    return settings.telemetry_stream


def _read(client: redis.Redis, stream: str, consumer: str, count: int) -> list[str]:
    reply = client.xreadgroup(GROUP, consumer, {stream: ">"}, count=count)
    return [entry_id.decode() for entry_id, _ in reply[0][1]]


def _pending(client: redis.Redis, stream: str) -> list[dict[str, Any]]:
    return client.xpending_range(stream, GROUP, "-", "+", 1000)  # type: ignore[no-any-return]


def _consumers(client: redis.Redis, stream: str) -> set[str]:
    return {c["name"].decode() for c in client.xinfo_consumers(stream, GROUP)}


def test_status_and_pending(settings: config.Settings, group: str, sync_redis: redis.Redis) -> None:
    publish(sync_redis, group, [make_position(1, second=s) for s in range(5)])
    read = _read(sync_redis, group, "dead-1", 3)
    sync_redis.xadd(settings.dlq_stream_key, {"payload": "{}", "error_kind": "poison"})

    status = cli(settings, "status", "--json").json()
    assert status["stream"] == {"key": group, "exists": True, "length": 5}
    [info] = status["groups"]
    assert info["name"] == GROUP
    assert (info["consumers"], info["pending"], info["lag"]) == (1, 3, 2)
    assert info["last_delivered_id"] == read[-1]
    assert status["group"]["pending"] == 3
    assert [(c["name"], c["pending"]) for c in status["group"]["consumers"]] == [("dead-1", 3)]
    assert status["dlq"] == {"key": settings.dlq_stream_key, "length": 1}
    human = cli(settings, "status")
    assert human.code == 0
    assert "dead-1" in human.stdout
    assert "LAG" in human.stdout

    pending = cli(settings, "pending", "--limit", "2", "--json").json()
    assert pending["pending"] == 3
    assert pending["by_consumer"] == {"dead-1": 3}
    assert [e["id"] for e in pending["entries"]] == read[:2]
    assert {(e["consumer"], e["deliveries"]) for e in pending["entries"]} == {("dead-1", 1)}
    assert all(e["idle_ms"] >= 0 for e in pending["entries"])

    line = _one_line_error(cli(settings, "pending", "--consumer", "ghost"), 2)
    assert "ghost" in line
    assert "dead-1" in line


def test_claim_moves_a_dead_consumers_entries_and_deletes_it(
    settings: config.Settings, group: str, sync_redis: redis.Redis
) -> None:
    publish(sync_redis, group, [make_position(2, second=s) for s in range(4)])
    read = _read(sync_redis, group, "dead-1", 4)

    guarded = cli(settings, "claim", "--from", "dead-1", "--min-idle-ms", "3600000", "--json")
    assert guarded.json() | {"handover_idle_ms": None} == {
        "from": "dead-1",
        "to": "operator-claim",
        "claimed": 0,
        "left": 4,
        "gone": 0,
        "consumer_deleted": False,
        "handover_idle_ms": None,
    }

    moved = cli(settings, "claim", "--from", "dead-1", "--json").json()
    assert (moved["claimed"], moved["left"], moved["gone"]) == (4, 0, 0)
    assert moved["consumer_deleted"] is True
    rows = _pending(sync_redis, group)
    assert [r["message_id"].decode() for r in rows] == read
    assert {r["consumer"] for r in rows} == {b"operator-claim"}
    # Idle at the threshold, so any running claimer takes them on its next sweep; the
    # move is not counted as a delivery.
    assert all(r["time_since_delivered"] >= THRESHOLD_MS for r in rows)
    assert {r["times_delivered"] for r in rows} == {1}
    assert "dead-1" not in _consumers(sync_redis, group)

    # An entry deleted from the stream while pending cannot be moved; it is counted.
    publish(sync_redis, group, [make_position(2, second=s) for s in range(10, 12)])
    doomed, kept = _read(sync_redis, group, "dead-2", 2)
    sync_redis.xdel(group, doomed)
    sync_redis.xgroup_createconsumer(group, GROUP, "live-1")
    human = cli(settings, "claim", "--from", "dead-2", "--to", "live-1")
    assert human.code == 0, human
    assert "moved 1 entries from dead-2 to live-1" in human.stdout
    assert "deleted consumer dead-2" in human.stdout
    owners = {r["message_id"].decode(): r["consumer"] for r in _pending(sync_redis, group)}
    assert owners[kept] == b"live-1"
    assert doomed not in owners

    line = _one_line_error(cli(settings, "claim", "--from", "dead-1"), 2)
    assert "no consumer 'dead-1'" in line


def _dead_letter(
    settings: config.Settings, client: redis.Redis, letter: DeadLetter, consumer: str = "proc-a"
) -> str:
    router = DeadLetterRouter(
        streams=None,  # type: ignore[arg-type]  # only fields() is used: no I/O
        stream=settings.telemetry_stream,
        group=GROUP,
        consumer=consumer,
        dlq=settings.dlq_stream_key,
        metrics=None,  # type: ignore[arg-type]
        retry=None,  # type: ignore[arg-type]
        log=None,  # type: ignore[arg-type]
    )
    fields = router.fields(letter, 1, "2026-05-12T09:31:05.000Z")
    return client.xadd(settings.dlq_stream_key, dict(fields)).decode()  # type: ignore[arg-type]


def test_dlq_list_show_replay(settings: config.Settings, sync_redis: redis.Redis) -> None:
    device = f"D{uuid.uuid4().hex[:10]}"
    original = {
        b"payload": encode(make_position(device))[b"payload"],
        b"trace": b"abc",
        b"error": b"an ingestion field that clashes",
    }
    a = _dead_letter(
        settings, sync_redis, DeadLetter("1-1", original, "invalid_field", "speed: 'x' bad")
    )
    b = _dead_letter(
        settings,
        sync_redis,
        DeadLetter("1-2", {b"payload": b"{not json"}, "malformed_payload", "not JSON" * 20),
    )
    c = _dead_letter(settings, sync_redis, DeadLetter("1-3", {}, "trimmed", "gone upstream"))
    dlq = settings.dlq_stream_key

    listing = cli(settings, "dlq", "list", "--json").json()
    assert listing["length"] == 3
    assert [e["id"] for e in listing["entries"]] == [a, b, c]
    first = listing["entries"][0]
    assert first["device_id"] == device
    assert (first["error_kind"], first["source_id"]) == ("invalid_field", "1-1")
    assert first["failed_at"] == "2026-05-12T09:31:05.000Z"
    assert first["error"] == "speed: 'x' bad"
    assert listing["entries"][1]["device_id"] is None
    only = cli(settings, "dlq", "list", "--kind", "malformed_payload", "--json").json()
    assert [e["id"] for e in only["entries"]] == [b]
    human = cli(settings, "dlq", "list", "--limit", "2")
    assert human.code == 0
    assert a in human.stdout
    assert c not in human.stdout

    shown = cli(settings, "dlq", "show", a, "--json").json()
    assert shown["fields"]["orig:error"] == "an ingestion field that clashes"
    assert shown["fields"]["error"] == "speed: 'x' bad"
    assert shown["fields"]["trace"] == "abc"
    assert shown["payload"]["device_id"] == device
    pretty = cli(settings, "dlq", "show", a)
    assert f'  "device_id": "{device}"' in pretty.stdout
    assert "error_kind" in pretty.stdout
    assert "no entry 1-0" in _one_line_error(cli(settings, "dlq", "show", "1-0"), 1)

    dry = cli(settings, "dlq", "replay", a, "--dry-run", "--json").json()
    assert (dry["replayed"], dry["entries"][0]["new_id"]) == (1, None)
    assert sync_redis.xlen(dlq) == 3
    assert not sync_redis.exists(settings.telemetry_stream)

    done = cli(settings, "dlq", "replay", a, "--json").json()
    [entry] = done["entries"]
    assert entry["stream"] == settings.telemetry_stream
    [(new_id, fields)] = sync_redis.xrange(settings.telemetry_stream)
    assert new_id.decode() == entry["new_id"]
    assert fields == original
    assert [i.decode() for i, _ in sync_redis.xrange(dlq)] == [b, c]

    everything = cli(settings, "dlq", "replay", "--all", "--json")
    assert everything.code == exit_codes.FAILED  # c has nothing to replay
    report = everything.json()
    assert [e["id"] for e in report["entries"]] == [b]
    assert [s["id"] for s in report["skipped"]] == [c]
    assert sync_redis.xrange(settings.telemetry_stream)[-1][1] == {b"payload": b"{not json"}
    assert [i.decode() for i, _ in sync_redis.xrange(dlq)] == [c]

    missing = cli(settings, "dlq", "replay", "1-0", "--json")
    assert missing.code == exit_codes.FAILED
    assert missing.json()["missing"] == ["1-0"]


def test_dlq_purge_before(settings: config.Settings, sync_redis: redis.Redis) -> None:
    dlq = settings.dlq_stream_key
    for ms in (1000, 2000, 3000):
        sync_redis.xadd(dlq, {"payload": b"{}"}, id=f"{ms}-0")

    line = _one_line_error(cli(settings, "dlq", "purge", "--before", "3000-0"), 2)
    assert "--yes" in line

    dry = cli(settings, "dlq", "purge", "--before", "3000-0", "--dry-run", "--json").json()
    assert (dry["deleted"], dry["length"], dry["dry_run"]) == (2, 3, True)

    done = cli(settings, "dlq", "purge", "--before", "3000-0", "--yes", "--json").json()
    assert (done["deleted"], done["length"]) == (2, 1)
    assert [i for i, _ in sync_redis.xrange(dlq)] == [b"3000-0"]

    by_time = cli(settings, "dlq", "purge", "--before", "1970-01-01T00:00:03.001Z", "--yes")
    assert by_time.code == 0, by_time
    assert sync_redis.xlen(dlq) == 0


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (["dlq", "show", "nope"], "not a stream entry id"),
        (["dlq", "purge", "--before", "yesterday", "--yes"], "ISO-8601"),
        (["dlq", "purge", "--before", "2026-05-12T09:00:00", "--yes"], "offset"),
        (["dlq", "replay"], "--all"),
        (["dlq", "replay", "1-0", "--all"], "--all"),
        (["claim", "--from", "ghost"], "no consumer 'ghost'"),
        (["rehydrate", "bad id!"], "not a device id"),
        (["pending", "--limit", "0"], "--limit"),
        (["status", "--bogus"], "unrecognized arguments"),
    ],
)
def test_argument_errors_exit_2_with_one_line(
    settings: config.Settings, args: list[str], mentions: str
) -> None:
    assert mentions in _one_line_error(cli(settings, *args), exit_codes.CONFIG_ERROR)


@pytest.mark.parametrize("args", [["status"], ["dlq", "list", "--json"]])
def test_redis_down_has_its_own_exit_code(settings: config.Settings, args: list[str]) -> None:
    result = cli(settings, *args, REDIS_URL="redis://127.0.0.1:1/0")
    line = _one_line_error(result, exit_codes.UNAVAILABLE)
    assert line.startswith(f"processor {args[0]}")
    assert "redis unavailable at redis://127.0.0.1:1/0" in line


async def test_rehydrate_reaches_a_running_listener(
    bridge: None, settings: config.Settings
) -> None:
    await apply_migrations(settings.postgres_url, log=make_logger("warning"))
    device = f"R{uuid.uuid4().hex[:10]}"
    store = PositionStore(settings.postgres_url)
    try:
        await store.insert([make_position(device, second=5), make_position(device, second=7)])
    finally:
        await store.aclose()
    states = DeviceStates(10)
    states.observe(make_position(device, second=999), BASE_TIME)
    metrics = Metrics.create(settings.telemetry_stream)
    streams = RedisStreams(aioredis.Redis.from_url(settings.redis_url), settings.redis_url)
    listener = ControlListener(
        streams=streams,
        store=PositionStore(settings.postgres_url),
        channel=control_channel(settings.telemetry_stream),
        states=states,
        metrics=metrics,
        log=make_logger("warning"),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.run)

        proc = await trio.run_process(
            _argv("rehydrate", device, "--json"),
            env=_env(settings),
            cwd=REPO_ROOT,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        report = orjson.loads(proc.stdout)
        assert report["receivers"] == 1
        assert report["channel"] == f"{settings.telemetry_stream}:control"
        assert report["newest"]["ts"] == "2026-05-12T09:31:09.000Z"

        def reseeded() -> bool:
            state = states.get(device)
            return (
                state is not None
                and state.last_position is not None
                and state.last_position.ts == make_position(device, second=7).ts
            )

        await wait_for(reseeded, 10, what="listener reseeded the device")
        assert metrics.rehydrations._value.get() == 1
        nursery.cancel_scope.cancel()
    await streams.aclose()


async def test_dlq_replay_is_exactly_once_when_run_twice_on_the_same_page(
    bridge: None, settings: config.Settings, sync_redis: redis.Redis
) -> None:
    """Two runs that read the same page (two operators at once, or a rerun after a lost
    reply) re-publish each dead letter once: a second copy of a record that is still
    poison would come back as a second dead letter."""
    poison = DeadLetter("1-1", {b"payload": b"{not json"}, "malformed_payload", "not JSON")
    letter_id = _dead_letter(settings, sync_redis, poison)
    dlq = settings.dlq_stream_key
    streams = await RedisStreams.connect(settings.redis_url)
    try:
        ctx = Context(settings, streams=streams)
        page = await streams.range(dlq)
        first, second = replay._Outcome(), replay._Outcome()
        await replay._replay(ctx, streams, dlq, page, False, first)
        await replay._replay(ctx, streams, dlq, page, False, second)
        # In a cluster a script's keys must share a slot; one that cannot is skipped with
        # its reason, not sent (redis-py would report a "cluster down" error for it).
        elsewhere = attrs.evolve(settings, redis_cluster=True)
        other = next(
            f"{{t{n}}}:telemetry"
            for n in range(100)
            if key_slot(f"{{t{n}}}:telemetry".encode()) != key_slot(dlq.encode())
        )
        stray = {**page[0].fields, b"source_stream": other.encode()}
        skipped = replay._Outcome()
        await replay._replay(
            Context(elsewhere, streams=streams),
            streams,
            dlq,
            [RawEntry(letter_id, stray)],
            False,
            skipped,
        )
    finally:
        await streams.aclose()

    [(new_id, fields)] = sync_redis.xrange(settings.telemetry_stream)
    assert fields == {b"payload": b"{not json"}
    assert [e["new_id"] for e in first.replayed] == [new_id.decode()]
    assert (second.replayed, second.missing) == ([], [letter_id])
    assert sync_redis.xlen(dlq) == 0
    assert skipped.replayed == []
    [reason] = skipped.skipped
    assert "another cluster slot" in reason["reason"]


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["pending"],
        ["claim"],
        ["dlq", "list"],
        ["dlq", "show"],
        ["dlq", "replay"],
        ["dlq", "purge"],
        ["rehydrate"],
    ],
)
def test_every_operator_command_has_help_and_json(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        _parser().parse_args([*command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: processor {' '.join(command)}"), out
    assert "--json" in out
