"""Tests of the execution stub: HTTP contract, key counting, capacity rule, errors, options."""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest
from aiohttp import ClientSession
from conftest import free_port
from helpers_http import ServerClient

from supervisor.latency import (
    ExponentialLatency,
    FixedLatency,
    LatencyDistribution,
    LatencyError,
    LatencySummary,
    LognormalLatency,
    build_latency,
)
from supervisor.stub import (
    ExecutionStub,
    StubOptionError,
    StubOptions,
    add_arguments,
    build_options,
    build_server,
)


class GatedSleep:
    """A sleep function that records each delay and blocks until the test opens the gate."""

    def __init__(self) -> None:
        self.delays_s: list[float] = []
        self._gate = asyncio.Event()
        self._entered = asyncio.Condition()

    async def __call__(self, delay_s: float) -> None:
        async with self._entered:
            self.delays_s.append(delay_s)
            self._entered.notify_all()
        await self._gate.wait()

    async def wait_for_sleepers(self, count: int) -> None:
        async with self._entered:
            await self._entered.wait_for(lambda: len(self.delays_s) >= count)

    def open(self) -> None:
        self._gate.set()


def make_options(**overrides: Any) -> StubOptions:
    values: dict[str, Any] = {"latency": FixedLatency(0.0), "seed": 7}
    values.update(overrides)
    return StubOptions(**values)


def trade_body(key: str) -> dict[str, object]:
    event_id, config_id = key.split(":")
    return {
        "idempotency_key": key, "event_id": event_id, "config_id": config_id, "user_id": "u-1",
        "channel": "alpha", "symbol": "BTCUSDT", "side": "buy", "quantity": 0.5, "price": 64000.0,
    }


@pytest.fixture
async def client_for() -> AsyncIterator[Callable[[ExecutionStub], Any]]:
    clients: list[ServerClient] = []

    async def start(stub: ExecutionStub) -> ServerClient:
        client = await ServerClient(build_server(stub)).start()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


async def post_execute(client: ServerClient, key: str) -> int:
    response = await client.post("/execute", json=trade_body(key), headers={"Idempotency-Key": key})
    await response.read()
    return response.status


async def test_execute_answers_filled(client_for: Any) -> None:
    client = await client_for(ExecutionStub(make_options()))

    response = await client.post(
        "/execute", json=trade_body("evt-1:cfg_a"), headers={"Idempotency-Key": "evt-1:cfg_a"}
    )

    assert response.status == 200
    assert await response.json() == {"status": "filled"}


async def test_keys_count_duplicates(client_for: Any) -> None:
    stub = ExecutionStub(make_options())
    client = await client_for(stub)

    for key in ("e1:c1", "e1:c2", "e1:c1", "e2:c1", "e1:c1", "e2:c1"):
        assert await post_execute(client, key) == 200
    stats = await (await client.get("/stats")).json()
    keys = await (await client.get("/keys")).json()

    assert keys == {"counts": {"e1:c1": 3, "e1:c2": 1, "e2:c1": 2}}
    assert stats["executions_total"] == 6
    assert stats["unique_keys"] == 3
    assert stats["duplicate_keys"] == 2
    assert stats["in_flight"] == 0
    assert stats["max_in_flight"] == 1
    assert stats["latency"]["count"] == 6
    assert stats["settings"]["seed"] == 7
    assert stats["cpu_seconds"] > 0.0


async def test_errors_are_not_executions(client_for: Any) -> None:
    stub = ExecutionStub(make_options(error_rate=1.0))
    client = await client_for(stub)

    first = await post_execute(client, "e1:c1")
    second = await post_execute(client, "e1:c1")
    stats = await (await client.get("/stats")).json()

    assert (first, second) == (500, 500)
    assert stats["errors_500"] == 2
    assert stats["executions_total"] == 0
    assert stats["duplicate_keys"] == 0
    assert (await (await client.get("/keys")).json()) == {"counts": {}}


@pytest.mark.parametrize(
    ("headers", "body", "reason_part"),
    [
        ({}, b'{"idempotency_key": "e1:c1"}', "missing Idempotency-Key"),
        ({"Idempotency-Key": "e1:c1"}, b"not json", "not valid JSON"),
        ({"Idempotency-Key": "e1:c1"}, b"[1, 2]", "not a JSON object"),
        ({"Idempotency-Key": "e1:c1"}, b'{"idempotency_key": "e1:c2"}', "differs"),
    ],
)
async def test_execute_rejects_bad_request(
    client_for: Any, headers: dict[str, str], body: bytes, reason_part: str
) -> None:
    stub = ExecutionStub(make_options())
    client = await client_for(stub)

    response = await client.post("/execute", data=body, headers=headers)
    answer = await response.json()

    assert response.status == 400
    assert reason_part in answer["reason"]
    assert stub.bad_requests == 1
    assert stub.executions_total == 0


