"""Configuration: environment variables -> one frozen, validated ``Settings``.

Every knob is declared once in ``VARIABLES`` (name, default, parser, help). The same table
renders ``processor run --help`` and ``.env.example`` (a test keeps the file in sync), so
documentation cannot drift from what the code reads.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs
from redis.crc import key_slot

LOG_LEVELS = ("debug", "info", "warning", "error")
TIMING_MODES = ("inline", "publish", "consume")


class ConfigError(Exception):
    """A variable has a value the service cannot run with. ``str()`` is the one-line report."""

    def __init__(self, variable: str, value: str, problem: str, expected: str) -> None:
        super().__init__(f"{variable}={value!r}: {problem}; expected {expected}")
        self.variable = variable


@attrs.frozen(kw_only=True)
class Settings:
    redis_url: str
    redis_cluster: bool
    postgres_url: str
    # Every shard key, in the order ingestion's shard function indexes them.
    telemetry_streams: tuple[str, ...]
    # The first (with one stream: the only) key; names the control channel and metrics.
    telemetry_stream: str
    consumer_group: str
    consumer_name: str
    read_count: int
    block_ms: int
    read_pace_ms: int
    read_ahead: int
    batch_max: int
    writers: int
    batch_linger_ms: int
    channel_capacity: int
    device_state_max: int
    future_tolerance_s: float
    shutdown_budget_s: float
    http_host: str
    http_port: int
    log_level: str
    lag_sample_interval_s: float
    claim_interval_ms: int
    claim_threshold_ms: int
    dlq_stream: str
    dlq_max_deliveries: int
    panic_dump_dir: str
    pipeline_enabled: bool
    domain_enabled: bool
    domain_refresh_s: float
    timing: str
    ws_enabled: bool
    ws_host: str
    ws_port: int
    directus_url: str
    ws_allowed_origins: tuple[str, ...]
    ws_cookie_name: str
    ws_auth_cache_s: float
    ws_ping_interval_s: float
    ws_ping_timeout_s: float
    ws_max_subscriptions: int
    ws_outbox_max: int
    ws_read_pace_ms: int
    ws_entries_refresh_s: float
    nice: int

    @property
    def dlq_stream_key(self) -> str:
        return self.dlq_for(self.telemetry_stream)

    def dlq_for(self, stream: str) -> str:
        """The DLQ of one shard: ``<shard>:dlq`` keeps its hash tag, so in a cluster the
        XADD to it and the XACK on the shard share a slot and fit in one script."""
        return self.dlq_stream or f"{stream}:dlq"

    @property
    def dlq_keys(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.dlq_for(s) for s in self.telemetry_streams))

    @property
    def times_here(self) -> bool:
        """This instance runs the race domain's timing worker (``TIMING``)."""
        if not self.domain_enabled:
            return False
        return self.timing == "consume" or (self.timing == "inline" and self.pipeline_enabled)

    @property
    def cluster(self) -> bool:
        """Talk to a Redis Cluster (``redis+cluster://`` URL or ``REDIS_CLUSTER=true``)."""
        return self.redis_cluster or urlsplit(self.redis_url).scheme.endswith("+cluster")


@attrs.frozen
class Variable:
    env: str
    field: str
    default: str | Callable[[], str]
    parse: Callable[[str], Any]
    expected: str
    help: str

    def default_text(self) -> str:
        return self.default() if callable(self.default) else self.default


def _int_range(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text.strip())
        if not lo <= value <= hi:
            raise ValueError(f"{value} is out of range")
        return value

    return parse


def _float_range(lo: float, hi: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text.strip())
        if not lo <= value <= hi:
            raise ValueError(f"{value} is out of range")
        return value

    return parse


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        parts = urlsplit(text.strip())
        if parts.scheme not in schemes or not (parts.hostname or parts.path):
            raise ValueError("not a URL with a supported scheme")
        return text.strip()

    return parse


def _name(text: str) -> str:
    value = text.strip()
    if not value or any(ch.isspace() for ch in value):
        raise ValueError("empty or contains white space")
    return value


