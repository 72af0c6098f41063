"""The HTTP app of one instance, with in-process dedup and gated fake executions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from helpers_http import ServerClient
from test_queue_pool import GatedExecutor, row

from supervisor.clock import FakeClock
from supervisor.config_cache import ConfigCache
from supervisor.dedup import Dedup, DedupUnavailable, MemoryDedup
from supervisor.http_app import Runtime, RuntimeState, build_server
from supervisor.metrics import Metrics
from supervisor.pool import QueuedEvent, WorkerPool
from supervisor.settings import Settings
from supervisor.sharding import ShardFilter, shard_for
from supervisor.timings import TimingsBuffer, UnixTimeBase
from supervisor.work_queue import WorkQueue


def event(event_id: str, channel: str = "alpha", **extra: Any) -> dict[str, Any]:
    return {"event_id": event_id, "channel": channel, "symbol": "BTC", "side": "buy",
            "quantity": 1.0, **extra}  # fmt: skip


class BrokenDedup:
    """A dedup store whose Redis is down: every operation raises."""

    backend = "redis"

    async def claim_many(self, event_ids: Sequence[str]) -> list[bool]:
        raise DedupUnavailable("connection refused")

    async def mark_done(self, event_id: str) -> None:
        raise DedupUnavailable("connection refused")

    async def release(self, event_id: str) -> None:
        raise DedupUnavailable("connection refused")

    def settle_later(self, event_id: str, *, done: bool) -> None:
        return None

    async def ping(self) -> bool:
        return False

    async def close(self) -> None:
        return None


@dataclass
class App:
    client: ServerClient
    runtime: Runtime
    executor: GatedExecutor
    ready: list[bool]

    def identity_holds(self) -> bool:
        events = self.runtime.metrics.events_snapshot()
        settled = sum(v for k, v in events.items() if k not in ("received", "in_flight"))
        return events["received"] == settled + events["in_flight"]


async def start_app(
    *, capacity: int = 10, dedup: Dedup | None = None, start_pool: bool = False,
    shard_count: int = 1, **settings: Any,
) -> tuple[ServerClient, Runtime, GatedExecutor, list[bool]]:  # fmt: skip
    clock = FakeClock()
    config = Settings(queue_max_size=capacity, worker_pool_size=1, shard_count=shard_count,
                      database_url="sqlite://", **settings)  # fmt: skip
    metrics = Metrics(clock, pool_size=1, queue_capacity=capacity)
    cache = ConfigCache()
    cache.replace_all([row("c1", "alpha")])
    queue: WorkQueue[QueuedEvent] = WorkQueue(capacity, clock)
    dedup = dedup or MemoryDedup(clock, instance_id="me", claim_ttl_ms=10_000, done_ttl_ms=60_000)
    executor = GatedExecutor()
    timings = TimingsBuffer(100)
    time_base = UnixTimeBase(clock)
    pool = WorkerPool(
        pool_size=1, queue=queue, cache=cache, client=executor, dedup=dedup, metrics=metrics,
        timings=timings, time_base=time_base, clock=clock,
    )  # fmt: skip
    metrics.queue_depth = lambda: queue.depth
    ready = [True]
    runtime = Runtime(
        settings=config, clock=clock, metrics=metrics, shards=ShardFilter(0, shard_count),
        dedup=dedup, queue=queue, pool=pool, timings=timings, time_base=time_base,
        instance={"instance_id": "test"}, state=RuntimeState(config_ready=lambda: ready[0]),
    )  # fmt: skip
    if start_pool:
        pool.start()
    client = await ServerClient(build_server(runtime)).start()
    return client, runtime, executor, ready


@pytest.fixture
async def app(request: pytest.FixtureRequest) -> AsyncIterator[App]:
    options = getattr(request, "param", {})
    client, runtime, executor, ready = await start_app(**options)
    yield App(client, runtime, executor, ready)
    for gate in executor.gates.values():
        if not gate.done():
            gate.set_result("success")
    await runtime.pool.drain(0.0)
    await client.close()


async def post(app: App, payload: Any, **kwargs: Any) -> tuple[int, Any]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    response = await app.client.post("/events", data=body, **kwargs)
    return response.status, await response.json()


async def test_event_is_accepted_then_duplicate(app: App) -> None:
    assert await post(app, event("e1")) == (202, {"status": "accepted"})
    assert await post(app, event("e1")) == (200, {"status": "duplicate"})

    events = app.runtime.metrics.events_snapshot()
    assert events["received"] == 2
    assert events["duplicate"] == 1
    assert events["in_flight"] == 1
    assert app.runtime.metrics.dedup == {"hit": 1, "miss": 1, "error": 0}
    assert app.identity_holds()


async def test_invalid_event_gets_400_naming_field(app: App) -> None:
    status, body = await post(app, event("e1", side="hold"))

    assert status == 400
    assert body["field"] == "side"
    assert app.runtime.metrics.outcomes["rejected"] == 1
    assert app.identity_holds()


async def test_invalid_json_gets_400(app: App) -> None:
    status, body = await post(app, b"{not json")

    assert status == 400
    assert body["field"] == "body"
    assert app.identity_holds()


@pytest.mark.parametrize("app", [{"capacity": 2}], indirect=True)
async def test_queue_full_drops_and_releases_claim(app: App) -> None:
    await post(app, event("e1"))
    await post(app, event("e2"))

    status, body = await post(app, event("e3"))
    await app.runtime.pool.drain(0.0)

    assert status == 503
    assert body["error"] == "queue full"
    assert app.runtime.metrics.outcomes["dropped"] == 3
    assert await app.runtime.dedup.claim_many(["e3"]) == [True]
    assert app.identity_holds()


@pytest.mark.parametrize("app", [{"shard_count": 2}], indirect=True)
async def test_channel_of_other_shard_is_not_owned(app: App) -> None:
    foreign = next(f"ch-{i}" for i in range(100) if shard_for(f"ch-{i}", 2) == 1)

    assert await post(app, event("e1", channel=foreign)) == (200, {"status": "not_owned"})
    assert app.runtime.metrics.dedup["miss"] == 0
    assert await app.runtime.dedup.claim_many(["e1"]) == [True]


async def test_batch_answers_per_event_in_order(app: App) -> None:
    batch = {"events": [event("b1"), event("b1"), {"event_id": "b2"}, event("b3")]}

    status, body = await post(app, batch)

    assert status == 202
    assert [r["status"] for r in body["results"]] == ["accepted", "duplicate", "rejected",
                                                      "accepted"]  # fmt: skip
    assert body["results"][2]["field"] == "channel"
    assert body["counts"] == {"accepted": 2, "duplicate": 1, "not_owned": 0, "rejected": 1,
                              "dropped": 0}  # fmt: skip
    assert app.identity_holds()


@pytest.mark.parametrize("app", [{"max_batch_events": 2}], indirect=True)
async def test_batch_over_limit_gets_413(app: App) -> None:
    status, body = await post(app, {"events": [event("a"), event("b"), event("c")]})

    assert status == 413
    assert "SUPERVISOR_MAX_BATCH_EVENTS" in body["error"]


@pytest.mark.parametrize("app", [{"max_body_bytes": 1024}], indirect=True)
async def test_body_over_limit_gets_413(app: App) -> None:
    status, _ = await post(app, event("e1", padding="x" * 2000))

    assert status == 413


@pytest.mark.parametrize("app", [{"ingest_token": "s3cret"}], indirect=True)
async def test_token_is_required_when_set(app: App) -> None:
    status, _ = await post(app, event("e1"))
    assert status == 401

    headers = {"Authorization": "Bearer s3cret"}
    assert await post(app, event("e1"), headers=headers) == (202, {"status": "accepted"})


@pytest.mark.parametrize("app", [{"ingest_token": "s3cret"}], indirect=True)
@pytest.mark.parametrize(
    ("authorization", "expected"),
    [("bearer s3cret", 202), ("BEARER s3cret", 202), ("Bearer wrong", 401),
     ("Basic s3cret", 401), ("Bearer", 401), ("s3cret", 401)],
)  # fmt: skip
async def test_token_scheme_in_any_case(app: App, authorization: str, expected: int) -> None:
    status, _ = await post(app, event("e1"), headers={"Authorization": authorization})
    assert status == expected
    assert app.identity_holds()


@pytest.mark.parametrize("app", [{"dedup": BrokenDedup()}], indirect=True)
async def test_dedup_down_fails_closed_with_retry_after(app: App) -> None:
    response = await app.client.post("/events", data=json.dumps(event("e1")))
    body = await response.json()

    assert response.status == 503
    assert "dedup unavailable" in body["error"]
    assert response.headers["Retry-After"] == "1"
    assert app.runtime.metrics.dedup["error"] == 1
    assert app.runtime.metrics.outcomes["dropped"] == 1
    readyz = await app.client.get("/readyz")
    assert readyz.status == 503
    assert "dedup" in (await readyz.json())["reason"]


async def test_draining_refuses_events(app: App) -> None:
    app.runtime.state.draining = True

    status, body = await post(app, event("e1"))

    assert status == 503
    assert body["error"].startswith("draining")
    assert (await app.client.get("/readyz")).status == 503
    assert app.identity_holds()


async def test_readyz_waits_for_config(app: App) -> None:
    app.ready[0] = False
    not_ready = await app.client.get("/readyz")
    app.ready[0] = True
    ready = await app.client.get("/readyz")

    assert not_ready.status == 503
    assert "config refresh" in (await not_ready.json())["reason"]
    assert ready.status == 200
    assert (await app.client.get("/healthz")).status == 200


@pytest.mark.parametrize("app", [{"start_pool": True}], indirect=True)
async def test_stats_timings_and_metrics_after_processing(app: App) -> None:
    await post(app, event("e1", emitted_at="2026-02-06T11:12:03Z"))
    await app.executor.wait_for_calls(1)
    app.executor.finish("e1:c1")
    await app.runtime.pool.wait_idle()

    stats = await (await app.client.get("/stats?window_s=30")).json()
    timings = await (await app.client.get("/timings?after=0&limit=10")).json()
    metrics_text = await (await app.client.get("/metrics")).text()

    assert stats["events"]["processed"] == 1
    assert stats["window"]["window_s"] == 30
    assert stats["instance"]["ready"] is True
    assert [r["event_id"] for r in timings["executions"]] == ["e1"]
    assert timings["events"][0]["outcome"] == "processed"
    assert timings["next"] == 2
    assert 'supervisor_events_total{outcome="processed"} 1.0' in metrics_text
    assert "supervisor_event_age_seconds_count 1.0" in metrics_text


async def test_stats_rejects_bad_window(app: App) -> None:
    response = await app.client.get("/stats?window_s=soon")

    assert response.status == 400


async def test_many_concurrent_posts_keep_identity(app: App) -> None:
    posts = [post(app, event(f"e{i % 15}")) for i in range(40)]

    statuses = [status for status, _ in await asyncio.gather(*posts)]

    assert statuses.count(202) == 10
    assert statuses.count(503) >= 5
    assert statuses.count(503) + statuses.count(200) == 30
    assert app.identity_holds()
