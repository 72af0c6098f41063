"""A lean HTTP/1.1 server for the supervisor's own endpoints.

The supervisor serves a few thousand small requests a second on one event loop. A general
framework spent about 40 microseconds of Python per request on request and response objects,
header multidicts and its own task plumbing, which was close to half of an event's whole cost.
This server parses with httptools (llhttp, in C), hands each complete request to a route's
coroutine, and writes the response in one call. It supports what clients of the supervisor
send: keep-alive, pipelined requests (responded to in order), chunked or sized bodies,
`Expect: 100-continue`, and HTTP/1.0.

What it does not do: TLS, HTTP/2, upgrades and streaming bodies. The supervisor runs behind
the platform's load balancer, which terminates TLS.

A handler is never cancelled when its client goes away: an ingest handler that has claimed an
event must still count and enqueue it, so its response is computed and then discarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import parse_qsl

import httptools

logger = logging.getLogger(__name__)

JSON_TYPE = "application/json"
DEFAULT_IDLE_TIMEOUT_S = 75.0
DEFAULT_MAX_HEADER_BYTES = 64 * 1024
SWEEP_INTERVAL_S = 1.0
# Pipelined requests a connection may queue before it stops reading from its client.
MAX_PIPELINED = 64

_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Request:
    """One complete HTTP request; header names are lower-case."""

    __slots__ = ("_path", "_query", "body", "headers", "method", "target")

    def __init__(self, method: str, target: str, headers: dict[str, str], body: bytes) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
        self._path: str | None = None
        self._query: dict[str, str] | None = None

    @property
    def path(self) -> str:
        """The target without its query string."""
        if self._path is None:
            self._path = self.target.partition("?")[0]
        return self._path

    @property
    def query(self) -> Mapping[str, str]:
        """The query parameters; the last one wins when a name repeats."""
        if self._query is None:
            query = self.target.partition("?")[2]
            self._query = dict(parse_qsl(query, keep_blank_values=True))
        return self._query


class Response:
    """A complete response: status, body and extra headers."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(self, status: int, body: bytes = b"", content_type: str = JSON_TYPE,
                 headers: Mapping[str, str] | None = None) -> None:  # fmt: skip
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers

    @classmethod
    def json(cls, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Response:
        """Build a JSON response encoding `payload`."""
        return cls(status, json.dumps(payload).encode(), JSON_TYPE, headers)


Handler = Callable[[Request], Awaitable[Response]]


class _DateHeader:
    """The `Date` header value, formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def value(self) -> bytes:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._value = formatdate(second, usegmt=True).encode()
        return self._value


def encode_response(response: Response, date: bytes, *, keep_alive: bool,
                    http_10: bool = False) -> bytes:  # fmt: skip
    """Serialize `response` as HTTP/1.1 bytes."""
    status = response.status
    reason = _REASONS.get(status, b"Unknown")
    extra = b""
    if response.headers:
        extra = b"".join(
            b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in response.headers.items()
        )
    if not keep_alive:
        extra += b"Connection: close\r\n"
    elif http_10:
        extra += b"Connection: keep-alive\r\n"
    body = response.body
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nDate: %s\r\n%s\r\n%s" % (
        status, reason, response.content_type.encode("latin-1"), len(body), date, extra, body,
    )  # fmt: skip


def _error(status: int, message: str) -> Response:
    return Response.json(status, {"error": message})


class HttpServer:
    """Serves `routes` ({(method, path): handler}) on one listening socket.

    `too_large` is the response to a body over `max_body_bytes`; the connection is closed after
    it, because the rest of that body is not read.
    """

    def __init__(
        self,
        routes: Mapping[tuple[str, str], Handler],
        *,
        max_body_bytes: int,
        too_large: Response | None = None,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    ) -> None:
        self.routes = dict(routes)
        self.max_body_bytes = max_body_bytes
        self.too_large = too_large or _error(413, f"body larger than {max_body_bytes} bytes")
        self.idle_timeout_s = idle_timeout_s
        self.max_header_bytes = max_header_bytes
        self.date = _DateHeader()
        self.connections: set[_Connection] = set()
        self.closing = False
        self._allowed: dict[str, list[str]] = {}
        for method, path in self.routes:
            self._allowed.setdefault(path, []).append(method)
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._idle_waiters: list[asyncio.Future[None]] = []

    async def start(self, host: str, port: int) -> int:
        """Listen on `host:port` and return the bound port (useful with port 0)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self, loop), host, port)
        self._sweeper = loop.call_later(SWEEP_INTERVAL_S, self._sweep)
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    def route(self, request: Request) -> Handler | Response:
        """Return the handler of `request`, or the 404 or 405 response."""
        handler = self.routes.get((request.method, request.path))
        if handler is not None:
            return handler
        allowed = self._allowed.get(request.path)
        if allowed is None:
            return _error(404, f"no endpoint at {request.path}")
        methods = ", ".join(sorted(allowed))
        return Response.json(405, {"error": f"{request.method} is not allowed on "
                                            f"{request.path}; use {methods}"},
                             {"Allow": methods})  # fmt: skip

    def close_idle(self, now: float) -> int:
        """Close connections with no request in progress and no traffic for the idle timeout.

        While the server is closing, every connection without a request in progress is closed.
        Returns how many were closed.
        """
        closed = 0
        for connection in list(self.connections):
            if connection.busy:
                continue
            if self.closing or now - connection.last_activity >= self.idle_timeout_s:
                connection.close()
                closed += 1
        return closed

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        self.close_idle(loop.time())
        self._sweeper = loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    def connection_idle(self, connection: _Connection) -> None:
        """Called by a connection that has just finished its last pending request."""
        if self.closing:
            connection.close()

    def connection_gone(self, connection: _Connection) -> None:
        self.connections.discard(connection)
        if not self.busy:
            for waiter in self._idle_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._idle_waiters.clear()

    @property
    def busy(self) -> bool:
        """True while any connection has a request in progress."""
        return any(connection.busy for connection in self.connections)

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop listening, let requests in progress finish for up to `grace_s`, close the rest."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._server is not None:
            self._server.close()
        self.close_idle(0.0)
        if self.busy:
            waiter = asyncio.get_running_loop().create_future()
            self._idle_waiters.append(waiter)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(waiter, grace_s)
        for connection in list(self.connections):
            connection.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


