"""Shard keys in the configuration, and the device -> shard function ingestion must use."""

from __future__ import annotations

import zlib

import pytest

from processor import config
from processor.core.sharding import shard_for, shard_index


def test_one_stream_is_still_one_stream() -> None:
    s = config.load({"REDIS_TELEMETRY_STREAM": "telemetry:teltonika"})
    assert s.telemetry_streams == ("telemetry:teltonika",)
    assert s.telemetry_stream == "telemetry:teltonika"
    assert s.dlq_keys == ("telemetry:teltonika:dlq",)
    assert not s.cluster


def test_comma_separated_and_range_forms() -> None:
    s = config.load({"REDIS_TELEMETRY_STREAM": " a , t:{0..2}"})
    assert s.telemetry_streams == ("a", "t:{0}", "t:{1}", "t:{2}")
    assert s.telemetry_stream == "a"
    assert s.dlq_keys == ("a:dlq", "t:{0}:dlq", "t:{1}:dlq", "t:{2}:dlq")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("a,a", "listed twice"),
        ("a,,b", "empty"),
        ("t:{3..1}", "empty or too long"),
        ("t:{0..1}:{0..1}", "more than one"),
    ],
)
def test_bad_stream_lists_are_refused(value: str, fragment: str) -> None:
    with pytest.raises(config.ConfigError) as info:
        config.load({"REDIS_TELEMETRY_STREAM": value})
    assert str(info.value).startswith(f"REDIS_TELEMETRY_STREAM={value!r}")
    assert fragment in str(info.value)


def test_cluster_by_url_scheme_or_variable() -> None:
    tagged = {"REDIS_TELEMETRY_STREAM": "t:{0..3}"}
    assert config.load({**tagged, "REDIS_URL": "redis+cluster://10.0.0.1:7000"}).cluster
    assert config.load({**tagged, "REDIS_URL": "redis://h:7000", "REDIS_CLUSTER": "true"}).cluster
    assert not config.load({**tagged, "REDIS_URL": "redis://10.0.0.1:7000"}).cluster


def test_one_dlq_for_several_cluster_shards_is_refused() -> None:
    env = {"REDIS_URL": "redis+cluster://h:7000", "REDIS_TELEMETRY_STREAM": "t:{0..1}"}
    assert config.load(env).dlq_keys == ("t:{0}:dlq", "t:{1}:dlq")
    with pytest.raises(config.ConfigError, match="DLQ_STREAM"):
        config.load({**env, "DLQ_STREAM": "dead"})
    # On one Redis a shared DLQ is fine (its script needs no common slot there).
    shared = config.load({"REDIS_TELEMETRY_STREAM": "t:{0..1}", "DLQ_STREAM": "dead"})
    assert shared.dlq_keys == ("dead",)


def test_cluster_keys_need_a_hash_tag() -> None:
    env = {"REDIS_URL": "redis+cluster://h:7000", "REDIS_TELEMETRY_STREAM": "t:0,t:1"}
    with pytest.raises(config.ConfigError, match="no hash tag"):
        config.load(env)
    # One tagged stream with a DLQ_STREAM in its slot is fine.
    tagged = {**env, "REDIS_TELEMETRY_STREAM": "{t}:in", "DLQ_STREAM": "{t}:dead"}
    assert config.load(tagged).dlq_keys == ("{t}:dead",)


def test_dlq_may_not_be_a_shard() -> None:
    with pytest.raises(config.ConfigError, match="DLQ_STREAM"):
        config.load({"REDIS_TELEMETRY_STREAM": "t:{0..1}", "DLQ_STREAM": "t:{1}"})


def test_shard_is_crc32_of_the_device_id_modulo_the_shard_count() -> None:
    streams = [f"telemetry:teltonika:{{{k}}}" for k in range(16)]
    device = "356307042441013"
    assert zlib.crc32(device.encode()) == 0x8D6388EE
    assert shard_index(device, 16) == 0x8D6388EE % 16 == 14
    assert shard_for(device, streams) == "telemetry:teltonika:{14}"
    assert shard_for(device, ["only"]) == "only"


def test_devices_spread_over_shards() -> None:
    counts = [0] * 16
    for n in range(16_000):
        counts[shard_index(f"3563070424{n:05d}", 16)] += 1
    assert min(counts) > 800
    assert max(counts) < 1200


def test_no_shards_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one shard"):
        shard_index("x", 0)