_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def _stream_keys(text: str) -> tuple[str, ...]:
    """One key, several comma-separated, or a range: ``t:{0..3}`` is ``t:{0},...,t:{3}``."""
    keys: list[str] = []
    for part in text.split(","):
        name = _name(part)
        ranges = _RANGE.findall(name)
        if len(ranges) > 1:
            raise ValueError("more than one {a..b} range in a key")
        if not ranges:
            keys.append(name)
            continue
        lo, hi = int(ranges[0][0]), int(ranges[0][1])
        if not lo <= hi < lo + 4096:
            raise ValueError(f"range {lo}..{hi} is empty or too long")
        keys.extend(_RANGE.sub(f"{{{k}}}", name) for k in range(lo, hi + 1))
    if len(set(keys)) != len(keys):
        raise ValueError("a key is listed twice")
    return tuple(keys)


def _optional_name(text: str) -> str:
    return text.strip() and _name(text)


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError("unknown value")
        return value

    return parse


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError("not a boolean")


def _origins(text: str) -> tuple[str, ...]:
    origins = tuple(o.strip().rstrip("/") for o in text.split(",") if o.strip())
    for origin in origins:
        parts = urlsplit(origin)
        if parts.scheme not in {"http", "https"} or not parts.netloc or parts.path:
            raise ValueError(f"{origin!r} is not an origin")
    return origins


def _default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