class _Connection(asyncio.Protocol):
    """One client connection: parses requests and responds to them in order."""

    def __init__(self, server: HttpServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.pending: deque[tuple[Request, bool, bool]] = deque()
        self.running = False
        self.closed = False
        self.last_activity = loop.time()
        self._url = b""
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._rejected = False
        self._reading_paused = False

    @property
    def busy(self) -> bool:
        return self.running or bool(self.pending)

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)
        if self.server.closing:
            self.close()

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        if self._rejected:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(_error(400, "protocol upgrades are not supported"))
        except httptools.HttpParserError as error:
            if not self._rejected:
                reason = str(error) or "cannot parse"
                self._reject(_error(400, f"malformed HTTP request: {reason}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pending.clear()
        self.server.connection_gone(self)

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self._rejected:
            self.transport.resume_reading()

    # --- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._header_bytes = 0
        self._body = []
        self._body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > self.server.max_header_bytes:
            self._reject(_error(431, f"request headers larger than "
                                     f"{self.server.max_header_bytes} bytes"))  # fmt: skip
            raise httptools.HttpParserError("headers too large")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self._headers.get(key)
        self._headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.server.max_body_bytes:
            self._reject(self.server.too_large)
            raise httptools.HttpParserError("body too large")
        if self._headers.get("expect", "").lower() == "100-continue" and self.transport:
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self.server.max_body_bytes:
            self._reject(self.server.too_large)
            raise httptools.HttpParserError("body too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self.parser
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request = Request(parser.get_method().decode("ascii"), self._url.decode("latin-1"),
                          self._headers, body)  # fmt: skip
        self.pending.append((request, parser.should_keep_alive(),
                             parser.get_http_version() == "1.0"))  # fmt: skip
        if len(self.pending) >= MAX_PIPELINED and self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True
        if not self.running:
            self._next()

    # --- responding ----------------------------------------------------------------------------

    def _next(self) -> None:
        """Start responding to the oldest pending request, if any."""
        if not self.pending:
            self.server.connection_idle(self)
            return
        request, keep_alive, http_10 = self.pending.popleft()
        if self._reading_paused and len(self.pending) < MAX_PIPELINED // 2:
            self._reading_paused = False
            if self.transport is not None and not self._rejected and not self.closed:
                self.transport.resume_reading()
        if isinstance(request, _Rejection):
            self._send(request.response, False, False)
            return
        routed = self.server.route(request)
        if isinstance(routed, Response):
            self._send(routed, keep_alive, http_10)
            self._next()
            return
        self.running = True
        self.loop.create_task(self._answer(routed, request, keep_alive, http_10))

    async def _answer(self, handler: Handler, request: Request, keep_alive: bool,
                      http_10: bool) -> None:  # fmt: skip
        try:
            response = await handler(request)
        except Exception:
            logger.exception("Handler of %s %s failed", request.method, request.path)
            response = _error(500, "internal error; the supervisor log has the traceback")
        self.running = False
        self._send(response, keep_alive, http_10)
        self._next()

    def _send(self, response: Response, keep_alive: bool, http_10: bool) -> None:
        if self.closed or self.transport is None:
            return
        keep_alive = keep_alive and not self.server.closing
        self.transport.write(encode_response(response, self.server.date.value(),
                                             keep_alive=keep_alive, http_10=http_10))
        self.last_activity = self.loop.time()
        if not keep_alive:
            self.pending.clear()
            self.close()

    def _reject(self, response: Response) -> None:
        """Respond to a request that cannot be read to its end, then close the connection."""
        if self._rejected:
            return
        self._rejected = True
        if self.transport is not None:
            self.transport.pause_reading()
        if not self.running and not self.pending:
            self._send(response, False, False)
            return
        # Earlier requests are still in progress, so the rejection goes out after them.
        self.pending.append((_Rejection(response), False, False))

    # --- closing ------------------------------------------------------------------------------

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.closed = True
            self.transport.abort()


class _Rejection(Request):
    """A placeholder in the pending queue that responds with a fixed response."""

    __slots__ = ("response",)

    def __init__(self, response: Response) -> None:
        super().__init__("", "", {}, b"")
        self.response = response
