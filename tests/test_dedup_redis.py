"""Redis dedup against the real Redis: shared claims, done TTL, release, outage, recovery."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
from conftest import free_port

from supervisor import dedup as dedup_module
from supervisor.clock import SystemClock
from supervisor.dedup import DedupUnavailable, RedisDedup

pytestmark = pytest.mark.integration


def make_dedup(url: str, prefix: str, instance_id: str, done_ttl_ms: int = 60_000) -> RedisDedup:
    return RedisDedup.from_url(
        url, SystemClock(), instance_id=instance_id, key_prefix=prefix,
        claim_ttl_ms=30_000, done_ttl_ms=done_ttl_ms,
    )  # fmt: skip


@pytest.fixture
async def raw(redis_server_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server_url, decode_responses=True)
    yield client
    await client.aclose()


async def test_claim_is_shared_between_instances(redis_server_url, redis_key_prefix, raw) -> None:
    first = make_dedup(redis_server_url, redis_key_prefix, "a")
    second = make_dedup(redis_server_url, redis_key_prefix, "b")
    try:
        assert await first.claim_many(["e1", "e2"]) == [True, True]
        assert await second.claim_many(["e1", "e3", "e3"]) == [False, True, False]
        assert await raw.get(redis_key_prefix + "e1") == "a"
        assert 0 < await raw.pttl(redis_key_prefix + "e1") <= 30_000
    finally:
        await first.close()
        await second.close()


async def test_done_mark_sets_dedup_ttl(redis_server_url, redis_key_prefix, raw) -> None:
    dedup = make_dedup(redis_server_url, redis_key_prefix, "a", done_ttl_ms=120_000)
    try:
        await dedup.claim_many(["e1"])
        await dedup.mark_done("e1")

        assert await raw.get(redis_key_prefix + "e1") == "done"
        assert 30_000 < await raw.pttl(redis_key_prefix + "e1") <= 120_000
    finally:
        await dedup.close()


async def test_only_the_owner_marks_done_or_releases(
    redis_server_url, redis_key_prefix, raw
) -> None:
    owner = make_dedup(redis_server_url, redis_key_prefix, "a")
    other = make_dedup(redis_server_url, redis_key_prefix, "b")
    try:
        await owner.claim_many(["e1"])
        await other.mark_done("e1")
        await other.release("e1")
        assert await raw.get(redis_key_prefix + "e1") == "a"

        await owner.release("e1")
        assert await raw.get(redis_key_prefix + "e1") is None
        assert await other.claim_many(["e1"]) == [True]
    finally:
        await owner.close()
        await other.close()


async def test_concurrent_claims_share_one_pipeline(redis_server_url, redis_key_prefix) -> None:
    dedup = make_dedup(redis_server_url, redis_key_prefix, "a")
    try:
        results = await asyncio.gather(*(dedup.claim_many([f"e{i % 50}"]) for i in range(100)))

        assert sum(r[0] for r in results) == 50
    finally:
        await dedup.close()


async def test_closed_port_raises_unavailable(redis_key_prefix) -> None:
    dedup = make_dedup(f"redis://127.0.0.1:{free_port()}/0", redis_key_prefix, "a")
    try:
        with pytest.raises(DedupUnavailable):
            await dedup.claim_many(["e1"])
        assert not dedup.available
        assert not await dedup.ping()
    finally:
        await dedup.close()


class TcpProxy:
    """A loopback TCP proxy to Redis that the test can stop and start to fake an outage."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        self._writers.update({writer, upstream_writer})

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        self._writers.difference_update({writer, upstream_writer})


async def test_recovers_when_redis_returns(redis_server_url, redis_key_prefix) -> None:
    target = urlsplit(redis_server_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379)
    await proxy.start()
    dedup = make_dedup(f"redis://127.0.0.1:{proxy.port}/0", redis_key_prefix, "a")
    try:
        assert await dedup.claim_many(["before"]) == [True]

        await proxy.stop()
        with pytest.raises(DedupUnavailable):
            await dedup.claim_many(["during"])
        assert not await dedup.ping()

        await proxy.start()
        assert await dedup.ping()
        assert dedup.available
        assert await dedup.claim_many(["during", "before"]) == [True, False]
    finally:
        await dedup.close()
        with contextlib.suppress(AssertionError):
            await proxy.stop()


async def test_empty_claim_sends_nothing(redis_key_prefix) -> None:
    dedup = make_dedup(f"redis://127.0.0.1:{free_port()}/0", redis_key_prefix, "a")
    try:
        assert await dedup.claim_many([]) == []
        assert dedup.available
    finally:
        await dedup.close()


async def fake_redis(serve: Any, key_prefix: str) -> tuple[asyncio.Server, RedisDedup]:
    """Start `serve` as a fake Redis on a free port, and a dedup store that times out at 50 ms."""
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    dedup = RedisDedup.from_url(
        f"redis://127.0.0.1:{port}/0", SystemClock(), instance_id="a",
        key_prefix=key_prefix, claim_ttl_ms=30_000, done_ttl_ms=60_000, timeout_s=0.05,
    )  # fmt: skip
    return server, dedup