VARIABLES: tuple[Variable, ...] = (
    Variable(
        "REDIS_URL",
        "redis_url",
        "redis://127.0.0.1:6379/0",
        _url("redis", "rediss", "unix", "redis+cluster", "rediss+cluster"),
        "a redis:// URL (redis+cluster:// for a Redis Cluster)",
        "Redis holding the stream; a redis+cluster:// URL names any node of a Redis Cluster.",
    ),
    Variable(
        "REDIS_CLUSTER",
        "redis_cluster",
        "false",
        _bool,
        "true or false",
        "Treat REDIS_URL as a Redis Cluster node (same as a redis+cluster:// URL).",
    ),
    Variable(
        "POSTGRES_URL",
        "postgres_url",
        "postgresql://127.0.0.1:5432/processor",
        _url("postgresql", "postgres"),
        "a postgresql:// URL",
        "PostgreSQL / TimescaleDB database for the positions table.",
    ),
    Variable(
        "REDIS_TELEMETRY_STREAM",
        "telemetry_streams",
        "telemetry:teltonika",
        _stream_keys,
        "a stream key without white space, or several comma-separated (k:{0..15}: a range)",
        "Stream(s) the ingestion service XADDs to; several are shards (see Scaling out).",
    ),
    Variable(
        "REDIS_CONSUMER_GROUP",
        "consumer_group",
        "processor",
        _name,
        "a group name without white space",
        "Consumer group shared by every processor instance.",
    ),
    Variable(
        "REDIS_CONSUMER_NAME",
        "consumer_name",
        _default_consumer_name,
        _name,
        "a consumer name without white space",
        "This instance's name in the group (default hostname-pid); unique per instance.",
    ),
    Variable(
        "READ_COUNT",
        "read_count",
        "1000",
        _int_range(1, 100_000),
        "an integer 1-100000",
        "Entries asked for per XREADGROUP call.",
    ),
    Variable(
        "READ_BLOCK_MS",
        "block_ms",
        "2000",
        _int_range(1, 60_000),
        "an integer 1-60000",
        "How long one XREADGROUP may block waiting for entries.",
    ),
    Variable(
        "READ_PACE_MS",
        "read_pace_ms",
        "10",
        _int_range(0, 1_000),
        "an integer 0-1000 (milliseconds)",
        "After a read that got fewer than READ_COUNT entries, the consumer waits this"
        " long before the next: a steady feed is read in tens of entries per call, not"
        " one per XADD. 0: read again at once.",
    ),
    Variable(
        "READ_AHEAD",
        "read_ahead",
        "2",
        _int_range(0, 8),
        "an integer 0-8",
        "While a backlog drains (reads come back full), this many more XREADGROUPs are"
        " queued on the consumer's connection, so Redis serves the next reads while one"
        " is decoded (not on a Redis Cluster). 0: one read at a time.",
    ),
    Variable(
        "BATCH_MAX",
        "batch_max",
        "2000",
        _int_range(1, 50_000),
        "an integer 1-50000",
        "Most records written to PostgreSQL in one round trip.",
    ),
    Variable(
        "WRITERS",
        "writers",
        "2",
        _int_range(1, 8),
        "an integer 1-8",
        "Batches written at once, each on its own PostgreSQL connection: one is formatted"
        " while another commits. Batches are still formed one at a time, full, and what"
        " follows a commit (hot state, timing, acks) runs in the order they were formed.",
    ),
    Variable(
        "BATCH_LINGER_MS",
        "batch_linger_ms",
        "50",
        _int_range(0, 60_000),
        "an integer 0-60000 (milliseconds)",
        "How long a partial batch waits for more records before it is written.",
    ),
    Variable(
        "CHANNEL_CAPACITY",
        "channel_capacity",
        "4",
        _int_range(1, 1_000),
        "an integer 1-1000",
        "Read batches buffered between consumer and writer; bounds memory and lag.",
    ),
    Variable(
        "DEVICE_STATE_MAX",
        "device_state_max",
        "100000",
        _int_range(1, 10_000_000),
        "an integer 1-10000000",
        "Devices kept in hot state (least recently seen evicted).",
    ),
    Variable(
        "FUTURE_TOLERANCE_S",
        "future_tolerance_s",
        "600",
        _float_range(0, 86_400 * 365),
        "seconds, 0-31536000",
        "How far ahead of this clock a fix time may be before the record is poison.",
    ),
    Variable(
        "SHUTDOWN_BUDGET_S",
        "shutdown_budget_s",
        "10",
        _float_range(0.1, 3_600),
        "seconds, 0.1-3600",
        "Time from SIGTERM to exit: stop reads, drain writes, ack; then cancel.",
    ),
    Variable(
        "HTTP_HOST",
        "http_host",
        "0.0.0.0",
        _name,
        "an address",
        "Address for /metrics, /healthz and /readyz.",
    ),
    Variable(
        "HTTP_PORT",
        "http_port",
        "8080",
        _int_range(0, 65_535),
        "a port 0-65535 (0 picks a free one)",
        "Port for /metrics, /healthz, /readyz.",
    ),
    Variable(
        "LOG_LEVEL",
        "log_level",
        "info",
        _choice(*LOG_LEVELS),
        "one of " + ", ".join(LOG_LEVELS),
        "Lowest level written (JSON lines on stdout).",
    ),
    Variable(
        "LAG_SAMPLE_INTERVAL_S",
        "lag_sample_interval_s",
        "5",
        _float_range(0.05, 3_600),
        "seconds, 0.05-3600",
        "How often group lag and pending count are sampled, and PostgreSQL probed for readiness.",
    ),
    Variable(
        "CLAIM_INTERVAL_MS",
        "claim_interval_ms",
        "10000",
        _int_range(50, 3_600_000),
        "an integer 50-3600000 (milliseconds)",
        "How often stuck entries are claimed.",
    ),
    Variable(
        "CLAIM_THRESHOLD_MS",
        "claim_threshold_ms",
        "30000",
        _int_range(100, 86_400_000),
        "an integer 100-86400000 (milliseconds)",
        "Idle time after which another consumer's pending entry is claimed.",
    ),
    Variable(
        "DLQ_STREAM",
        "dlq_stream",
        "",
        _optional_name,
        "a stream key (empty means <stream>:dlq, per shard)",
        "Dead-letter stream for poison records.",
    ),
    Variable(
        "DLQ_MAX_DELIVERIES",
        "dlq_max_deliveries",
        "5",
        _int_range(1, 1_000),
        "an integer 1-1000",
        "Deliveries after which an entry is dead-lettered.",
    ),
    Variable(
        "PIPELINE_ENABLED",
        "pipeline_enabled",
        "true",
        _bool,
        "true or false",
        "Run the write pipeline (consumer, writer, claimer, dead letters). false: a"
        " broadcast-only instance that serves WebSocket clients and writes nothing.",
    ),
    Variable(
        "DOMAIN_ENABLED",
        "domain_enabled",
        "true",
        _bool,
        "true or false",
        "Apply the race domain (IO mapping, geofence timing) to committed positions.",
    ),
    Variable(
        "DOMAIN_REFRESH_S",
        "domain_refresh_s",
        "30",
        _float_range(1, 86_400),
        "seconds, 1-86400",
        "How often the race definition is reloaded from the Directus tables.",
    ),
    Variable(
        "TIMING",
        "timing",
        "inline",
        _choice(*TIMING_MODES),
        "one of " + ", ".join(TIMING_MODES),
        "Where race timing runs. inline: each pipeline instance times the fixes it commits."
        " publish: a pipeline instance appends them to <stream>:committed and times nothing."
        " consume: an instance with PIPELINE_ENABLED=false times what publish instances"
        " append (a timing instance, on a core or host of its own).",
    ),
    Variable(
        "WS_ENABLED",
        "ws_enabled",
        "true",
        _bool,
        "true or false",
        "Serve the live WebSocket feed to the race-control web app.",
    ),
    Variable(
        "WS_HOST", "ws_host", "0.0.0.0", _name, "an address", "Address of the WebSocket server."
    ),
    Variable(
        "WS_PORT",
        "ws_port",
        "8081",
        _int_range(0, 65_535),
        "a port 0-65535 (0 picks a free one)",
        "Port of the WebSocket server (path /ws).",
    ),
    Variable(
        "DIRECTUS_URL",
        "directus_url",
        "http://127.0.0.1:8055",
        _url("http", "https"),
        "an http(s):// URL",
        "Directus, which authenticates WebSocket clients and authorizes events.",
    ),
    Variable(
        "WS_ALLOWED_ORIGINS",
        "ws_allowed_origins",
        "",
        _origins,
        "comma-separated origins like https://race.example.org (empty: same host only)",
        "Origins allowed to open the WebSocket (cross-site hijacking guard).",
    ),
    Variable(
        "WS_COOKIE_NAME",
        "ws_cookie_name",
        "directus_session_token",
        _name,
        "a cookie name",
        "Directus session cookie forwarded for authentication.",
    ),
    Variable(
        "WS_AUTH_CACHE_S",
        "ws_auth_cache_s",
        "30",
        _float_range(0, 3_600),
        "seconds, 0-3600",
        "How long a Directus auth answer is reused per credential.",
    ),
    Variable(
        "WS_PING_INTERVAL_S",
        "ws_ping_interval_s",
        "25",
        _float_range(0.05, 3_600),
        "seconds, 0.05-3600",
        "Interval of WebSocket pings to each client.",
    ),
    Variable(
        "WS_PING_TIMEOUT_S",
        "ws_ping_timeout_s",
        "10",
        _float_range(0.05, 3_600),
        "seconds, 0.05-3600",
        "A client that does not answer a ping within this is closed.",
    ),
    Variable(
        "WS_MAX_SUBSCRIPTIONS",
        "ws_max_subscriptions",
        "50",
        _int_range(1, 10_000),
        "an integer 1-10000",
        "Most events one connection may subscribe to.",
    ),
    Variable(
        "WS_OUTBOX_MAX",
        "ws_outbox_max",
        "256",
        _int_range(1, 100_000),
        "an integer 1-100000",
        "Frames queued per client before coalescing (then closing) a slow client;"
        " the stream tail lets client writers send once one holds half of it.",
    ),
    Variable(
        "WS_READ_PACE_MS",
        "ws_read_pace_ms",
        "30",
        _int_range(0, 1_000),
        "an integer 0-1000 (milliseconds)",
        "READ_PACE_MS for the broadcast tail: under a steady feed clients get their"
        " frames in bursts this far apart, each client's burst in one write (fewer,"
        " larger writes: less CPU per frame, up to this much more latency). 0: at once.",
    ),
    Variable(
        "WS_ENTRIES_REFRESH_S",
        "ws_entries_refresh_s",
        "30",
        _float_range(0.05, 86_400),
        "seconds, 0.05-86400",
        "How often the event -> devices map (entries, devices) is reloaded.",
    ),
    Variable(
        "NICE",
        "nice",
        "0",
        _int_range(0, 19),
        "an integer 0-19",
        "Added to the process's CPU niceness at start. Where a broadcast-only instance"
        " (PIPELINE_ENABLED=false) shares a host's CPUs with pipeline instances, 10 there"
        " lets the pipeline take the CPU first when both want it (OPERATIONS.md, Roles).",
    ),
    Variable(
        "PANIC_DUMP_DIR",
        "panic_dump_dir",
        "/tmp",
        _name,
        "a directory path",
        "Where a crash writes its state dump before exiting.",
    ),
)


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Parse and validate every variable; the first bad one raises ``ConfigError``."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for var in VARIABLES:
        raw = env.get(var.env)
        text = var.default_text() if raw is None else raw
        try:
            values[var.field] = var.parse(text)
        except ValueError as exc:
            raise ConfigError(var.env, text, str(exc) or "invalid", var.expected) from None
    settings = Settings(telemetry_stream=values["telemetry_streams"][0], **values)
    if set(settings.dlq_keys) & set(settings.telemetry_streams):
        raise ConfigError(
            "DLQ_STREAM",
            settings.dlq_stream,
            "is the telemetry stream itself",
            "a different stream key",
        )
    _check_roles(settings)
    if settings.cluster:
        _check_slots(settings)
    return settings


