"""The processor's Redis connections: the C packer sends what redis-py's would, and
TCP and TLS connections ask for a reader that takes a large reply whole."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions as rexc
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection

from processor.core.redis_io import READER_LIMIT, tuned_client

arguments = st.one_of(
    st.text(),
    st.binary(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
)
# The commands the processor sends, one- and two-word, plus arbitrary arguments.
commands = st.sampled_from(
    ["XACK", "XADD", "XREADGROUP", "XINFO GROUPS", b"XCLAIM", b"XINFO STREAM"]
)


def _connections(url: str) -> tuple[Any, Connection]:
    client = tuned_client(aioredis.Redis.from_url(url))
    pool = client.connection_pool
    return pool.connection_class(**pool.connection_kwargs), Connection()


@given(commands, st.lists(arguments, max_size=30))
def test_the_same_bytes_as_redis_py(command: str | bytes, args: list[Any]) -> None:
    packed, reference = _connections("redis://127.0.0.1:6379/0")
    assert b"".join(packed.pack_command(command, *args)) == b"".join(
        reference.pack_command(command, *args)
    )


@pytest.mark.parametrize("bad", [None, True, object()])
def test_what_redis_py_refuses_is_refused_the_same_way(bad: Any) -> None:
    packed, _ = _connections("redis://127.0.0.1:6379/0")
    with pytest.raises(rexc.DataError):
        packed.pack_command("SET", "k", bad)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://127.0.0.1:6379/0", "Connection"),
        ("rediss://127.0.0.1:6379/0", "SSLConnection"),
        ("unix:///tmp/redis.sock", "UnixDomainSocketConnection"),
    ],
)
def test_the_transport_the_url_chose_is_kept(url: str, kind: str) -> None:
    packed, _ = _connections(url)
    assert kind in [cls.__name__ for cls in type(packed).__mro__]
    assert hasattr(packed, "pack_command")
    again = tuned_client(tuned_client(aioredis.Redis.from_url(url)))
    assert again.connection_pool.connection_class.__mro__[1].__name__ == "_CPacking"


def test_the_c_packer_does_the_work(monkeypatch: pytest.MonkeyPatch) -> None:
    packed, _ = _connections("redis://127.0.0.1:6379/0")

    def python_packer(self: Connection, *args: Any) -> list[bytes]:
        raise AssertionError("redis-py's Python packer was used")

    monkeypatch.setattr(Connection, "pack_command", python_packer)
    ids = [f"1764662400000-{i}" for i in range(1000)]
    wire = b"".join(packed.pack_command("XACK", "telemetry:teltonika", "processor", *ids))
    assert wire.startswith(b"*1003\r\n$4\r\nXACK\r\n")
    assert wire.endswith(b"$17\r\n1764662400000-999\r\n")


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://127.0.0.1:6379/0"])
def test_tcp_and_tls_connections_ask_for_the_larger_reader(url: str) -> None:
    packed, _ = _connections(url)
    assert packed._connection_arguments()["limit"] == READER_LIMIT