async def test_rejects_beyond_max_concurrency(client_for: Any) -> None:
    sleep = GatedSleep()
    stub = ExecutionStub(make_options(latency=FixedLatency(10.0), capacity=1, max_concurrency=2),
                         sleep=sleep)
    client = await client_for(stub)

    held = [asyncio.create_task(post_execute(client, f"e{i}:c1")) for i in range(2)]
    await sleep.wait_for_sleepers(2)
    rejected = await post_execute(client, "e3:c1")
    in_flight_while_held = stub.in_flight
    sleep.open()
    held_statuses = await asyncio.gather(*held)
    after_release = await post_execute(client, "e4:c1")

    assert rejected == 429
    assert in_flight_while_held == 2
    assert held_statuses == [200, 200]
    assert after_release == 200
    assert stub.rejected_429 == 1
    assert stub.max_in_flight == 2
    assert stub.in_flight == 0
    assert "e3:c1" not in stub.counts


async def test_latency_scales_past_capacity() -> None:
    sleep = GatedSleep()
    stub = ExecutionStub(make_options(latency=FixedLatency(10.0), capacity=2, max_concurrency=8),
                         sleep=sleep)

    calls = [asyncio.create_task(stub.execute(f"e{i}:c1")) for i in range(5)]
    await sleep.wait_for_sleepers(5)
    overlapping = stub.in_flight
    sleep.open()
    statuses = await asyncio.gather(*calls)

    # n = 1..5 with C = 2: delay = 10 ms * max(1, n / 2).
    assert sleep.delays_s == pytest.approx([0.010, 0.010, 0.015, 0.020, 0.025])
    assert overlapping == 5
    assert statuses == [200] * 5


async def test_unlimited_capacity_never_scales() -> None:
    sleep = GatedSleep()
    stub = ExecutionStub(make_options(latency=FixedLatency(4.0)), sleep=sleep)

    calls = [asyncio.create_task(stub.execute(f"e{i}:c1")) for i in range(20)]
    await sleep.wait_for_sleepers(20)
    sleep.open()
    statuses = await asyncio.gather(*calls)

    assert sleep.delays_s == pytest.approx([0.004] * 20)
    assert statuses == [200] * 20
    assert stub.rejected_429 == 0


async def test_zero_latency_never_sleeps() -> None:
    sleep = GatedSleep()
    stub = ExecutionStub(make_options(latency=FixedLatency(0.0), capacity=1, max_concurrency=0),
                         sleep=sleep)

    statuses = [await stub.execute(f"e{i}:c1") for i in range(50)]

    assert statuses == [200] * 50
    assert sleep.delays_s == []


async def test_error_rate_within_binomial_bound() -> None:
    calls = 4000
    error_rate = 0.2
    stub = ExecutionStub(make_options(error_rate=error_rate, seed=12345))

    statuses = [await stub.execute(f"e{i}:c1") for i in range(calls)]

    errors = statuses.count(500)
    expected = calls * error_rate
    bound = 5.0 * math.sqrt(calls * error_rate * (1.0 - error_rate))
    assert abs(errors - expected) < bound
    assert statuses.count(200) == calls - errors
    assert stub.errors_500 == errors
    assert stub.executions_total == calls - errors


async def test_same_seed_same_outcomes() -> None:
    first = ExecutionStub(make_options(error_rate=0.5, seed=99))
    second = ExecutionStub(make_options(error_rate=0.5, seed=99))

    first_statuses = [await first.execute(f"e{i}:c1") for i in range(200)]
    second_statuses = [await second.execute(f"e{i}:c1") for i in range(200)]

    assert first_statuses == second_statuses
    assert 0 < first_statuses.count(500) < 200


async def test_reset_clears_counters(client_for: Any) -> None:
    stub = ExecutionStub(make_options())
    client = await client_for(stub)
    for key in ("e1:c1", "e1:c1", "e2:c1"):
        await post_execute(client, key)

    response = await client.post("/reset")
    stats = await (await client.get("/stats")).json()
    keys = await (await client.get("/keys")).json()

    assert response.status == 200
    assert stats["executions_total"] == 0
    assert stats["unique_keys"] == 0
    assert stats["duplicate_keys"] == 0
    assert stats["max_in_flight"] == 0
    assert stats["latency"]["count"] == 0
    assert keys == {"counts": {}}
    assert await post_execute(client, "e1:c1") == 200
    assert stub.duplicate_keys == 0


async def test_healthz_answers_ok(client_for: Any) -> None:
    client = await client_for(ExecutionStub(make_options()))

    response = await client.get("/healthz")

    assert response.status == 200
    assert await response.json() == {"status": "ok"}


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_options_defaults() -> None:
    options = build_options(parse("--capacity", "5", "--seed", "3"))

    assert options.max_concurrency == 10
    assert options.latency == FixedLatency(0.0)
    assert options.error_rate == 0.0
    assert options.seed == 3
    assert options.port == 8090


