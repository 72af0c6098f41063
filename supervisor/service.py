"""`supervisor run`: one supervisor instance, from start to graceful stop.

Start: read and log the settings (secrets masked), build the components, serve HTTP at once
(so `/healthz` responds and events can queue), run the first full config refresh, then start
the worker pool and report ready. Until the first full refresh succeeds the workers stay
stopped, because an event fanned out over an empty cache would be marked processed with no
copy trades.

Stop, on SIGTERM or SIGINT: answer new events 503 (draining), let the workers finish the queue
for up to `SUPERVISOR_SHUTDOWN_DRAIN_MS`, drop and release what is left, stop the refresh loop
and the HTTP server, then log the final counts. Every received event ends in an outcome.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import random
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

from supervisor import __version__
from supervisor.clock import Clock, SystemClock
from supervisor.config_cache import ConfigCache
from supervisor.dedup import Dedup, MemoryDedup, RedisDedup
from supervisor.execution import ExecutionClient, build_pool
from supervisor.http_app import Runtime, RuntimeState, build_server
from supervisor.http_pool import HttpPool
from supervisor.http_server import HttpServer
from supervisor.metrics import Metrics
from supervisor.pool import QueuedEvent, WorkerPool
from supervisor.refresh import ConfigSourceError, RefreshLoop, build_refresh_loop
from supervisor.settings import Settings
from supervisor.sharding import ShardFilter
from supervisor.timings import TimingsBuffer, UnixTimeBase
from supervisor.work_queue import WorkQueue

logger = logging.getLogger(__name__)

# Collector thresholds. Nothing that the collector tracks outlives its event (timing records
# contain only strings and numbers), so collections are rare at any threshold. At 10,000 a
# young-generation collection paused the loop for 1 to 2 ms on the 2-core benchmark machine.
# CPython's defaults are (700, 10, 10).
GC_THRESHOLDS = (10_000, 10, 10)
# How long a thread may hold the GIL while another waits for it; CPython's default is 5 ms.
# The config refresh runs its query in a thread, and at 5 ms each switch stalled the event
# loop for that long.
GIL_SWITCH_INTERVAL_S = 0.001

READY_POLL_S = 0.05


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `supervisor run`."""
    parser.add_argument("--host", help="address to listen on (default: SUPERVISOR_HTTP_HOST)")
    parser.add_argument(
        "--port",
        type=int,
        help="TCP port to listen on, 0 for any free one (default: SUPERVISOR_HTTP_PORT)",
    )


def instance_id() -> str:
    """Return this process's id for dedup claims and `/stats`: `<hostname>-<pid>`."""
    return f"{socket.gethostname()}-{os.getpid()}"


def build_dedup(settings: Settings, clock: Clock, owner_id: str) -> Dedup:
    """Build the Redis dedup store when a Redis URL is set, else the in-process one."""
    if settings.redis_url:
        return RedisDedup.from_url(
            settings.redis_url,
            clock,
            instance_id=owner_id,
            key_prefix=settings.dedup_key_prefix,
            claim_ttl_ms=settings.dedup_claim_ttl_ms,
            done_ttl_ms=settings.dedup_ttl_ms,
        )
    logger.warning(
        "SUPERVISOR_REDIS_URL is not set: dedup is kept in this process and is not shared, "
        "so run only one instance"
    )
    return MemoryDedup(
        clock,
        instance_id=owner_id,
        claim_ttl_ms=settings.dedup_claim_ttl_ms,
        done_ttl_ms=settings.dedup_ttl_ms,
    )


def instance_info(settings: Settings, owner_id: str, started_at_unix_s: float) -> dict[str, Any]:
    """Return the fixed part of `/stats` `instance`."""
    return {
        "instance_id": owner_id,
        "version": __version__,
        "shard_index": settings.shard_index,
        "shard_count": settings.shard_count,
        "pool_size": settings.worker_pool_size,
        "queue_capacity": settings.queue_max_size,
        "config_refresh_ms": settings.config_refresh_ms,
        "config_full_refresh_ms": settings.config_full_refresh_ms,
        "target_latency_ms": settings.target_latency_ms,
        "dedup_backend": settings.dedup_backend,
        "execution_timeout_ms": settings.execution_timeout_ms,
        "execution_max_attempts": settings.execution_max_attempts,
        "started_at_unix_s": started_at_unix_s,
    }


