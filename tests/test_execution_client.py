"""Execution client against a local aiohttp server that responds from a script."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from supervisor.clock import FakeClock
from supervisor.config_cache import CachedConfig
from supervisor.events import Event
from supervisor.execution import ExecutionClient, is_retryable_status
from supervisor.http_pool import HttpPool

EVENT = Event("evt-1", "alpha", "BTCUSDT", "buy", 2.0, price=100.0)
CONFIG = CachedConfig("cfg_1", "u-7", "alpha", "multiplier", None, 0.5, None)


class ScriptedService:
    """Responds to each call with the next status of `statuses`; `hang` never responds."""

    def __init__(self) -> None:
        self.statuses: list[int | str] = []
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.never: asyncio.Future[None] | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), json.loads(await request.read())))
        status = self.statuses.pop(0) if self.statuses else 200
        if status == "hang":
            self.never = asyncio.get_running_loop().create_future()
            await self.never
        return web.json_response({"status": "filled"}, status=int(status))


@pytest.fixture
async def service() -> AsyncIterator[tuple[ScriptedService, str]]:
    scripted = ScriptedService()
    app = web.Application()
    app.router.add_post("/execute", scripted.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield scripted, str(server.make_url("")).rstrip("/")
    await server.close()


@pytest.fixture
async def pools() -> AsyncIterator[list[HttpPool]]:
    """Connection pools that a test builds with `make_client`, closed afterwards."""
    built: list[HttpPool] = []
    yield built
    for pool in built:
        await pool.close()


def make_client(pools: list[HttpPool], url: str, timeout_ms: int = 2000) -> ExecutionClient:
    pool = HttpPool(url, max_connections=8)
    pools.append(pool)
    return ExecutionClient(
        pool, FakeClock(), random.Random(1), timeout_ms=timeout_ms, max_attempts=3, backoff_ms=0
    )


async def test_success_sends_idempotency_key_and_body(service, pools) -> None:
    scripted, url = service

    result = await make_client(pools, url).execute(EVENT, CONFIG)

    assert (result.outcome, result.attempts, result.status) == ("success", 1, 200)
    headers, body = scripted.requests[0]
    assert headers["Idempotency-Key"] == "evt-1:cfg_1"
    assert body["idempotency_key"] == "evt-1:cfg_1"
    assert body["config_id"] == "cfg_1"
    assert body["user_id"] == "u-7"
    assert body["quantity"] == 1.0
    assert body["price"] == 100.0


@pytest.mark.parametrize(
    ("statuses", "outcome", "attempts", "status"),
    [
        ([500, 200], "success", 2, 200),
        ([429, 503, 200], "success", 3, 200),
        ([500, 500, 500], "error", 3, 500),
        ([429, 429, 429], "error", 3, 429),
        ([400], "rejected", 1, 400),
        ([409, 200], "rejected", 1, 409),
        ([500, 404], "rejected", 2, 404),
    ],
)
async def test_retry_policy(service, pools, statuses, outcome, attempts, status) -> None:
    scripted, url = service
    scripted.statuses = list(statuses)

    result = await make_client(pools, url).execute(EVENT, CONFIG)

    assert result.outcome == outcome
    assert result.attempts == attempts
    assert result.status == status
    assert len(scripted.requests) == attempts


async def test_timeout_is_retried_then_reported(service, pools) -> None:
    scripted, url = service
    scripted.statuses = ["hang", "hang", "hang"]

    result = await make_client(pools, url, timeout_ms=50).execute(EVENT, CONFIG)

    assert result.outcome == "timeout"
    assert result.attempts == 3
    assert result.status is None


async def test_refused_connection_is_an_error(pools) -> None:
    from conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"

    result = await make_client(pools, url).execute(EVENT, CONFIG)

    assert result.outcome == "error"
    assert result.attempts == 3


def test_backoff_is_full_jitter_within_the_cap() -> None:
    client = ExecutionClient(
        HttpPool("http://127.0.0.1:1", max_connections=1), FakeClock(), random.Random(3),
        timeout_ms=100, max_attempts=5, backoff_ms=50,
    )  # fmt: skip

    for attempt, cap_s in ((1, 0.05), (2, 0.1), (3, 0.2)):
        waits = [client.backoff_s(attempt) for _ in range(200)]
        assert min(waits) >= 0.0
        assert max(waits) <= cap_s
        assert max(waits) > cap_s * 0.9


def test_retryable_statuses() -> None:
    assert [s for s in (200, 400, 404, 429, 500, 502, 503) if is_retryable_status(s)] == [
        429, 500, 502, 503,
    ]  # fmt: skip
