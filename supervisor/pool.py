"""The worker pool: workers that take events from the queue and fan them out.

Each of the `pool_size` workers holds one event at a time. For an event it looks up the cached
configs of the event's channel, runs one copy trade per config concurrently through the
execution client, and then settles the event:

- `processed` when every copy trade reached a final answer (success, or rejected by the
  execution service, which a retry would not change); the dedup claim is marked done;
- `failed` when any copy trade ended in error or timeout after its retries; the claim is
  released so a redelivery can retry, which the idempotency keys make safe.

The worker hands the done mark or release to `Dedup.settle_later` and takes its next event at
once, so Redis round trips never hold a worker.

An event whose channel has no configs is processed with fan-out 0.

`drain` stops the pool: workers finish what is queued until the deadline, then the events
still queued or held are dropped and their claims released, so nothing stays unaccounted.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from supervisor.clock import Clock
from supervisor.config_cache import ConfigCache
from supervisor.dedup import Dedup, LogLimiter
from supervisor.events import Event
from supervisor.execution import ExecutionResult, Executor, run_fanout
from supervisor.metrics import Metrics
from supervisor.timings import TimingsBuffer, UnixTimeBase
from supervisor.work_queue import QueueClosed, WorkQueue

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class QueuedEvent:
    """An accepted event and its monotonic receipt and enqueue times."""

    event: Event
    received_s: float
    enqueued_s: float


class WorkerPool:
    """`pool_size` workers over one queue; see the module docstring for the event outcomes."""

    def __init__(
        self,
        *,
        pool_size: int,
        queue: WorkQueue[QueuedEvent],
        cache: ConfigCache,
        client: Executor,
        dedup: Dedup,
        metrics: Metrics,
        timings: TimingsBuffer,
        time_base: UnixTimeBase,
        clock: Clock,
    ) -> None:
        self.pool_size = pool_size
        self._queue = queue
        self._cache = cache
        self._client = client
        self._dedup = dedup
        self._metrics = metrics
        self._timings = timings
        self._time_base = time_base
        self._clock = clock
        self._tasks: list[asyncio.Task[None]] = []
        self._held: dict[int, QueuedEvent] = {}
        self._failure_log = LogLimiter(clock)
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def busy(self) -> int:
        """Number of workers holding an event."""
        return len(self._held)

    def start(self) -> None:
        """Start the workers; the service logs the pool size when it starts."""
        logger.debug("Starting %d workers", self.pool_size)
        for index in range(self.pool_size):
            task = asyncio.get_running_loop().create_task(self._work(index))
            self._tasks.append(task)

    async def _work(self, index: int) -> None:
        while True:
            try:
                item = await self._queue.get()
            except QueueClosed:
                return
            self._held[index] = item
            self._idle.clear()
            try:
                processed = await self._process(item)
            except asyncio.CancelledError:
                self.drop(item)
                raise
            finally:
                del self._held[index]
                if not self._held and self._queue.depth == 0:
                    self._idle.set()
            self._dedup.settle_later(item.event.event_id, done=processed)

    async def _process(self, item: QueuedEvent) -> bool:
        """Fan one event out and account for it; return True when it counts as processed."""
        event = item.event
        started_s = self._clock.monotonic()
        self._metrics.observe_lag(started_s - item.enqueued_s)

        configs = self._cache.configs_for(event.channel)
        try:
            results: list[ExecutionResult] | None = await run_fanout(
                self._client, event, tuple(configs)
            )
        except Exception:
            # Only a bug gets here; the event counts as failed and the worker keeps going.
            logger.exception("Fan-out of event %s raised; counting it as failed", event.event_id)
            results = None
        finished_s = self._clock.monotonic()

        processed = results is not None and all(
            r.outcome in ("success", "rejected") for r in results
        )
        self._record(item, results or [], processed, started_s, finished_s)
        if not processed:
            self._log_failure(event, results)
        return processed

    def _record(
        self,
        item: QueuedEvent,
        results: list[ExecutionResult],
        processed: bool,
        started_s: float,
        finished_s: float,
    ) -> None:
        unix = self._time_base.unix
        for result in results:
            self._metrics.count_execution(result.outcome, result.attempts)
            self._timings.add_execution(
                event_id=item.event.event_id,
                config_id=result.config_id,
                started_unix_s=unix(result.started_s),
                duration_s=result.duration_s,
                outcome=result.outcome,
                attempts=result.attempts,
                status=result.status,
            )
        self._metrics.count_finished(
            processed, e2e_s=finished_s - item.received_s, lag_s=started_s - item.enqueued_s
        )
        self._timings.add_event(
            event_id=item.event.event_id,
            channel=item.event.channel,
            outcome="processed" if processed else "failed",
            received_unix_s=unix(item.received_s),
            enqueued_unix_s=unix(item.enqueued_s),
            started_unix_s=unix(started_s),
            finished_unix_s=unix(finished_s),
            fanout=len(results),
        )

    def _log_failure(self, event: Event, results: list[ExecutionResult] | None) -> None:
        suppressed = self._failure_log.allow()
        if suppressed is None:
            return
        failed = [r for r in results or [] if r.outcome in ("error", "timeout")]
        logger.warning(
            "Event %s failed: %d of %d copy trades ended in error or timeout; its claim is "
            "released for a redelivery (%d similar failures suppressed)",
            event.event_id,
            len(failed),
            len(results or []),
            suppressed,
        )

    def drop(self, item: QueuedEvent) -> None:
        """Count an in-flight event as dropped, record it and release its claim."""
        self._metrics.count_dropped_in_flight()
        self._timings.add_event(
            event_id=item.event.event_id,
            channel=item.event.channel,
            outcome="dropped",
            received_unix_s=self._time_base.unix(item.received_s),
            enqueued_unix_s=self._time_base.unix(item.enqueued_s),
            started_unix_s=None,
            finished_unix_s=None,
            fanout=0,
        )
        self.release_in_background(item.event.event_id)

    def release_in_background(self, event_id: str) -> None:
        """Release the dedup claim of an event that will not be processed, without waiting."""
        self._dedup.settle_later(event_id, done=False)

    async def wait_idle(self) -> None:
        """Return once the queue is empty and no worker holds an event."""
        await self._idle.wait()

    def notify_enqueued(self) -> None:
        """Mark the pool as not idle; ingest calls this after each accepted event."""
        self._idle.clear()

    async def drain(self, timeout_s: float) -> int:
        """Finish queued events until `timeout_s` passes, then drop the rest; return drops."""
        self._queue.close()
        dropped = 0
        if self._tasks:
            workers_done = asyncio.ensure_future(asyncio.wait(self._tasks))
            deadline = asyncio.ensure_future(self._clock.sleep(timeout_s))
            await asyncio.wait({workers_done, deadline}, return_when=asyncio.FIRST_COMPLETED)
            deadline.cancel()
            if not workers_done.done():
                for item in self._queue.drain_nowait():
                    self.drop(item)
                    dropped += 1
                dropped += len(self._held)
                for task in self._tasks:
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
            workers_done.cancel()
        for item in self._queue.drain_nowait():
            self.drop(item)
            dropped += 1
        return dropped
