"""The execution calls' connection pool against loopback servers that reply from a script."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from conftest import free_port

from supervisor.http_pool import HttpClientError, HttpPool

BODY = b'{"idempotency_key": "e1:c1"}'
HEADERS = {"Content-Type": "application/json", "Idempotency-Key": "e1:c1"}


class RawServer:
    """A loopback HTTP server whose `respond` maps each request to raw response bytes.

    `respond` may return None to hang, and the server closes the connection after a response
    when `close_after` is set. It counts connections and requests, and keeps each request.
    """

    def __init__(self, respond: Callable[[int], bytes | None], close_after: bool = False) -> None:
        self.respond = respond
        self.close_after = close_after
        self.connections = 0
        self.open_now = 0
        self.max_open = 0
        self.requests: list[bytes] = []
        self.server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.max_open = max(self.max_open, self.open_now)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1]) for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )  # fmt: skip
                self.requests.append(head + await reader.readexactly(length))
                answer = self.respond(len(self.requests))
                if answer is None:
                    await asyncio.Event().wait()
                writer.write(answer)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open_now -= 1
            writer.close()


def ok(body: bytes = b'{"status":"filled"}', status: str = "200 OK", extra: str = "") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


@pytest.fixture
async def pools() -> AsyncIterator[list[HttpPool]]:
    built: list[HttpPool] = []
    yield built
    for pool in built:
        await pool.close()


def make_pool(pools: list[HttpPool], url: str, max_connections: int = 4) -> HttpPool:
    pool = HttpPool(url, max_connections=max_connections)
    pools.append(pool)
    return pool


async def test_request_line_headers_and_body(pools) -> None:
    async with RawServer(lambda _: ok()) as server:
        netloc = server.url.removeprefix("http://")
        pool = make_pool(pools, server.url + "/api/")

        status = await pool.post("/execute", BODY, HEADERS, timeout_s=2.0)

    assert status == 200
    request = server.requests[0]
    assert request.startswith(b"POST /api/execute HTTP/1.1\r\n")
    assert f"Host: {netloc}\r\n".encode() in request
    assert b"Idempotency-Key: e1:c1\r\n" in request
    assert f"Content-Length: {len(BODY)}\r\n".encode() in request
    assert request.endswith(b"\r\n\r\n" + BODY)


async def test_connection_is_kept_alive(pools) -> None:
    async with RawServer(lambda _: ok()) as server:
        pool = make_pool(pools, server.url)

        statuses = [await pool.post("/x", BODY, HEADERS, timeout_s=2.0) for _ in range(5)]

    assert statuses == [200] * 5
    assert server.connections == 1
    assert pool.connects == 1


@pytest.mark.parametrize(
    ("response", "status"),
    [
        (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"4;ext=1\r\nfill\r\n2\r\ned\r\n0\r\nTrailer: x\r\n\r\n", 201),
        (b"HTTP/1.1 100 Continue\r\n\r\n" + ok(status="202 Accepted"), 202),
        (b"HTTP/1.1 204 No Content\r\n\r\n", 204),
        (ok(b"", "429 Too Many Requests"), 429),
    ],
    ids=["chunked", "informational", "no-content", "empty-length"],
)  # fmt: skip
async def test_response_framings_keep_the_connection(pools, response, status) -> None:
    async with RawServer(lambda _: response) as server:
        pool = make_pool(pools, server.url)

        first = await pool.post("/x", BODY, HEADERS, timeout_s=2.0)
        second = await pool.post("/x", BODY, HEADERS, timeout_s=2.0)

    assert (first, second) == (status, status)
    assert server.connections == 1


async def test_response_in_small_pieces(pools) -> None:
    response = ok(b"x" * 300, extra="X-Pad: " + "p" * 200 + "\r\n")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(len(BODY))
        for start in range(0, len(response), 7):
            writer.write(response[start:start + 7])
            await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        pool = make_pool(pools, f"http://127.0.0.1:{port}")
        assert await pool.post("/x", BODY, HEADERS, timeout_s=2.0) == 200
    finally:
        server.close()
        await server.wait_closed()


async def test_connection_close_is_honoured(pools) -> None:
    async with RawServer(lambda _: ok(extra="Connection: close\r\n"), close_after=True) as server:
        pool = make_pool(pools, server.url)

        statuses = [await pool.post("/x", BODY, HEADERS, timeout_s=2.0) for _ in range(3)]

    assert statuses == [200] * 3
    assert server.connections == 3
    assert pool.open_connections == 0


async def test_body_until_close(pools) -> None:
    response = b"HTTP/1.0 200 OK\r\n\r\nfilled"
    async with RawServer(lambda _: response, close_after=True) as server:
        pool = make_pool(pools, server.url)

        assert await pool.post("/x", BODY, HEADERS, timeout_s=2.0) == 200
        assert await pool.post("/x", BODY, HEADERS, timeout_s=2.0) == 200

    assert server.connections == 2


async def test_stale_kept_alive_connection_is_retried_once(pools) -> None:
    # The server closes every connection after its response without saying so, the way an
    # idle timeout closes a kept-alive connection between calls.
    async with RawServer(lambda _: ok(), close_after=True) as server:
        pool = make_pool(pools, server.url)
        assert await pool.post("/x", BODY, HEADERS, timeout_s=2.0) == 200
        await asyncio.sleep(0.05)  # let the close arrive

        assert await pool.post("/x", BODY, HEADERS, timeout_s=2.0) == 200

    assert len(server.requests) == 2
    assert server.connections == 2


async def test_connection_lost_mid_response_is_an_error(pools) -> None:
    async with RawServer(lambda _: b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\npartial",
                         close_after=True) as server:  # fmt: skip
        pool = make_pool(pools, server.url)

        with pytest.raises(HttpClientError, match="connection lost"):
            await pool.post("/x", BODY, HEADERS, timeout_s=2.0)

    assert len(server.requests) == 1
    assert pool.open_connections == 0


async def test_malformed_response_is_an_error(pools) -> None:
    async with RawServer(lambda _: b"SPDY/3 200 OK\r\n\r\n") as server:
        pool = make_pool(pools, server.url)

        with pytest.raises(HttpClientError, match="malformed HTTP response"):
            await pool.post("/x", BODY, HEADERS, timeout_s=2.0)

    assert pool.open_connections == 0


async def test_timeout_closes_the_connection(pools) -> None:
    async with RawServer(lambda n: None if n == 1 else ok()) as server:
        pool = make_pool(pools, server.url)

        with pytest.raises(TimeoutError):
            await pool.post("/x", BODY, HEADERS, timeout_s=0.05)
        status = await pool.post("/x", BODY, HEADERS, timeout_s=2.0)

    assert status == 200
    assert server.connections == 2


async def test_max_connections_bounds_concurrency(pools) -> None:
    release = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counts["open"] += 1
        counts["max"] = max(counts["max"], counts["open"])
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(len(BODY))
                await release.wait()
                writer.write(ok())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            counts["open"] -= 1
            writer.close()

    counts = {"open": 0, "max": 0}
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        pool = make_pool(pools, f"http://127.0.0.1:{port}", max_connections=3)
        calls = [asyncio.ensure_future(pool.post("/x", BODY, HEADERS, timeout_s=5.0))
                 for _ in range(10)]  # fmt: skip
        while counts["open"] < 3:
            await asyncio.sleep(0.01)
        assert pool.open_connections == 3
        release.set()

        assert await asyncio.gather(*calls) == [200] * 10
        assert counts["max"] == 3
        assert pool.connects == 3
    finally:
        server.close()
        await server.wait_closed()


async def test_refused_connect_frees_slot(pools) -> None:
    pool = make_pool(pools, f"http://127.0.0.1:{free_port()}", max_connections=1)

    for _ in range(3):
        with pytest.raises(HttpClientError, match="cannot connect"):
            await pool.post("/x", BODY, HEADERS, timeout_s=2.0)

    assert pool.open_connections == 0


@pytest.mark.parametrize(
    ("url", "message"),
    [("ftp://host/", "not supported"), ("http:///path", "not supported")],
)
def test_bad_base_url(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HttpPool(url, max_connections=1)
