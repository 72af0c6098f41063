"""A lean pipelining Redis connection for the dedup hot path.

Dedup sends one small pipeline per event-loop turn: claims, done marks and releases. Through
redis-py's asyncio pipeline each of those cost about 45 microseconds of the event loop at
moderate load (pool checkout, retry wrapper, per-reply parsing), which made Redis the largest
cost per event after HTTP itself. This connection does only what dedup needs:

- one TCP, TLS or Unix-socket connection per store, opened on first use and again after a
  failure, with `AUTH` and `SELECT` from the URL;
- `execute(commands)` packs the commands with hiredis, writes them in one call and returns
  their replies in order. Pipelines from different callers may be in flight together. Redis
  replies in order, so replies go to the oldest waiting pipeline first;
- error replies come back as `hiredis.ReplyError` values in the reply list, not raised;
- a lost connection or a refused connect raises `RedisConnectionError`. A pipeline whose
  replies have not all come within `reply_timeout_s` raises `TimeoutError` and closes the
  connection, because replies still on their way would be read as the next pipeline's. One
  watchdog timer checks the oldest waiting pipeline, so a pipeline costs no timer of its own.

Other parts of the project (preflight, tests) use redis-py; only the dedup hot path uses this.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

Command = Sequence[str | bytes | int | float]


class RedisConnectionError(Exception):
    """Redis could not be reached, the connection broke, or a reply did not come in time."""


class RedisUrlError(ValueError):
    """A Redis URL that this connection cannot use."""


@dataclass(frozen=True)
class RedisAddress:
    """Connection target and credentials parsed from a `redis://`, `rediss://` or `unix://` URL."""

    host: str | None
    port: int
    path: str | None
    db: int
    username: str | None
    password: str | None = field(repr=False)
    tls: bool
    verify_tls: bool


def parse_redis_url(url: str) -> RedisAddress:
    """Parse a Redis URL; `SUPERVISOR_REDIS_URL` in docs/service.md lists the accepted forms."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise RedisUrlError(
            f"Redis URL scheme {parts.scheme!r} is not supported: use redis://, rediss:// "
            "or unix://"
        )
    db_text = query.get("db", [""])[0]
    if scheme != "unix" and not db_text:
        db_text = parts.path.lstrip("/")
    try:
        db = int(db_text or "0")
        port = parts.port or 6379
    except ValueError as error:
        raise RedisUrlError(f"Redis URL has an invalid database or port: {error}") from error
    if scheme == "unix" and not parts.path:
        raise RedisUrlError("a unix:// Redis URL needs the socket path, e.g. unix:///run/redis.sock")
    cert_reqs = query.get("ssl_cert_reqs", ["required"])[0].lower()
    return RedisAddress(
        host=None if scheme == "unix" else (parts.hostname or "localhost"),
        port=port,
        path=parts.path if scheme == "unix" else None,
        db=db,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=scheme == "rediss",
        verify_tls=cert_reqs not in ("none", "cert_none"),
    )


@dataclass(slots=True)
class _Pipeline:
    expected: int
    future: asyncio.Future[list[Any]]
    sent_at: float
    replies: list[Any] = field(default_factory=list)


