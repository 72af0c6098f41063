"""A keep-alive HTTP/1.1 connection pool for the execution calls, one POST at a time per connection.

Every processed event costs one execution call, so the client's own work is part of the cost
of each event. On the 2-core benchmark machine aiohttp's client spent about 75 microseconds of
event-loop time per call, because it runs timeouts, tracing hooks, cookie and redirect handling
and several awaits per response. This pool spends about 25, because it does only what the
execution call needs:

- connections to one origin (`http://` or `https://`) are kept alive between calls. At most
  `max_connections` are open, and a caller that finds none free waits for one in arrival
  order;
- a request is written in one call. The response is parsed only as far as its status and the
  framing of its body (`Content-Length`, `chunked`, or until the server closes), and the body
  is read and discarded;
- informational (1xx) responses are skipped; `Connection: close` and HTTP/1.0 responses close
  the connection after the body;
- a request on a kept-alive connection that the server closed before sending any byte is sent
  once more on a new connection. Execution calls carry an idempotency key, so a request the
  server did see is not executed twice;
- `post` bounds the whole call (waiting for a connection, connecting, sending and reading) by
  `timeout_s`. A call that times out closes its connection, since a late response on it would
  otherwise be read as the next call's.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Mapping
from typing import cast
from urllib.parse import urlsplit

# Maximum size of a status line plus headers accepted from the server.
MAX_HEAD_BYTES = 65_536


class HttpClientError(Exception):
    """The call failed below HTTP: no connection, a broken connection or a malformed response."""


class _ConnectionLost(HttpClientError):
    def __init__(self, message: str, *, response_started: bool) -> None:
        super().__init__(message)
        self.response_started = response_started


_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE = range(7)


class _Connection(asyncio.Protocol):
    """One connection and the incremental parser of the response to its current request."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.keep_alive = True
        self._buffer = bytearray()
        self._future: asyncio.Future[int] | None = None
        self._state = _HEAD
        self._status = 0
        self._remaining = 0
        self._response_started = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance check here.
        self.transport = cast(asyncio.Transport, transport)

    def request(self, data: bytes) -> asyncio.Future[int]:
        """Send one request and return a future of its response status."""
        assert self.transport is not None and self._future is None
        self._future = asyncio.get_running_loop().create_future()
        self._state = _HEAD
        self._response_started = False
        self.transport.write(data)
        return self._future

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._future is None:
            self._fail("the server sent data without a request")
            return
        self._response_started = True
        self._buffer += data
        try:
            while self._future is not None and self._step():
                pass
        except (ValueError, IndexError) as error:
            self._fail(f"malformed HTTP response: {error}")
            return
        if self._future is None and self._buffer:
            # Bytes after a complete response belong to no request: do not reuse this one.
            self.keep_alive = False
            self._buffer.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._future is None:
            return
        if self._state == _UNTIL_CLOSE:
            self._finish()
            return
        future, self._future = self._future, None
        if not future.done():
            reason = exc or "closed by the server"
            future.set_exception(_ConnectionLost(
                f"connection lost before the response was complete ({reason})",
                response_started=self._response_started,
            ))  # fmt: skip

    def _fail(self, reason: str) -> None:
        future, self._future = self._future, None
        self.close()
        if future is not None and not future.done():
            future.set_exception(HttpClientError(reason))

    def _finish(self) -> None:
        future, self._future = self._future, None
        if future is not None and not future.done():
            future.set_result(self._status)

    def _step(self) -> bool:
        """Consume what the buffer allows in the current state; False when it needs more data."""
        buffer = self._buffer
        state = self._state
        if state == _HEAD:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD_BYTES:
                    raise ValueError(f"response head longer than {MAX_HEAD_BYTES} bytes")
                return False
            head = bytes(buffer[:end]).decode("latin-1")
            del buffer[: end + 4]
            self._parse_head(head)
            return True
        if state == _LENGTH:
            consumed = min(self._remaining, len(buffer))
            del buffer[:consumed]
            self._remaining -= consumed
            if self._remaining:
                return False
            self._finish()
            return True
        if state in (_CHUNK_SIZE, _TRAILERS, _CHUNK_END):
            end = buffer.find(b"\r\n")
            if end < 0:
                return False
            line = bytes(buffer[:end])
            del buffer[: end + 2]
            self._chunk_line(line)
            return True
        if state == _CHUNK_DATA:
            consumed = min(self._remaining, len(buffer))
            del buffer[:consumed]
            self._remaining -= consumed
            if self._remaining:
                return False
            self._state = _CHUNK_END
            return True
        buffer.clear()  # _UNTIL_CLOSE: the body ends when the server closes
        return False

    def _parse_head(self, head: str) -> None:
        lines = head.split("\r\n")
        version, status_text = lines[0].split(" ", 2)[:2]
        if not version.startswith("HTTP/1."):
            raise ValueError(f"invalid status line {lines[0][:80]!r}")
        status = int(status_text)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        if 100 <= status < 200:
            return  # informational; the final response follows
        self._status = status
        connection = headers.get("connection", "")
        if version == "HTTP/1.0":
            self.keep_alive = "keep-alive" in connection
        else:
            self.keep_alive = "close" not in connection
        if "chunked" in headers.get("transfer-encoding", ""):
            self._state = _CHUNK_SIZE
        elif "content-length" in headers:
            self._remaining = int(headers["content-length"])
            self._state = _LENGTH
        elif status in (204, 304):
            self._remaining = 0
            self._state = _LENGTH
        else:
            self.keep_alive = False
            self._state = _UNTIL_CLOSE

    def _chunk_line(self, line: bytes) -> None:
        if self._state == _CHUNK_END:
            if line:
                raise ValueError("chunk data longer than its size")
            self._state = _CHUNK_SIZE
        elif self._state == _CHUNK_SIZE:
            size = int(line.split(b";", 1)[0].strip(), 16)
            self._remaining = size
            self._state = _CHUNK_DATA if size else _TRAILERS
        elif not line:  # _TRAILERS: an empty line ends them
            self._finish()


