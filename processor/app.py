"""The nursery tree: where every component is built, wired and started, in order.

    root (deadline = signal + SHUTDOWN_BUDGET_S once shutdown begins)
    ├── signal watcher            SIGTERM/SIGINT -> shutdown.begin(); 2nd SIGINT -> exit now
    ├── http                      /metrics /healthz /readyz
    └── services                  cancelled once the pipeline has drained
        ├── group stats sampler   lag, pending, DLQ length
        ├── postgres probe        SELECT 1 on its own connection: readiness while idle
        ├── control listener      operator requests over pub/sub (rehydrate DEVICE)
        ├── plug-ins              race domain, live broadcast (processor.plugins)
        └── pipeline              exits on its own when the read scopes are cancelled
            ├── dead-letter router  <- dead letters from consumer, claimer and writer
            ├── acker               <- committed ids from writer
            ├── writer              <- decoded entries from consumer and claimer
            ├── consumer per shard  (read scope) XREADGROUP
            └── claimer per shard   (read scope) XAUTOCLAIM stuck entries

Channels run downstream only; each stage closes its send side when it ends, so the
``EndOfChannel`` cascade *is* the drain: consumer stops -> writer flushes -> acker acks.

With several stream shards (``REDIS_TELEMETRY_STREAM`` lists them) each shard gets its
own consumer and claimer, all feeding the one writer: a shard is one key, hence one
slot in a Redis Cluster, so one XREADGROUP per shard works on a cluster as on one Redis.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import attrs
import structlog
import trio

from processor import exit_codes, native
from processor.config import Settings
from processor.core.acker import Acker
from processor.core.backoff import Backoff
from processor.core.batcher import Batcher, SharedBatches
from processor.core.bridge import open_bridge
from processor.core.claimer import Claimer
from processor.core.consumer import Consumer, Decoder
from processor.core.control import ControlListener, control_channel
from processor.core.dead_letters import DeadLetterRouter
from processor.core.group_stats import GroupStatsSampler
from processor.core.health import Readiness
from processor.core.hot_state import DeviceStates
from processor.core.messages import DeadLetter
from processor.core.metrics import Metrics
from processor.core.migrate import apply_migrations
from processor.core.model import Entry
from processor.core.pg_io import PositionStore, PostgresUnavailable
from processor.core.pg_probe import PostgresProbe
from processor.core.read_pacing import ReadPacer
from processor.core.redis_io import RedisStreams, RedisUnavailable
from processor.core.retry import RedisRetry
from processor.core.shutdown import Shutdown
from processor.core.writer import Writer
from processor.http import serve as serve_http
from processor.panic import waiting_dumps, write_panic_dump
from processor.plugins import (
    Context,
    Plugin,
    PluginFactory,
    Reloadable,
    combined_enricher,
    default_factories,
)

Log = structlog.typing.FilteringBoundLogger
T = TypeVar("T")


@attrs.define
class App:
    """Everything the running daemon owns; kept on one object so a panic can dump it."""

    settings: Settings
    log: Log
    metrics: Metrics
    health: Readiness
    states: DeviceStates
    shutdown: Shutdown
    plugin_factories: Sequence[PluginFactory] = ()
    http_url: str | None = None
    plugins: list[Plugin] = attrs.field(factory=list)
    ready: trio.Event = attrs.field(factory=trio.Event)

    @classmethod
    def create(
        cls, settings: Settings, log: Log, plugin_factories: Sequence[PluginFactory] | None = None
    ) -> App:
        health = Readiness()
        components = ["postgres", "redis"] + (["consumer"] if settings.pipeline_enabled else [])
        for component in components:
            health.fail(component, "starting")
        return cls(
            settings=settings,
            log=log,
            metrics=Metrics.create(settings.telemetry_stream),
            health=health,
            states=DeviceStates(settings.device_state_max),
            shutdown=Shutdown(settings.shutdown_budget_s),
            plugin_factories=(
                default_factories(settings) if plugin_factories is None else plugin_factories
            ),
        )

    async def run(self) -> int:
        """Run until shutdown; the exit code says how it ended (see ``exit_codes``)."""
        self.log.info(
            "starting",
            stream=self.settings.telemetry_stream,
            shards=len(self.settings.telemetry_streams),
            cluster=self.settings.cluster,
            group=self.settings.consumer_group,
            consumer=self.settings.consumer_name,
            nice=os.nice(0),
            native=native.status(),
        )
        try:
            async with open_bridge():
                with trio.CancelScope() as root_scope:
                    self.shutdown.attach_root(root_scope)
                    async with trio.open_nursery() as root:
                        root.start_soon(self._watch_signals)
                        root.start_soon(self._count_panic_dumps)
                        self.http_url = await root.start(
                            serve_http,
                            self.settings.http_host,
                            self.settings.http_port,
                            self.metrics,
                            self.health,
                            self.shutdown,
                        )
                        self.log.info("http listening", url=self.http_url)
                        await self._run_services()
                        root.cancel_scope.cancel()
        except Exception as exc:
            return self._panic(exc)
        if self.shutdown.budget_exceeded:
            self.log.error(
                "shutdown budget exceeded; unfinished entries stay pending",
                budget_s=self.settings.shutdown_budget_s,
            )
            return exit_codes.SHUTDOWN_BUDGET_EXCEEDED
        self.log.info("stopped", reason=self.shutdown.reason)
        return exit_codes.OK

    async def _run_services(self) -> None:
        s = self.settings
        store = PositionStore(
            s.postgres_url, on_path=lambda path: self.metrics.write_paths.labels(path).inc()
        )
        streams: RedisStreams | None = None
        # Nothing has been read before the pipeline runs, so there is nothing to drain: a
        # signal while start-up waits for a dependency ends the wait (a read scope) rather
        # than running out the budget and reporting work left pending.
        with self.shutdown.read_scope():
            await self._until(store.connect, "postgres", PostgresUnavailable)
            self.log.info("postgres connected")
            streams = await self._until(
                lambda: RedisStreams.connect(s.redis_url, cluster=s.cluster),
                "redis",
                RedisUnavailable,
            )
            self.log.info("redis connected")
        if streams is None:
            await store.aclose()
            return
        try:
            with self.shutdown.read_scope():
                report = await self._until(
                    lambda: apply_migrations(s.postgres_url, log=self.log),
                    "postgres",
                    PostgresUnavailable,
                )
            if self.shutdown.requested.is_set():
                return
            self.log.info(
                "migrations applied", applied=list(report.applied), storage=report.storage_mode
            )
            retry = RedisRetry(self.health, self.metrics, self.log)
            async with trio.open_nursery() as services:
                await services.start(
                    GroupStatsSampler(
                        streams=streams,
                        dlqs={shard: s.dlq_for(shard) for shard in s.telemetry_streams},
                        group=s.consumer_group,
                        interval_s=s.lag_sample_interval_s,
                        metrics=self.metrics,
                        states=self.states,
                        log=self.log,
                    ).run
                )
                await services.start(
                    PostgresProbe(
                        url=s.postgres_url,
                        interval_s=s.lag_sample_interval_s,
                        health=self.health,
                        metrics=self.metrics,
                        log=self.log,
                    ).run
                )
                reload_hooks: list[Callable[[], None]] = []
                await services.start(
                    ControlListener(
                        streams=streams,
                        # Its own connection: a rehydration must not wait behind a batch.
                        store=PositionStore(s.postgres_url),
                        channel=control_channel(s.telemetry_stream),
                        states=self.states,
                        metrics=self.metrics,
                        log=self.log,
                        reload_hooks=reload_hooks,
                    ).run
                )
                context = Context(
                    settings=s,
                    log=self.log,
                    metrics=self.metrics,
                    states=self.states,
                    health=self.health,
                    shutdown=self.shutdown,
                    streams=streams,
                )
                plugins = self.plugins = [factory(context) for factory in self.plugin_factories]
                for plugin in plugins:
                    await services.start(plugin.run)
                    self.log.info("plugin started", plugin=plugin.name)
                    if isinstance(plugin, Reloadable):
                        reload_hooks.append(plugin.request_reload)
                if s.pipeline_enabled:
                    await self._run_pipeline(store, streams, retry, plugins)
                else:
                    # Broadcast only: the plug-ins are the work; they run until shutdown.
                    self.log.info("ready", http=self.http_url, pipeline=False)
                    self.ready.set()
                    await self.shutdown.requested.wait()
                services.cancel_scope.cancel()
        finally:
            await store.aclose()
            await streams.aclose()

    async def _run_pipeline(
        self,
        store: PositionStore,
        streams: RedisStreams,
        retry: RedisRetry,
        plugins: Sequence[Plugin],
    ) -> None:
        s = self.settings
        entries_send, entries_recv = trio.open_memory_channel[list[Entry]](s.channel_capacity)
        acks_send, acks_recv = trio.open_memory_channel[list[tuple[str, str]]](s.channel_capacity)
        dead_send, dead_recv = trio.open_memory_channel[list[DeadLetter]](s.channel_capacity)
        decoder = Decoder(
            future_tolerance_s=s.future_tolerance_s,
            metrics=self.metrics,
            max_deliveries=s.dlq_max_deliveries,
        )
        # The writers' shared batcher reads entries_recv; it closes after they have ended.
        async with entries_recv, trio.open_nursery() as pipeline:
            await pipeline.start(
                DeadLetterRouter(
                    streams=streams,
                    stream=s.telemetry_stream,
                    group=s.consumer_group,
                    consumer=s.consumer_name,
                    dlq=s.dlq_stream_key,
                    dlqs={shard: s.dlq_for(shard) for shard in s.telemetry_streams},
                    metrics=self.metrics,
                    retry=retry,
                    log=self.log,
                ).run,
                dead_recv,
            )
            await pipeline.start(
                Acker(
                    streams=streams,
                    stream=s.telemetry_stream,
                    group=s.consumer_group,
                    metrics=self.metrics,
                    retry=retry,
                    log=self.log,
                ).run,
                acks_recv,
            )
            # WRITERS batches in flight, each writer on a connection of its own (the first
            # one's is the store start-up connected); the batches' CommitOrder keeps what
            # follows their commits in the order they were formed (``commit_order``).
            batches = SharedBatches(Batcher(entries_recv, s.batch_max, s.batch_linger_ms / 1000))
            async with acks_send:
                for i in range(s.writers):
                    await pipeline.start(
                        Writer(
                            store=PositionStore(s.postgres_url, on_path=store.on_path)
                            if i
                            else store,
                            owns_store=i > 0,
                            states=self.states,
                            metrics=self.metrics,
                            health=self.health,
                            log=self.log,
                            enricher=combined_enricher(plugins),
                            observers=[o for p in plugins for o in p.observers],
                            order=batches.order,
                        ).run,
                        batches,
                        acks_send.clone(),
                        dead_send.clone(),
                    )
            # Each reader owns clones and closes them when it stops; the originals close
            # once all are started, so the writer's input ends when the last reader's does.
            async with entries_send, dead_send:
                for shard in s.telemetry_streams:
                    await self._start_consumer(
                        pipeline,
                        streams,
                        retry,
                        decoder,
                        shard,
                        entries_send.clone(),
                        dead_send.clone(),
                    )
                for shard in s.telemetry_streams:
                    await self._start_claimer(
                        pipeline,
                        streams,
                        retry,
                        decoder,
                        shard,
                        entries_send.clone(),
                        dead_send.clone(),
                    )
            self.log.info("ready", http=self.http_url)
            self.ready.set()

    async def _start_consumer(
        self,
        pipeline: trio.Nursery,
        streams: RedisStreams,
        retry: RedisRetry,
        decoder: Decoder,
        shard: str,
        entries_send: trio.MemorySendChannel[list[Entry]],
        dead_send: trio.MemorySendChannel[list[DeadLetter]],
    ) -> None:
        s = self.settings
        await pipeline.start(
            Consumer(
                streams=streams,
                stream=shard,
                group=s.consumer_group,
                name=s.consumer_name,
                read_count=s.read_count,
                block_ms=s.block_ms,
                decoder=decoder,
                metrics=self.metrics,
                health=self.health,
                shutdown=self.shutdown,
                log=self.log,
                retry=retry,
                pacer=ReadPacer(s.read_pace_ms / 1000),
                read_ahead=s.read_ahead,
            ).run,
            entries_send,
            dead_send,
        )

    async def _start_claimer(
        self,
        pipeline: trio.Nursery,
        streams: RedisStreams,
        retry: RedisRetry,
        decoder: Decoder,
        shard: str,
        entries_send: trio.MemorySendChannel[list[Entry]],
        dead_send: trio.MemorySendChannel[list[DeadLetter]],
    ) -> None:
        s = self.settings
        await pipeline.start(
            Claimer(
                streams=streams,
                stream=shard,
                group=s.consumer_group,
                consumer=s.consumer_name,
                threshold_ms=s.claim_threshold_ms,
                interval_s=s.claim_interval_ms / 1000,
                decoder=decoder,
                metrics=self.metrics,
                health=self.health,
                retry=retry,
                shutdown=self.shutdown,
                log=self.log,
            ).run,
            entries_send,
            dead_send,
        )

    async def _until(
        self, connect: Callable[[], Awaitable[T]], component: str, error: type[Exception]
    ) -> T:
        """Retry a connect until it works: a dependency starting after us is normal."""
        backoff = Backoff(cap_s=2.0)
        while True:
            try:
                result = await connect()
            except error as exc:
                self.health.fail(component, str(exc))
                self.log.warning(f"{component} unavailable at start", error=str(exc))
                await backoff.wait()
                continue
            self.health.ok(component)
            return result

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if self.shutdown.requested.is_set():
                    if signum == signal.SIGINT:
                        self.log.warning("second SIGINT: exiting now")
                        os._exit(exit_codes.INTERRUPTED)
                    continue
                self.log.info(
                    "shutdown requested", signal=name, budget_s=self.settings.shutdown_budget_s
                )
                self.shutdown.begin(f"{name} received")

    async def _count_panic_dumps(self) -> None:
        """``processor_panic_dumps``: at start (a restart after a crash finds its dump),
        then every minute, so it drops once an operator deleted what they read."""
        while True:
            self.metrics.panic_dumps.set(waiting_dumps(self.settings.panic_dump_dir))
            await trio.sleep(60)

    def _panic(self, exc: BaseException) -> int:
        self.metrics.panics.inc()
        path = None
        try:
            path = write_panic_dump(
                self.settings.panic_dump_dir, exc, self.settings, self.states, self.health
            )
        except OSError as dump_error:
            self.log.error("panic dump failed", error=str(dump_error))
        self.log.error(
            "panic: unexpected error, exiting",
            exc_info=exc,
            dump=str(path) if path else None,
            exit_code=exit_codes.PANIC,
        )
        return exit_codes.PANIC
