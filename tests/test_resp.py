"""The lean Redis connection of the dedup hot path: URLs, pipelining, errors and handshake."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis
from conftest import free_port

from supervisor.resp import (
    PipelinedRedis,
    RedisAddress,
    RedisConnectionError,
    RedisUrlError,
    is_error,
    is_noscript,
    parse_redis_url,
)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis://127.0.0.1:6379/0",
            RedisAddress("127.0.0.1", 6379, None, 0, None, None, tls=False, verify_tls=True),
        ),
        (
            "redis://:s%40cret@cache.internal/3",
            RedisAddress(
                "cache.internal", 6379, None, 3, None, "s@cret", tls=False, verify_tls=True
            ),
        ),
        (
            "rediss://svc:pw@cache:6380/1?ssl_cert_reqs=none",
            RedisAddress("cache", 6380, None, 1, "svc", "pw", tls=True, verify_tls=False),
        ),
        (
            "unix:///run/redis/redis.sock?db=2",
            RedisAddress(
                None, 6379, "/run/redis/redis.sock", 2, None, None, tls=False, verify_tls=True
            ),
        ),
    ],
)
def test_parse_redis_url(url: str, expected: RedisAddress) -> None:
    assert parse_redis_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://cache:6379/0", "scheme 'http'"),
        ("redis://cache:6379/zero", "invalid database"),
        ("unix://", "socket path"),
    ],
)
def test_bad_redis_url_names_the_problem(url: str, message: str) -> None:
    with pytest.raises(RedisUrlError, match=message):
        parse_redis_url(url)


def test_password_stays_out_of_repr() -> None:
    assert "s3cret" not in repr(parse_redis_url("redis://:s3cret@cache/0"))


@pytest.fixture
async def connection(redis_server_url: str) -> AsyncIterator[PipelinedRedis]:
    client = PipelinedRedis.from_url(
        redis_server_url, connect_timeout_s=2.0, reply_timeout_s=2.0
    )
    yield client
    await client.close()


@pytest.mark.integration
async def test_concurrent_pipelines_get_their_own_replies(
    connection: PipelinedRedis, redis_key_prefix: str
) -> None:
    async def one(index: int) -> list[object]:
        key = f"{redis_key_prefix}k{index}"
        return await connection.execute([("SET", key, str(index)), ("GET", key), ("DEL", key)])

    results = await asyncio.gather(*(one(index) for index in range(200)))

    assert results == [[b"OK", str(index).encode(), 1] for index in range(200)]


@pytest.mark.integration
async def test_error_reply_is_returned_not_raised(
    connection: PipelinedRedis, redis_key_prefix: str
) -> None:
    replies = await connection.execute(
        [
            ("EVALSHA", "0" * 40, 0),
            ("NOSUCHCOMMAND",),
            ("SET", redis_key_prefix + "after", "1", "NX"),
            ("SET", redis_key_prefix + "after", "1", "NX"),
        ]
    )

    assert is_noscript(replies[0])
    assert is_error(replies[1])
    assert not is_noscript(replies[1])
    assert replies[2:] == [b"OK", None]


@pytest.mark.integration
async def test_database_from_url_is_selected(redis_server_url: str, redis_key_prefix: str) -> None:
    base = redis_server_url.rsplit("/", 1)[0]
    client = PipelinedRedis.from_url(base + "/5", connect_timeout_s=2.0, reply_timeout_s=2)
    key = redis_key_prefix + "db5"
    try:
        await client.execute([("SET", key, "here", "PX", 60_000)])
    finally:
        await client.close()

    checker = redis.Redis.from_url(base + "/5")
    try:
        assert checker.get(key) == b"here"
        checker.delete(key)
    finally:
        checker.close()


async def test_refused_connect_raises_connection_error() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    client = PipelinedRedis.from_url(url, connect_timeout_s=1, reply_timeout_s=1)
    try:
        with pytest.raises(RedisConnectionError, match="cannot connect"):
            await client.execute([("PING",)])
    finally:
        await client.close()


async def fake_redis(answer: bytes) -> tuple[asyncio.base_events.Server, list[bytes]]:
    """A loopback server that records what it receives and replies to each read with `answer`."""
    received: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            received.append(data)
            writer.write(answer)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0), received


async def test_refused_auth_fails_the_connect() -> None:
    server, received = await fake_redis(b"-WRONGPASS invalid username-password pair\r\n")
    port = server.sockets[0].getsockname()[1]
    url = f"redis://svc:nope@127.0.0.1:{port}/0"
    client = PipelinedRedis.from_url(url, connect_timeout_s=1, reply_timeout_s=1)
    try:
        with pytest.raises(RedisConnectionError, match="rejected 'AUTH': WRONGPASS"):
            await client.execute([("PING",)])
        assert received[0].startswith(b"*3\r\n$4\r\nAUTH\r\n$3\r\nsvc\r\n$4\r\nnope\r\n")
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


async def test_timeout_closes_the_connection_and_next_call_reconnects() -> None:
    replies = [b"", b"+PONG\r\n"]
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        answer = replies[connections]
        connections += 1
        while await reader.read(65536):
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    client = PipelinedRedis.from_url(url, connect_timeout_s=1, reply_timeout_s=1)
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await client.execute([("PING",)])

        assert await client.execute([("PING",)]) == [b"PONG"]
        assert connections == 2
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


async def test_silent_server_times_out_the_pipeline() -> None:
    server, received = await fake_redis(b"")
    port = server.sockets[0].getsockname()[1]
    client = PipelinedRedis.from_url(
        f"redis://127.0.0.1:{port}/0", connect_timeout_s=1, reply_timeout_s=0.05
    )
    try:
        with pytest.raises(TimeoutError, match=r"no reply from Redis within 0\.05 s"):
            await client.execute([("PING",)])
        assert received == [b"*1\r\n$4\r\nPING\r\n"]
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