def _expire(future: asyncio.Future[int]) -> None:
    if not future.done():
        future.set_exception(TimeoutError("no response before the call's deadline"))


class HttpPool:
    """Keep-alive connections to one origin; see the module docstring."""

    def __init__(self, base_url: str, *, max_connections: int) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"URL {base_url!r} is not supported: use http://HOST[:PORT] or https://HOST[:PORT]"
            )
        if max_connections < 1:
            raise ValueError(f"max_connections {max_connections} is invalid: use 1 or more")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._netloc = parts.netloc.rpartition("@")[2]
        self._base_path = parts.path.rstrip("/")
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self._max_connections = max_connections
        self._open = 0
        self._idle: collections.deque[_Connection] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[_Connection | None]] = (
            collections.deque()
        )
        self._closed = False
        self.connects = 0

    @property
    def open_connections(self) -> int:
        """Connections open or being opened, idle ones included."""
        return self._open

    def request_bytes(self, path: str, body: bytes, headers: Mapping[str, str]) -> bytes:
        """Return the bytes of a POST of `body` to `path` under the base URL."""
        lines = [f"POST {self._base_path}{path} HTTP/1.1", f"Host: {self._netloc}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    async def post(self, path: str, body: bytes, headers: Mapping[str, str],
                   timeout_s: float) -> int:  # fmt: skip
        """POST `body` and return the response status.

        Raises `TimeoutError` after `timeout_s`, and `HttpClientError` when no connection can be
        made, the connection breaks or the response is malformed.
        """
        data = self.request_bytes(path, body, headers)
        deadline = asyncio.get_running_loop().time() + timeout_s
        # An idle connection is taken without awaiting. Only the slower paths (connecting,
        # waiting for a busy pool) run under `asyncio.timeout`, which costs a few
        # microseconds more than the plain timer of `_request`.
        connection = self._take_idle()
        reused = connection is not None
        if connection is None:
            async with asyncio.timeout_at(deadline):
                connection, reused = await self._acquire()
        current: _Connection | None = connection
        try:
            try:
                status = await self._request(connection, data, deadline)
            except _ConnectionLost as lost:
                if not reused or lost.response_started:
                    raise
                # The server closed a kept-alive connection before this request reached it,
                # so send it once more on a new connection.
                current = None
                self._discard(connection)
                async with asyncio.timeout_at(deadline):
                    connection, _ = await self._acquire(fresh=True)
                current = connection
                status = await self._request(connection, data, deadline)
        except BaseException:
            # A broken, timed-out or cancelled call never returns its connection to the pool:
            # a late response on it would be read as the next call's.
            if current is not None:
                self._discard(current)
            raise
        self._give_back(connection)
        return status

    @staticmethod
    async def _request(connection: _Connection, data: bytes, deadline: float) -> int:
        """Send `data` and return the response status; raise `TimeoutError` at `deadline`."""
        future = connection.request(data)
        timer = asyncio.get_running_loop().call_at(deadline, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    def _take_idle(self) -> _Connection | None:
        """Return an open idle connection, or None when there is none."""
        while self._idle and not self._closed:
            connection = self._idle.pop()
            if not connection.closed:
                return connection
            self._open -= 1
        return None

    async def _acquire(self, fresh: bool = False) -> tuple[_Connection, bool]:
        """Return a connection and whether it was kept alive from an earlier call.

        With `fresh`, kept-alive connections are closed instead of used.
        """
        while True:
            if self._closed:
                raise HttpClientError("the connection pool is closed")
            if not fresh:
                connection = self._take_idle()
                if connection is not None:
                    return connection, True
            elif self._idle:
                self._discard(self._idle.pop())
                continue
            if self._open < self._max_connections:
                return await self._connect(), False
            handed = await self._wait_for_release()
            if handed is None:
                continue
            if handed.closed or fresh:
                self._discard(handed)
                continue
            return handed, True

    async def _wait_for_release(self) -> _Connection | None:
        """Wait until a call gives back a connection (returned) or a free slot (None)."""
        waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            # Cancelled after being handed something: pass it on rather than lose it.
            if waiter.done() and not waiter.cancelled():
                handed = waiter.result()
                if handed is None:
                    self._wake(None)
                else:
                    self._give_back(handed)
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    async def _connect(self) -> _Connection:
        self._open += 1
        self.connects += 1
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                _Connection, self._host, self._port, ssl=self._ssl,
                server_hostname=self._host if self._ssl else None,
            )  # fmt: skip
        except BaseException as error:
            self._open -= 1
            self._wake(None)
            if isinstance(error, OSError):
                raise HttpClientError(f"cannot connect to {self._netloc}: {error}") from error
            raise
        return connection

    def _give_back(self, connection: _Connection) -> None:
        """Keep a connection for the next call, or discard it when it cannot be reused."""
        if connection.closed or not connection.keep_alive or self._closed:
            self._discard(connection)
        elif not self._wake(connection):
            self._idle.append(connection)

    def _discard(self, connection: _Connection) -> None:
        """Close a connection and free its slot for a waiting call."""
        connection.close()
        self._open -= 1
        self._wake(None)

    def _wake(self, connection: _Connection | None) -> bool:
        """Hand `connection` (or a free slot, for None) to the oldest waiting call."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return True
        return False

    async def close(self) -> None:
        """Close every idle connection; calls in progress fail when their connection closes."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()
            self._open -= 1
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
