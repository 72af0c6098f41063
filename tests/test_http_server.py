"""The lean HTTP/1.1 server, over real loopback sockets with raw requests."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httptools
import pytest

from supervisor.http_server import MAX_PIPELINED, HttpServer, Request, Response

READ_TIMEOUT_S = 5.0


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _ReplyParser:
    """Collects complete responses from raw bytes with httptools' response parser."""

    replies: list[Reply] = field(default_factory=list)
    _headers: dict[str, str] = field(default_factory=dict)
    _body: bytes = b""
    parser: Any = None

    def __post_init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self._headers, self._body = {}, b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.replies.append(Reply(self.parser.get_status_code(), self._headers, self._body))


class Connection:
    """A raw client connection that reads whole responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.parsed = _ReplyParser()
        self.eof = False

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def replies(self, count: int) -> list[Reply]:
        """Read until `count` responses arrived in all, or the server closed the connection."""
        while len(self.parsed.replies) < count and not self.eof:
            data = await asyncio.wait_for(self.reader.read(65536), READ_TIMEOUT_S)
            if not data:
                self.eof = True
                break
            self.parsed.parser.feed_data(data)
        return self.parsed.replies[:count]

    async def closed_by_server(self) -> bool:
        """Wait for the end of the stream; True when the server closed the connection."""
        data = await asyncio.wait_for(self.reader.read(65536), READ_TIMEOUT_S)
        return data == b""

    def close(self) -> None:
        self.writer.close()


@dataclass
class Served:
    server: HttpServer
    port: int
    gate: asyncio.Event
    finished: list[str]

    async def connect(self) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        return Connection(reader, writer)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    gate = asyncio.Event()
    finished: list[str] = []

    async def echo(request: Request) -> Response:
        return Response.json(200, {"method": request.method, "path": request.path,
                                   "query": dict(request.query), "body": request.body.decode(),
                                   "type": request.headers.get("content-type")})  # fmt: skip

    async def slow(request: Request) -> Response:
        await gate.wait()
        finished.append(request.body.decode())
        return Response.json(200, {"slow": request.body.decode()})

    async def broken(request: Request) -> Response:
        raise RuntimeError("handler bug")

    server = HttpServer({("GET", "/echo"): echo, ("POST", "/echo"): echo,
                         ("POST", "/slow"): slow, ("GET", "/broken"): broken},
                        max_body_bytes=100, idle_timeout_s=30.0)  # fmt: skip
    port = await server.start("127.0.0.1", 0)
    yield Served(server, port, gate, finished)
    gate.set()
    await server.close(grace_s=1.0)


def post(path: str, body: bytes, *extra: str) -> bytes:
    headers = "".join(f"{line}\r\n" for line in extra)
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
    return head.encode() + body


async def test_keep_alive_serves_requests_in_turn(served: Served) -> None:
    connection = await served.connect()
    await connection.send(b"GET /echo?a=1&b=two HTTP/1.1\r\nHost: t\r\n\r\n")
    (first,) = await connection.replies(1)
    await connection.send(post("/echo", b"hello", "Content-Type: text/plain"))
    second = (await connection.replies(2))[1]

    assert first.status == 200
    assert first.json() == {"method": "GET", "path": "/echo", "query": {"a": "1", "b": "two"},
                            "body": "", "type": None}  # fmt: skip
    assert first.headers["content-type"] == "application/json"
    assert first.headers["content-length"] == str(len(first.body))
    assert first.headers["date"].endswith(" GMT")
    assert "connection" not in first.headers
    assert second.json()["body"] == "hello"
    assert second.json()["type"] == "text/plain"
    connection.close()


async def test_pipelined_requests_are_answered_in_order(served: Served) -> None:
    connection = await served.connect()
    await connection.send(post("/slow", b"first") + post("/echo", b"second"))
    await asyncio.sleep(0.05)
    assert connection.parsed.replies == []  # the fast second request waits for the slow first

    served.gate.set()
    first, second = await connection.replies(2)
    assert first.json() == {"slow": "first"}
    assert second.json()["body"] == "second"
    connection.close()


async def test_long_pipeline_is_answered_in_order(served: Served) -> None:
    # The first write queues more requests than a connection takes before it stops reading,
    # and the second is read only once reading has resumed.
    connection = await served.connect()
    count = 3 * MAX_PIPELINED
    requests = [f"GET /echo?n={n} HTTP/1.1\r\n\r\n".encode() for n in range(count)]
    await connection.send(b"".join(requests[: 2 * MAX_PIPELINED]))
    await asyncio.sleep(0.05)
    await connection.send(b"".join(requests[2 * MAX_PIPELINED :]))
    replies = await connection.replies(count)
    assert [reply.json()["query"]["n"] for reply in replies] == [str(n) for n in range(count)]
    connection.close()


async def test_chunked_body_is_assembled(served: Served) -> None:
    connection = await served.connect()
    await connection.send(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")  # fmt: skip
    (reply,) = await connection.replies(1)
    assert reply.json()["body"] == "abcdefg"
    connection.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /echo HTTP/1.1\r\nContent-Length: 101\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"40\r\n" + b"a" * 64 + b"\r\n" + b"40\r\n" + b"b" * 64 + b"\r\n",
    ],
    ids=["content-length", "chunked"],
)
async def test_body_over_the_limit_gets_413_and_close(served: Served,
                                                      request_bytes: bytes) -> None:  # fmt: skip
    connection = await served.connect()
    await connection.send(request_bytes)
    (reply,) = await connection.replies(1)
    assert reply.status == 413
    assert reply.json() == {"error": "body larger than 100 bytes"}
    assert reply.headers["connection"] == "close"
    assert await connection.closed_by_server()


async def test_malformed_request_gets_400_and_close(served: Served) -> None:
    connection = await served.connect()
    await connection.send(b"NOT HTTP AT ALL\r\n\r\n")
    (reply,) = await connection.replies(1)
    assert reply.status == 400
    assert reply.json()["error"].startswith("malformed HTTP request")
    assert await connection.closed_by_server()


async def test_oversized_headers_get_431(served: Served) -> None:
    served.server.max_header_bytes = 1024
    connection = await served.connect()
    await connection.send(b"GET /echo HTTP/1.1\r\nX-Big: " + b"x" * 2000 + b"\r\n\r\n")
    (reply,) = await connection.replies(1)
    assert reply.status == 431
    assert "1024 bytes" in reply.json()["error"]


async def test_unknown_path_and_wrong_method(served: Served) -> None:
    connection = await served.connect()
    await connection.send(b"GET /nowhere HTTP/1.1\r\n\r\nDELETE /echo HTTP/1.1\r\n\r\n")
    missing, wrong = await connection.replies(2)
    assert missing.status == 404
    assert missing.json() == {"error": "no endpoint at /nowhere"}
    assert wrong.status == 405
    assert wrong.headers["allow"] == "GET, POST"
    assert wrong.json() == {"error": "DELETE is not allowed on /echo; use GET, POST"}
    connection.close()


async def test_handler_error_gets_500(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    connection = await served.connect()
    with caplog.at_level(logging.ERROR, logger="supervisor.http_server"):
        await connection.send(b"GET /broken HTTP/1.1\r\n\r\nGET /echo HTTP/1.1\r\n\r\n")
        broken, echo = await connection.replies(2)
    assert broken.status == 500
    assert "traceback" in broken.json()["error"]
    assert echo.status == 200
    assert "Handler of GET /broken failed" in caplog.text
    assert "handler bug" in caplog.text
    connection.close()


async def test_expect_continue_gets_an_interim_response(served: Served) -> None:
    connection = await served.connect()
    await connection.send(b"POST /echo HTTP/1.1\r\nContent-Length: 2\r\n"
                          b"Expect: 100-continue\r\n\r\n")  # fmt: skip
    interim = await asyncio.wait_for(connection.reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    await connection.send(b"ok")
    (reply,) = await connection.replies(1)
    assert reply.json()["body"] == "ok"
    connection.close()


async def test_http_10_closes_unless_keep_alive_is_asked(served: Served) -> None:
    connection = await served.connect()
    await connection.send(b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    (kept,) = await connection.replies(1)
    assert kept.headers["connection"] == "keep-alive"
    await connection.send(b"GET /echo HTTP/1.0\r\n\r\n")
    closing = (await connection.replies(2))[1]
    assert closing.headers["connection"] == "close"
    assert await connection.closed_by_server()


async def test_handler_finishes_when_its_client_goes_away(served: Served) -> None:
    connection = await served.connect()
    await connection.send(post("/slow", b"orphan"))
    await asyncio.sleep(0.05)
    connection.close()
    await asyncio.sleep(0.05)
    served.gate.set()
    for _ in range(100):
        if served.finished:
            break
        await asyncio.sleep(0.01)
    assert served.finished == ["orphan"]


async def test_idle_connections_are_closed_after_the_timeout(served: Served) -> None:
    idle = await served.connect()
    busy = await served.connect()
    await busy.send(post("/slow", b"busy"))
    await idle.send(b"GET /echo HTTP/1.1\r\n\r\n")
    await idle.replies(1)
    loop = asyncio.get_running_loop()

    assert served.server.close_idle(loop.time() + 29.0) == 0
    assert served.server.close_idle(loop.time() + 30.0) == 1  # the busy one stays open
    assert await idle.closed_by_server()
    served.gate.set()
    (reply,) = await busy.replies(1)
    assert reply.json() == {"slow": "busy"}
    busy.close()


async def test_close_finishes_requests_in_progress(served: Served) -> None:
    idle = await served.connect()
    await idle.send(b"GET /echo HTTP/1.1\r\n\r\n")
    await idle.replies(1)
    busy = await served.connect()
    await busy.send(post("/slow", b"last"))
    await asyncio.sleep(0.05)

    closing = asyncio.create_task(served.server.close(grace_s=5.0))
    assert await idle.closed_by_server()
    assert not closing.done()
    served.gate.set()
    (reply,) = await busy.replies(1)
    await closing

    assert reply.json() == {"slow": "last"}
    assert reply.headers["connection"] == "close"
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", served.port)


async def test_close_aborts_requests_that_outlast_the_grace(served: Served) -> None:
    busy = await served.connect()
    await busy.send(post("/slow", b"stuck"))
    await asyncio.sleep(0.05)
    await served.server.close(grace_s=0.05)
    assert await busy.replies(1) == []
    assert busy.eof


def test_server_runs_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def ping(request: Request) -> Response:
        return Response.json(200, {"pong": request.query.get("n")})

    async def scenario() -> list[Reply]:
        server = HttpServer({("GET", "/ping"): ping}, max_body_bytes=10)
        port = await server.start("127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        connection = Connection(reader, writer)
        await connection.send(b"GET /ping?n=1 HTTP/1.1\r\n\r\nGET /ping?n=2 HTTP/1.1\r\n\r\n")
        replies = await connection.replies(2)
        connection.close()
        await server.close(grace_s=1.0)
        return replies

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        first, second = runner.run(scenario())
    assert first.json() == {"pong": "1"}
    assert second.json() == {"pong": "2"}
