"""A lean open-loop HTTP client: posts single events at a fixed rate, each at its scheduled time.

The latency runs of `bench_supervisor.py` need a paced load of a few thousand requests per
second on a 2-core machine that the server under test, Redis and the stub share. A general
client (aiohttp's) spends close to a core at those rates and so takes CPU from the server it
measures. This one does the least work per request:

- it opens its keep-alive connections before the schedule starts, so no connection set-up
  lands inside the measured run;
- each send is a timer callback (`loop.call_at`), not a coroutine, and writes a request whose
  bytes are formatted from one template;
- a connection carries one request at a time. A send that finds no idle connection opens a
  new one and counts it, so a slow server shows up as extra connections, never as a send held
  back behind another response;
- responses are parsed only as far as the status code and `Content-Length`.

It speaks HTTP/1.1 to a loopback server that sends every response with a `Content-Length`
body, which aiohttp's server does. Run it in its own process: `paced_load` is the entry point.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any, cast
from urllib.parse import urlsplit

# Connections opened before the schedule starts; more are opened when all are busy.
DEFAULT_CONNECTIONS = 64

_BODY = ('{"event_id":"%s-%d","channel":"%s","symbol":"BTCUSDT","side":"buy",'
         '"quantity":1.0}')
_HEAD = ("POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
         "Content-Length: %d\r\n\r\n")


class PacedError(RuntimeError):
    """The paced run could not connect or did not finish before its deadline."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, client: _Client) -> None:
        self._client = client
        self._buffer = bytearray()
        self._expected = -1
        self._status = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance check here.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, request: bytes) -> None:
        assert self.transport is not None
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while True:
            if self._expected < 0:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buffer[:end]).split(b"\r\n")
                self._status = int(head[0].split(b" ", 2)[1])
                length = 0
                for line in head[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                del buffer[:end + 4]
                self._expected = length
            if len(buffer) < self._expected:
                return
            del buffer[:self._expected]
            self._expected = -1
            self._client.finished(self, self._status)
            if not buffer:
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self._client.lost(self)


class _Client:
    """The schedule, the idle connections and the tallies of one run."""

    def __init__(self, host: str, port: int, path: str, run_id: str, channels: list[str],
                 count: int) -> None:
        self.host, self.port, self.path = host, port, path
        self._run_id, self._channels = run_id, channels
        self.idle: collections.deque[_Connection] = collections.deque()
        self.busy: set[_Connection] = set()
        self.statuses: dict[int, int] = {}
        self.late_s: list[float] = []
        self.extra_connections = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.remaining = count
        self.done = asyncio.get_running_loop().create_future()

    async def connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(lambda: _Connection(self), self.host,
                                                   self.port)
        return protocol

    def request(self, index: int) -> bytes:
        body = _BODY % (self._run_id, index, self._channels[index % len(self._channels)])
        return (_HEAD % (self.path, self.host, len(body)) + body).encode()

    def send(self, index: int, due: float) -> None:
        loop = asyncio.get_running_loop()
        late = loop.time() - due
        if late > 0.0:
            self.late_s.append(late)
        request = self.request(index)
        if self.idle:
            connection = self.idle.popleft()
            self.busy.add(connection)
            connection.send(request)
        else:
            self.extra_connections += 1
            task = loop.create_task(self._send_on_new(request))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send_on_new(self, request: bytes) -> None:
        try:
            connection = await self.connect()
        except OSError:
            self._tally(-1)
            return
        self.busy.add(connection)
        connection.send(request)

    def finished(self, connection: _Connection, status: int) -> None:
        self.busy.discard(connection)
        self.idle.append(connection)
        self._tally(status)

    def lost(self, connection: _Connection) -> None:
        if connection in self.busy:
            self.busy.discard(connection)
            self._tally(-1)
        elif connection in self.idle:
            self.idle.remove(connection)

    def _tally(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.remaining -= 1
        if self.remaining == 0 and not self.done.done():
            self.done.set_result(None)


TIMER_STEP_S = 0.001


class _Schedule:
    """Sends each event at its due time from one timer that re-arms itself.

    Arming one timer per event up front would cost about a microsecond each, so a run of tens
    of thousands of events would start late and open with a burst. Each tick sends every event
    that is due by then and arms the timer for the next one.
    """

    def __init__(self, client: _Client, loop: asyncio.AbstractEventLoop, start: float,
                 rate_per_s: float, count: int) -> None:
        self.client, self.loop = client, loop
        self.start, self.rate_per_s, self.count = start, rate_per_s, count
        self.next_index = 0

    def due(self, index: int) -> float:
        return self.start + index / self.rate_per_s

    def arm(self) -> None:
        # uvloop's timers count whole milliseconds; a shorter wait would fire at once and spin.
        if self.next_index < self.count:
            self.loop.call_at(max(self.due(self.next_index), self.loop.time() + TIMER_STEP_S),
                              self.tick)  # fmt: skip

    def tick(self) -> None:
        now = self.loop.time()
        while self.next_index < self.count and self.due(self.next_index) <= now:
            self.client.send(self.next_index, self.due(self.next_index))
            self.next_index += 1
        self.arm()


async def run_paced(url: str, run_id: str, channels: list[str], rate_per_s: float, count: int,
                    connections: int = DEFAULT_CONNECTIONS) -> dict[str, Any]:
    """Post `count` events to `url` at `rate_per_s`; return statuses, rate, lateness and CPU.

    Event ids are `<run_id>-<index>`, and event `index` goes to `channels[index % len]`.
    Status -1 counts requests whose connection failed. The run stops at a deadline of twice
    its scheduled length plus 10 s and raises `PacedError` if responses are still missing.
    """
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None or parts.port is None:
        raise PacedError(f"URL {url!r} is not supported: give http://HOST:PORT/PATH")
    client = _Client(parts.hostname, parts.port, parts.path or "/", run_id, channels, count)
    try:
        for _ in range(connections):
            client.idle.append(await client.connect())
    except OSError as error:
        raise PacedError(f"cannot connect to {url}: {error}") from error

    loop = asyncio.get_running_loop()
    cpu_start_s = time.process_time()
    start = loop.time() + 0.05
    _Schedule(client, loop, start, rate_per_s, count).arm()
    timeout_s = 2.0 * count / rate_per_s + 10.0
    try:
        await asyncio.wait_for(client.done, timeout_s)
    except TimeoutError as error:
        raise PacedError(f"{client.remaining} of {count} responses were missing after "
                         f"{timeout_s:.0f} s") from error
    finally:
        for connection in [*client.idle, *client.busy]:
            if connection.transport is not None:
                connection.transport.close()
    elapsed_s = loop.time() - start
    # Sends on time count as 0 s late; the p99 is over every send.
    late_s = sorted(client.late_s)
    rank = min(count - 1, int(0.99 * count)) - (count - len(late_s))
    late_p99_s = late_s[rank] if rank >= 0 else 0.0
    return {
        "sent": count,
        "statuses": client.statuses,
        "elapsed_s": elapsed_s,
        "achieved_rate_per_s": count / elapsed_s,
        "late_p99_ms": 1000.0 * late_p99_s,
        "extra_connections": client.extra_connections,
        "cpu_s": time.process_time() - cpu_start_s,
    }


def paced_load(url: str, run_id: str, channels: list[str], rate_per_s: float,
               count: int) -> dict[str, Any]:
    """Run `run_paced` on uvloop when it is installed; the entry point of the child process."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run_paced(url, run_id, channels, rate_per_s, count))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run_paced(url, run_id, channels, rate_per_s, count))