async def test_silent_redis_times_out(redis_key_prefix) -> None:
    async def accept_and_stay_silent(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.read()
        writer.close()

    server, dedup = await fake_redis(accept_and_stay_silent, redis_key_prefix)
    try:
        with pytest.raises(DedupUnavailable, match=r"no reply from Redis within 0\.05 s"):
            await dedup.claim_many(["e1"])
        assert not dedup.available
        assert not await dedup.ping()
    finally:
        await dedup.close()
        server.close()
        await server.wait_closed()


async def test_open_connection_that_goes_silent_times_out(redis_key_prefix) -> None:
    # The first pipeline connects and gets its reply. The second goes out at once on the open
    # connection, and the server never replies to it.
    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"PX\r\n$5\r\n30000\r\n")
        writer.write(b"+OK\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    server, dedup = await fake_redis(answer_once, redis_key_prefix)
    try:
        assert await dedup.claim_many(["e1"]) == [True]
        with pytest.raises(DedupUnavailable, match=r"no reply from Redis within 0\.05 s"):
            await asyncio.wait_for(dedup.claim_many(["e2"]), 5.0)
        assert not dedup.available
    finally:
        await dedup.close()
        server.close()
        await server.wait_closed()


async def test_scripts_reload_after_noscript(
    redis_server_url, redis_key_prefix, raw, monkeypatch, caplog
) -> None:
    # Scripts that Redis has never seen stand in for a Redis that lost its script cache.
    unique = f"\n-- {redis_key_prefix}\n"
    monkeypatch.setattr(dedup_module, "_MARK_DONE_LUA", dedup_module._MARK_DONE_LUA + unique)
    monkeypatch.setattr(dedup_module, "_RELEASE_LUA", dedup_module._RELEASE_LUA + unique)
    dedup = make_dedup(redis_server_url, redis_key_prefix, "a")
    dedup._scripts_loaded = True
    caplog.set_level(logging.INFO, logger="supervisor.dedup")
    try:
        assert await dedup.claim_many(["e1", "e2"]) == [True, True]

        await asyncio.gather(dedup.mark_done("e1"), dedup.release("e2"))

        assert await raw.get(redis_key_prefix + "e1") == "done"
        assert await raw.get(redis_key_prefix + "e2") is None
        assert dedup.available
        assert "Redis lost the dedup scripts" in caplog.text
    finally:
        await dedup.close()


async def test_batch_claim_and_done_share_a_flush(
    redis_server_url, redis_key_prefix, raw
) -> None:
    dedup = make_dedup(redis_server_url, redis_key_prefix, "a")
    try:
        await dedup.claim_many(["e1"])

        claims, _ = await asyncio.gather(
            dedup.claim_many(["e1", "e2", "e3"]), dedup.mark_done("e1")
        )

        assert claims == [False, True, True]
        assert await raw.get(redis_key_prefix + "e1") == "done"
        assert await raw.get(redis_key_prefix + "e3") == "a"
    finally:
        await dedup.close()


async def test_deferred_settlements_ride_in_the_next_claim_pipeline(
    redis_server_url, redis_key_prefix, raw, monkeypatch
) -> None:
    dedup = make_dedup(redis_server_url, redis_key_prefix, "a")
    pipelines: list[int] = []
    execute = dedup._client.execute

    async def counting(commands):  # type: ignore[no-untyped-def]
        pipelines.append(len(commands))
        return await execute(commands)

    monkeypatch.setattr(dedup._client, "execute", counting)
    try:
        await dedup.claim_many(["e1", "e2"])
        dedup.settle_later("e1", done=True)
        dedup.settle_later("e2", done=False)

        assert await dedup.claim_many(["e3"]) == [True]

        # One pipeline for the first claims, one that loads the scripts and carries the claim
        # of e3 and both settlements.
        assert pipelines == [2, 5]
        assert await raw.get(redis_key_prefix + "e1") == "done"
        assert await raw.get(redis_key_prefix + "e2") is None
    finally:
        await dedup.close()


async def test_deferred_settlement_goes_alone_without_a_claim(
    redis_server_url, redis_key_prefix, raw
) -> None:
    dedup = make_dedup(redis_server_url, redis_key_prefix, "a")
    try:
        await dedup.claim_many(["e1"])
        dedup.settle_later("e1", done=True)

        deadline = asyncio.get_running_loop().time() + 2.0
        while await raw.get(redis_key_prefix + "e1") != "done":
            assert asyncio.get_running_loop().time() < deadline, "done mark never sent"
            await asyncio.sleep(dedup_module.SETTLE_DELAY_S)
    finally:
        await dedup.close()


async def test_close_sends_waiting_settlements(redis_server_url, redis_key_prefix, raw) -> None:
    dedup = make_dedup(redis_server_url, redis_key_prefix, "a")
    await dedup.claim_many(["e1", "e2"])
    dedup.settle_later("e1", done=True)
    dedup.settle_later("e2", done=False)

    await dedup.close()

    assert await raw.get(redis_key_prefix + "e1") == "done"
    assert await raw.get(redis_key_prefix + "e2") is None


async def test_failed_settlement_is_logged_not_raised(redis_key_prefix, caplog) -> None:
    dedup = make_dedup(f"redis://127.0.0.1:{free_port()}/0", redis_key_prefix, "a")
    caplog.set_level(logging.ERROR, logger="supervisor.dedup")
    try:
        dedup.settle_later("e1", done=True)
        dedup.settle_later("e2", done=False)
        await dedup.close()
    finally:
        await dedup.close()

    assert "Could not mark done or release 2 dedup claims" in caplog.text
    assert "first event e1" in caplog.text
    assert "expire after the claim TTL" in caplog.text
    assert not dedup.available