class _RespProtocol(asyncio.Protocol):
    """Parses replies with hiredis and hands them to the waiting pipelines in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiting: collections.deque[_Pipeline] = collections.deque()
        self.lost = False
        self._reader = hiredis.Reader()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance check here.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self.waiting
        while (reply := reader.gets()) is not False:
            if not waiting:
                self.fail("Redis sent a reply that no command asked for")
                return
            pipeline = waiting[0]
            pipeline.replies.append(reply)
            if len(pipeline.replies) == pipeline.expected:
                waiting.popleft()
                if not pipeline.future.done():
                    pipeline.future.set_result(pipeline.replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail_waiting(f"connection to Redis lost ({exc or 'closed by the server'})")

    def fail(self, reason: str) -> None:
        """Close the connection and fail every pipeline still waiting for replies."""
        self.lost = True
        if self.transport is not None:
            self.transport.abort()
        self._fail_waiting(reason)

    def time_out(self, reason: str) -> None:
        """Close the connection and fail every waiting pipeline with `TimeoutError`."""
        self.lost = True
        if self.transport is not None:
            self.transport.abort()
        self._fail_waiting(reason, timed_out=True)

    def _fail_waiting(self, reason: str, timed_out: bool = False) -> None:
        while self.waiting:
            pipeline = self.waiting.popleft()
            if not pipeline.future.done():
                error = TimeoutError(reason) if timed_out else RedisConnectionError(reason)
                pipeline.future.set_exception(error)


class PipelinedRedis:
    """One Redis connection that sends command lists as pipelines; see the module docstring."""

    def __init__(self, address: RedisAddress, *, connect_timeout_s: float,
                 reply_timeout_s: float) -> None:  # fmt: skip
        self.address = address
        self._connect_timeout_s = connect_timeout_s
        self._reply_timeout_s = reply_timeout_s
        self._protocol: _RespProtocol | None = None
        self._connecting: asyncio.Future[_RespProtocol] | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    @classmethod
    def from_url(cls, url: str, *, connect_timeout_s: float,
                 reply_timeout_s: float) -> PipelinedRedis:  # fmt: skip
        return cls(parse_redis_url(url), connect_timeout_s=connect_timeout_s,
                   reply_timeout_s=reply_timeout_s)  # fmt: skip

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """Send `commands` in one write and return one reply per command, in order.

        A caller that stops waiting (a timeout around this call) closes the connection.
        """
        if not commands:
            return []
        protocol = await self._connection()
        return await self._send(protocol, commands)

    def send_now(self, commands: Sequence[Command]) -> asyncio.Future[list[Any]] | None:
        """Send `commands` in one write on the open connection and return the replies' future.

        Returns None when no connection is open; `execute` then connects first. The future
        fails with `RedisConnectionError` or `TimeoutError` as `execute` would raise.
        """
        protocol = self._protocol
        if protocol is None or protocol.lost or not commands:
            return None
        return self._write(protocol, commands)

    def _write(self, protocol: _RespProtocol,
               commands: Sequence[Command]) -> asyncio.Future[list[Any]]:  # fmt: skip
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        protocol.waiting.append(_Pipeline(len(commands), future, loop.time()))
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._reply_timeout_s, self._check_replies)
        assert protocol.transport is not None
        pack = hiredis.pack_command
        protocol.transport.write(b"".join([pack(cast(Any, tuple(c))) for c in commands]))
        return future

    async def _send(self, protocol: _RespProtocol, commands: Sequence[Command]) -> list[Any]:
        future = self._write(protocol, commands)
        try:
            return await future
        except asyncio.CancelledError:
            protocol.fail("a Redis reply did not come in time")
            raise

    def _check_replies(self) -> None:
        """Time out the connection when its oldest pipeline waited too long, or re-arm the timer."""
        self._watchdog = None
        protocol = self._protocol
        if protocol is None or protocol.lost or not protocol.waiting:
            return
        loop = asyncio.get_running_loop()
        waited_s = loop.time() - protocol.waiting[0].sent_at
        if waited_s >= self._reply_timeout_s:
            protocol.time_out(f"no reply from Redis within {self._reply_timeout_s} s")
            return
        self._watchdog = loop.call_later(self._reply_timeout_s - waited_s, self._check_replies)

    async def _connection(self) -> _RespProtocol:
        protocol = self._protocol
        if protocol is not None and not protocol.lost:
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
            self._connecting.add_done_callback(self._connected)
        return await asyncio.shield(self._connecting)

    def _connected(self, attempt: asyncio.Future[_RespProtocol]) -> None:
        self._connecting = None
        if not attempt.cancelled() and attempt.exception() is None:
            self._protocol = attempt.result()

    async def _connect(self) -> _RespProtocol:
        loop = asyncio.get_running_loop()
        address = self.address
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                if address.path is not None:
                    _, protocol = await loop.create_unix_connection(_RespProtocol, address.path)
                else:
                    _, protocol = await loop.create_connection(
                        _RespProtocol, address.host or "localhost", address.port,
                        ssl=_tls_context(address.verify_tls) if address.tls else None,
                    )  # fmt: skip
                await self._handshake(protocol)
        except TimeoutError as error:
            raise RedisConnectionError(
                f"no connection to Redis within {self._connect_timeout_s} s"
            ) from error
        except OSError as error:
            raise RedisConnectionError(f"cannot connect to Redis: {error}") from error
        return protocol

    async def _handshake(self, protocol: _RespProtocol) -> None:
        address = self.address
        commands: list[Command] = []
        if address.password is not None:
            credentials = (address.username, address.password) if address.username else (
                address.password,
            )
            commands.append(("AUTH", *credentials))
        if address.db:
            commands.append(("SELECT", address.db))
        if not commands:
            return
        for command, reply in zip(commands, await self._send(protocol, commands), strict=True):
            if isinstance(reply, hiredis.ReplyError):
                protocol.fail("handshake refused")
                raise RedisConnectionError(f"Redis rejected {command[0]!r}: {reply}")

    async def close(self) -> None:
        """Close the connection; pipelines still waiting fail with `RedisConnectionError`."""
        if self._connecting is not None:
            self._connecting.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._protocol is not None and not self._protocol.lost:
            self._protocol.fail("the dedup store was closed")
        self._protocol = None


def _tls_context(verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def is_error(reply: Any) -> bool:
    """Return True for an error reply."""
    return isinstance(reply, hiredis.ReplyError)


def is_noscript(reply: Any) -> bool:
    """Return True for the error reply of `EVALSHA` when Redis does not have the script."""
    return isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT")