def test_options_lognormal() -> None:
    options = build_options(
        parse("--latency", "lognormal", "--latency-median-ms", "4", "--latency-sigma", "0.8")
    )

    assert options.latency == LognormalLatency(4.0, 0.8)
    assert isinstance(options.seed, int)


@pytest.mark.parametrize(
    ("argv", "message_part"),
    [
        (["--latency-ms", "-1"], "-1.0 ms is invalid"),
        (["--latency", "exponential", "--latency-ms", "nan"], "is invalid"),
        (["--error-rate", "1.5"], "--error-rate 1.5 is invalid"),
        (["--error-rate", "-0.1"], "--error-rate -0.1 is invalid"),
        (["--capacity", "-2"], "--capacity -2 is invalid"),
        (["--max-concurrency", "-1"], "--max-concurrency -1 is invalid"),
        (["--capacity", "4", "--max-concurrency", "3"], "below --capacity 4"),
        (["--port", "70000"], "--port 70000 is invalid"),
        (["--latency", "lognormal"], "needs a median"),
        (["--latency", "lognormal", "--latency-median-ms", "0"], "must be a positive"),
        (["--latency", "lognormal", "--latency-median-ms", "2", "--latency-sigma", "-1"],
         "sigma -1.0 is invalid"),
        (["--latency", "lognormal", "--latency-ms", "2"], "not a fixed or mean latency"),
        (["--latency-median-ms", "2"], "only to the lognormal"),
    ],
)
def test_options_reject_invalid(argv: list[str], message_part: str) -> None:
    with pytest.raises(StubOptionError) as caught:
        build_options(parse(*argv))

    assert message_part in str(caught.value)


def test_build_latency_unknown_kind() -> None:
    with pytest.raises(LatencyError, match="'uniform' is unknown"):
        build_latency("uniform")


def test_distributions_match_their_means() -> None:
    rng = random.Random(5)
    generator = np.random.default_rng(5)
    cases: list[LatencyDistribution] = [
        ExponentialLatency(3.0), LognormalLatency(2.0, 0.5), FixedLatency(1.5)
    ]

    for distribution in cases:
        scalar_mean_ms = sum(distribution.sample_ms(rng) for _ in range(20_000)) / 20_000
        bulk_mean_ms = float(distribution.sample_many_ms(generator, 20_000).mean())

        assert scalar_mean_ms == pytest.approx(distribution.mean_ms, rel=0.05)
        assert bulk_mean_ms == pytest.approx(distribution.mean_ms, rel=0.05)


def test_latency_summary_percentiles() -> None:
    summary = LatencySummary(window_size=100)
    for value_ms in range(1, 201):
        summary.record_s(value_ms / 1000.0)

    snapshot = summary.snapshot_ms()

    assert snapshot["count"] == 200
    assert snapshot["mean_ms"] == pytest.approx(100.5)
    assert snapshot["max_ms"] == pytest.approx(200.0)
    assert snapshot["percentile_window"] == 100
    assert snapshot["p50_ms"] == pytest.approx(150.5)


async def read_until(stream: asyncio.StreamReader, marker: str, timeout_s: float) -> str:
    async def scan() -> str:
        while True:
            line = (await stream.readline()).decode()
            if not line:
                raise AssertionError(f"stub exited before logging {marker!r}")
            if marker in line:
                return line

    return await asyncio.wait_for(scan(), timeout_s)


async def test_stub_process_serves_and_stops() -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "supervisor.stub", "--port", str(port), "--seed", "1",
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        started_line = await read_until(process.stderr, "listening", timeout_s=20.0)
        async with ClientSession() as session:
            response = await session.post(
                f"http://127.0.0.1:{port}/execute",
                json=trade_body("e1:c1"), headers={"Idempotency-Key": "e1:c1"},
            )
            status = response.status
            stats = await (await session.get(f"http://127.0.0.1:{port}/stats")).json()
        process.terminate()
        stopped_line = await read_until(process.stderr, "stopped", timeout_s=10.0)
        exit_code = await asyncio.wait_for(process.wait(), 10.0)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert f"127.0.0.1:{port}" in started_line
    assert '"seed": 1' in started_line
    assert status == 200
    assert stats["executions_total"] == 1
    assert "after 1 executions" in stopped_line
    assert exit_code == 0


async def test_stub_process_rejects_bad_option() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "supervisor.stub", "--error-rate", "2",
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 20.0)

    assert process.returncode == 2
    assert b"--error-rate 2.0 is invalid" in stderr


def test_cli_routes_execution_stub() -> None:
    from supervisor import cli, stub

    args = cli.build_parser().parse_args(["execution-stub", "--capacity", "3", "--seed", "4"])
    options = build_options(args)

    assert args.module is stub
    assert options.capacity == 3
    assert options.max_concurrency == 6
