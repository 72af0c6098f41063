"""Bounded queue and worker pool, driven by gated fake executions (no sleeping)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC

import pytest

from supervisor.clock import FakeClock
from supervisor.config_cache import CachedConfig, ConfigCache, ConfigRow
from supervisor.dedup import MemoryDedup
from supervisor.events import Event
from supervisor.execution import ExecutionResult
from supervisor.metrics import ExecutionOutcome, Metrics
from supervisor.pool import QueuedEvent, WorkerPool
from supervisor.timings import TimingsBuffer, UnixTimeBase
from supervisor.work_queue import QueueClosed, WorkQueue


def row(config_id: str, channel: str) -> ConfigRow:
    from datetime import datetime

    return ConfigRow(
        config_id, "u", channel, True, True, "multiplier", None, 1.0, None,
        datetime(2026, 1, 1, tzinfo=UTC),
    )  # fmt: skip


@dataclass
class GatedExecutor:
    """Each call waits for its own future; the test resolves it with an outcome."""

    calls: list[tuple[str, str]] = field(default_factory=list)
    gates: dict[str, asyncio.Future[ExecutionOutcome]] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def execute(self, event: Event, config: CachedConfig) -> ExecutionResult:
        key = f"{event.event_id}:{config.id}"
        self.calls.append((event.event_id, config.id))
        gate = asyncio.get_running_loop().create_future()
        self.gates[key] = gate
        self.arrived.set()
        outcome = await gate
        return ExecutionResult(config.id, outcome, 1, 200, 0.0, 0.0)

    async def wait_for_calls(self, count: int) -> None:
        while len(self.calls) < count:
            self.arrived.clear()
            await self.arrived.wait()

    def finish(self, key: str, outcome: ExecutionOutcome = "success") -> None:
        self.gates[key].set_result(outcome)


@dataclass
class Harness:
    clock: FakeClock
    queue: WorkQueue[QueuedEvent]
    pool: WorkerPool
    metrics: Metrics
    dedup: MemoryDedup
    executor: GatedExecutor
    timings: TimingsBuffer

    async def submit(self, event_id: str, channel: str = "alpha") -> None:
        (claimed,) = await self.dedup.claim_many([event_id])
        assert claimed
        now = self.clock.monotonic()
        event = Event(event_id, channel, "BTC", "buy", 1.0)
        assert self.queue.offer(QueuedEvent(event, now, now), now)
        self.metrics.count_enqueued()
        self.pool.notify_enqueued()


def make_harness(pool_size: int = 2, capacity: int = 10) -> Harness:
    clock = FakeClock()
    cache = ConfigCache()
    rows = [row("c1", "alpha"), row("c2", "alpha"), row("c3", "alpha"), row("b1", "beta")]
    cache.replace_all(rows)
    queue: WorkQueue[QueuedEvent] = WorkQueue(capacity, clock)
    metrics = Metrics(clock, pool_size=pool_size, queue_capacity=capacity)
    dedup = MemoryDedup(clock, instance_id="me", claim_ttl_ms=10_000, done_ttl_ms=60_000)
    executor = GatedExecutor()
    timings = TimingsBuffer(100)
    pool = WorkerPool(
        pool_size=pool_size, queue=queue, cache=cache, client=executor, dedup=dedup,
        metrics=metrics, timings=timings, time_base=UnixTimeBase(clock), clock=clock,
    )  # fmt: skip
    return Harness(clock, queue, pool, metrics, dedup, executor, timings)


def test_queue_refuses_at_capacity() -> None:
    clock = FakeClock()
    queue: WorkQueue[str] = WorkQueue(2, clock)

    assert queue.offer("a", 0.0)
    assert queue.offer("b", 0.0)
    assert not queue.offer("c", 0.0)
    assert queue.depth == 2


async def test_queue_is_fifo_and_tracks_oldest_age() -> None:
    clock = FakeClock()
    queue: WorkQueue[str] = WorkQueue(5, clock)
    queue.offer("first", clock.monotonic())
    await clock.advance(1.5)
    queue.offer("second", clock.monotonic())

    assert queue.oldest_age_s() == 1.5
    assert await queue.get() == "first"
    assert queue.oldest_age_s() == 0.0
    assert await queue.get() == "second"
    assert queue.oldest_age_s() == 0.0


async def test_closed_queue_wakes_waiting_getter() -> None:
    queue: WorkQueue[str] = WorkQueue(1, FakeClock())
    getter = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)

    queue.close()

    with pytest.raises(QueueClosed):
        await getter
    assert not queue.offer("late", 0.0)


async def test_fanout_calls_every_config_of_the_channel() -> None:
    harness = make_harness()
    harness.pool.start()

    await harness.submit("e1", "alpha")
    await harness.executor.wait_for_calls(3)
    assert harness.pool.busy == 1
    for config_id in ("c1", "c2", "c3"):
        harness.executor.finish(f"e1:{config_id}")
    await harness.pool.wait_idle()

    assert sorted(harness.executor.calls) == [("e1", "c1"), ("e1", "c2"), ("e1", "c3")]
    assert harness.metrics.outcomes["processed"] == 1
    assert harness.metrics.executions["success"] == 3
    assert harness.pool.busy == 0
    await harness.pool.drain(1.0)


async def test_channel_without_configs_is_processed_with_no_calls() -> None:
    harness = make_harness()
    harness.pool.start()

    await harness.submit("e1", "nobody-follows")
    await harness.pool.wait_idle()

    assert harness.executor.calls == []
    assert harness.metrics.outcomes["processed"] == 1
    assert harness.timings.page(0, 10)["events"][0]["fanout"] == 0
    await harness.pool.drain(1.0)


async def test_failed_trade_fails_event_and_releases_claim() -> None:
    harness = make_harness()
    harness.pool.start()

    await harness.submit("e1", "alpha")
    await harness.executor.wait_for_calls(3)
    harness.executor.finish("e1:c1")
    harness.executor.finish("e1:c2", "rejected")
    harness.executor.finish("e1:c3", "timeout")
    await harness.pool.wait_idle()
    await harness.pool.drain(1.0)

    assert harness.metrics.outcomes["failed"] == 1
    assert harness.metrics.executions == {"success": 1, "error": 0, "timeout": 1, "rejected": 1}
    assert await harness.dedup.claim_many(["e1"]) == [True]


async def test_rejected_trade_still_counts_event_processed() -> None:
    harness = make_harness()
    harness.pool.start()

    await harness.submit("e1", "beta")
    await harness.executor.wait_for_calls(1)
    harness.executor.finish("e1:b1", "rejected")
    await harness.pool.wait_idle()
    await harness.pool.drain(1.0)

    assert harness.metrics.outcomes["processed"] == 1
    assert await harness.dedup.claim_many(["e1"]) == [False]


async def test_pool_size_bounds_concurrent_events() -> None:
    harness = make_harness(pool_size=2)
    harness.pool.start()

    for event_id in ("e1", "e2", "e3"):
        await harness.submit(event_id, "beta")
    await harness.executor.wait_for_calls(2)

    assert harness.pool.busy == 2
    assert harness.queue.depth == 1
    assert harness.metrics.in_flight == 3
    for event_id in ("e1", "e2"):
        harness.executor.finish(f"{event_id}:b1")
    await harness.executor.wait_for_calls(3)
    harness.executor.finish("e3:b1")
    await harness.pool.wait_idle()
    await harness.pool.drain(1.0)
    assert harness.metrics.outcomes["processed"] == 3


async def test_drain_deadline_drops_held_and_queued_events() -> None:
    harness = make_harness(pool_size=1)
    harness.pool.start()
    for event_id in ("e1", "e2", "e3"):
        await harness.submit(event_id, "beta")
    await harness.executor.wait_for_calls(1)

    drain = asyncio.ensure_future(harness.pool.drain(5.0))
    await harness.clock.wait_for_sleepers(1)
    await harness.clock.advance(5.0)
    dropped = await drain

    assert dropped == 3
    events = harness.metrics.events_snapshot()
    assert events["dropped"] == 3
    assert events["in_flight"] == 0
    assert events["received"] == 3
    assert await harness.dedup.claim_many(["e1", "e2", "e3"]) == [True, True, True]
    outcomes = [r["outcome"] for r in harness.timings.page(0, 10)["events"]]
    assert outcomes == ["dropped", "dropped", "dropped"]


async def test_drain_finishes_queue_before_deadline() -> None:
    harness = make_harness(pool_size=1)
    harness.pool.start()
    await harness.submit("e1", "beta")
    await harness.submit("e2", "beta")
    await harness.executor.wait_for_calls(1)

    drain = asyncio.ensure_future(harness.pool.drain(5.0))
    harness.executor.finish("e1:b1")
    await harness.executor.wait_for_calls(2)
    harness.executor.finish("e2:b1")
    dropped = await drain

    assert dropped == 0
    assert harness.metrics.outcomes["processed"] == 2
    assert harness.metrics.in_flight == 0