def _check_roles(settings: Settings) -> None:
    """PIPELINE_ENABLED, WS_ENABLED and TIMING must leave the instance something to do,
    and TIMING must fit the pipeline setting (only a pipeline commits fixes to publish)."""
    if settings.timing != "inline" and not settings.domain_enabled:
        raise ConfigError(
            "TIMING",
            settings.timing,
            "needs the race domain, but DOMAIN_ENABLED=false",
            "inline, or DOMAIN_ENABLED=true",
        )
    if settings.timing == "publish" and not settings.pipeline_enabled:
        raise ConfigError(
            "TIMING",
            "publish",
            "with PIPELINE_ENABLED=false there are no committed fixes to publish",
            "consume on an instance without the pipeline, or PIPELINE_ENABLED=true",
        )
    if settings.timing == "consume" and settings.pipeline_enabled:
        raise ConfigError(
            "TIMING",
            "consume",
            "is for an instance without the pipeline (PIPELINE_ENABLED=true here)",
            "inline or publish with the pipeline, or PIPELINE_ENABLED=false",
        )
    if not (settings.pipeline_enabled or settings.ws_enabled or settings.timing == "consume"):
        raise ConfigError(
            "PIPELINE_ENABLED",
            "false",
            "with WS_ENABLED=false too, the instance would do nothing",
            "true, WS_ENABLED=true for a broadcast-only instance,"
            " or TIMING=consume for a timing instance",
        )