@dataclass
class Service:
    """The components of one running instance and its lifecycle."""

    settings: Settings
    runtime: Runtime
    refresh: RefreshLoop
    http_pool: HttpPool
    server: HttpServer
    port: int | None = None
    _refresh_task: asyncio.Task[None] | None = None
    _ready_task: asyncio.Task[None] | None = None

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        refresh: RefreshLoop | None = None,
        cache: ConfigCache | None = None,
    ) -> Service:
        """Build every component from `settings`; tests may pass their own refresh loop."""
        clock = clock or SystemClock()
        owner_id = instance_id()
        time_base = UnixTimeBase(clock)
        metrics = Metrics(
            clock, pool_size=settings.worker_pool_size, queue_capacity=settings.queue_max_size
        )
        cache = cache or ConfigCache()
        refresh = refresh or build_refresh_loop(settings, cache, metrics, clock)
        dedup = build_dedup(settings, clock, owner_id)
        queue: WorkQueue[QueuedEvent] = WorkQueue(settings.queue_max_size, clock)
        http_pool = build_pool(settings.execution_url, settings.execution_max_connections)
        client = ExecutionClient(
            http_pool,
            clock,
            rng or random.Random(),
            timeout_ms=settings.execution_timeout_ms,
            max_attempts=settings.execution_max_attempts,
            backoff_ms=settings.execution_backoff_ms,
        )
        timings = TimingsBuffer(settings.timings_buffer_size)
        pool = WorkerPool(
            pool_size=settings.worker_pool_size,
            queue=queue,
            cache=cache,
            client=client,
            dedup=dedup,
            metrics=metrics,
            timings=timings,
            time_base=time_base,
            clock=clock,
        )
        metrics.queue_depth = lambda: queue.depth
        metrics.queue_oldest_age_s = queue.oldest_age_s
        metrics.workers_busy = lambda: pool.busy
        metrics.configs_cached = lambda: cache.size

        runtime = Runtime(
            settings=settings,
            clock=clock,
            metrics=metrics,
            shards=ShardFilter(settings.shard_index, settings.shard_count),
            dedup=dedup,
            queue=queue,
            pool=pool,
            timings=timings,
            time_base=time_base,
            instance=instance_info(settings, owner_id, time_base.start_unix_s),
            state=RuntimeState(config_ready=lambda: refresh.ready),
        )
        return cls(settings, runtime, refresh, http_pool, build_server(runtime))

    async def start(self, host: str, port: int) -> None:
        """Serve HTTP, then become ready in the background once configs are loaded."""
        logger.info("Worker pool size: %d", self.settings.worker_pool_size)
        self.port = await self.server.start(host, port)
        logger.info("Listening on http://%s:%d", host, self.port)
        self._ready_task = asyncio.get_running_loop().create_task(self._become_ready())

    async def _become_ready(self) -> None:
        try:
            await self.refresh.run_first_full()
        except ConfigSourceError as error:
            logger.error(
                "First full config refresh failed; not ready, retrying at each refresh tick: %s",
                error,
            )
        self._refresh_task = asyncio.get_running_loop().create_task(self.refresh.run_forever())
        while not self.refresh.ready:
            await self.runtime.clock.sleep(READY_POLL_S)
        self.runtime.pool.start()
        logger.info("Ready: %d configs cached", self.runtime.metrics.configs_cached())

    async def stop(self) -> None:
        """Drain and stop; see the module docstring for the order."""
        runtime = self.runtime
        runtime.state.draining = True
        drain_s = self.settings.shutdown_drain_ms / 1000
        logger.info(
            "Draining: %d events queued, %d held by workers, up to %.1f s",
            runtime.queue.depth, runtime.pool.busy, drain_s,
        )  # fmt: skip

        if self._ready_task is not None and not self._ready_task.done():
            self._ready_task.cancel()
        dropped = await runtime.pool.drain(drain_s)
        if dropped:
            logger.warning("Dropped %d unfinished events at shutdown and released their claims",
                           dropped)  # fmt: skip

        await self.refresh.stop()
        if self._refresh_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh_task
        await self.server.close()
        await self.http_pool.close()
        await runtime.dedup.close()
        _log_counts(runtime.metrics)


def _log_counts(metrics: Metrics) -> None:
    counts = metrics.events_snapshot()
    logger.info(
        "Stopped: received=%d processed=%d failed=%d dropped=%d duplicate=%d not_owned=%d "
        "rejected=%d in_flight=%d",
        counts["received"], counts["processed"], counts["failed"], counts["dropped"],
        counts["duplicate"], counts["not_owned"], counts["rejected"], counts["in_flight"],
    )  # fmt: skip


async def serve(settings: Settings, stop_requested: asyncio.Event | None = None) -> None:
    """Run one instance until SIGTERM or SIGINT (or `stop_requested`), then stop gracefully."""
    stop_requested = stop_requested or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _on_signal, signum, stop_requested)

    service = Service.build(settings)
    try:
        await service.start(settings.http_host, settings.http_port)
        # Everything built so far lives as long as the process: keep it out of the scans.
        gc.freeze()
    except OSError as error:
        await service.stop()
        raise ServiceStartError(
            f"cannot listen on {settings.http_host}:{settings.http_port} "
            f"({error.strerror or error}): set SUPERVISOR_HTTP_PORT (or --port) to a free port "
            "or stop the process that holds it"
        ) from error
    try:
        await stop_requested.wait()
    finally:
        await service.stop()


class ServiceStartError(RuntimeError):
    """The instance could not start serving; the message names the cause and the fix."""


def _on_signal(signum: int, stop_requested: asyncio.Event) -> None:
    logger.info("Received %s; stopping", signal.Signals(signum).name)
    stop_requested.set()


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(args: argparse.Namespace) -> int:
    """Run `supervisor run`; a bad setting raises `SettingsError` for the command line."""
    settings = Settings.from_env()
    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides["http_host"] = args.host
    if args.port is not None:
        overrides["http_port"] = args.port
    if overrides:
        settings = dataclasses.replace(settings, **overrides)

    logger.info("Starting supervisor %s with %r", __version__, settings)
    started_s = time.monotonic()
    # Modules and settings never die, so keep them out of the collector's scans; `serve`
    # freezes the service's own objects once it listens.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        try:
            runner.run(serve(settings))
        except ServiceStartError as error:
            print(f"supervisor: {error}", file=sys.stderr)
            return 1
    logger.info("Supervisor exited after %.1f s", time.monotonic() - started_s)
    return 0


if __name__ == "__main__":
    # `python -m supervisor.service` runs an instance without building the other commands'
    # parsers, the same as `supervisor run`.
    import sys

    from supervisor.settings import SettingsError

    _parser = argparse.ArgumentParser(prog="python -m supervisor.service", description=__doc__)
    add_arguments(_parser)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        sys.exit(main(_parser.parse_args()))
    except SettingsError as _error:
        print(f"supervisor: {_error}", file=sys.stderr)
        sys.exit(2)