def _check_slots(settings: Settings) -> None:
    """In a cluster a shard and its DLQ must share a slot: XADD dlq + XACK is one script."""
    for stream in settings.telemetry_streams:
        if key_slot(settings.dlq_for(stream).encode()) == key_slot(stream.encode()):
            continue
        if settings.dlq_stream:
            raise ConfigError(
                "DLQ_STREAM",
                settings.dlq_stream,
                f"is not in the hash slot of {stream!r} (a cluster needs one per shard)",
                "empty (each shard then has <shard>:dlq)",
            )
        raise ConfigError(
            "REDIS_TELEMETRY_STREAM",
            ",".join(settings.telemetry_streams),
            f"{stream!r} has no hash tag, so {stream + ':dlq'!r} is in another cluster slot",
            "keys with a hash tag in a cluster, like telemetry:teltonika:{0..15}",
        )


def describe() -> str:
    """The environment section of ``processor run --help``."""
    lines = ["environment variables:"]
    for var in VARIABLES:
        default = "hostname-pid" if callable(var.default) else (var.default or "(empty)")
        lines.append(f"  {var.env:<24} {var.help} [default: {default}]")
    return "\n".join(lines)


def env_example() -> str:
    """The text of ``.env.example``."""
    lines = ["# processor configuration; every variable is optional (defaults shown).", ""]
    for var in VARIABLES:
        lines.append(f"# {var.help} Expected: {var.expected}.")
        default = "" if callable(var.default) else var.default
        prefix = "# " if callable(var.default) else ""
        lines.append(f"{prefix}{var.env}={default}")
        lines.append("")
    return "\n".join(lines)
