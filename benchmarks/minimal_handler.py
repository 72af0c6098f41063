"""The ceiling for the supervisor benchmark: the least work an ingest endpoint can do.

`POST /events` parses the JSON body (one event or `{"events": [...]}`), claims each `event_id`
in Redis with `SET key 1 NX PX ttl`, and puts each claimed event into an `asyncio.Queue` that a
trivial consumer drains. Claims issued in the same event-loop turn share one Redis pipeline, as
the supervisor's dedup does, and `--claim-per-request` sends one round trip per request instead.
There is no validation beyond `event_id`, no sharding, metrics, fan-out or execution call.

It is built from the same HTTP server (`supervisor.http_server`) and Redis connection
(`supervisor.resp`) as the supervisor, so the difference between the two is the supervisor's
own work per event.

Its rate on a machine estimates the ceiling for the supervisor's ingest there. It is not a
strict bound, because the supervisor may batch its Redis calls differently. The consumer's take
time minus the receipt time estimates the least added latency of an event loop with Redis in
the path.

Run: `python benchmarks/minimal_handler.py --port 8191 --key-prefix bench:minimal:`.
`GET /stats` returns the counters and the lag percentiles, and `POST /reset?lag_prefix=P`
clears them and, from then on, takes lag samples only of events whose id starts with `P`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from supervisor.http_server import HttpServer, Request, Response
from supervisor.resp import PipelinedRedis, RedisConnectionError

logger = logging.getLogger("minimal_handler")

_MAX_LAG_SAMPLES = 200_000


@dataclass
class Counters:
    """Counters since start or the last reset, and lags in seconds from receipt to consumer take.

    Only events whose id starts with `lag_prefix` add a lag sample, so a backlog of an earlier
    run that is still draining cannot enter the figures of the next one.
    """

    lag_prefix: str = ""
    received: int = 0
    claimed: int = 0
    duplicate: int = 0
    dropped: int = 0
    consumed: int = 0
    lags_s: deque[float] = field(default_factory=lambda: deque(maxlen=_MAX_LAG_SAMPLES))

    def snapshot(self) -> dict[str, Any]:
        ordered = sorted(self.lags_s)
        return {
            "received": self.received,
            "claimed": self.claimed,
            "duplicate": self.duplicate,
            "dropped": self.dropped,
            "consumed": self.consumed,
            "lag_count": len(ordered),
            "lag_p50_s": _percentile(ordered, 0.50),
            "lag_p99_s": _percentile(ordered, 0.99),
            "cpu_seconds": time.process_time(),
        }


def _percentile(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    index = min(len(ordered) - 1, int(fraction * len(ordered)))
    return ordered[index]


class MinimalIngest:
    """Claim-and-enqueue ingest with one consumer task."""

    def __init__(self, redis: PipelinedRedis, key_prefix: str, claim_ttl_ms: int,
                 queue_max_size: int, coalesce: bool) -> None:
        self.redis = redis
        self.coalesce = coalesce
        self._pending: list[tuple[list[str], asyncio.Future[list[bool]]]] = []
        self._flush_tasks: set[asyncio.Task[None]] = set()
        self.key_prefix = key_prefix
        self.claim_ttl_ms = claim_ttl_ms
        self.queue: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue(queue_max_size)
        self.counters = Counters()
        self.requests_in_progress = 0

    async def claim(self, event_ids: list[str]) -> list[bool]:
        """Claim ids with SET NX PX; True means claimed now, False means claimed before."""
        if not self.coalesce:
            return await self._claim_now(event_ids)
        if not self._pending:
            # Claims issued before the flush task first runs share its pipeline.
            task = asyncio.get_running_loop().create_task(self._flush())
            self._flush_tasks.add(task)
            task.add_done_callback(self._flush_tasks.discard)
        future: asyncio.Future[list[bool]] = asyncio.get_running_loop().create_future()
        self._pending.append((event_ids, future))
        return await future

    async def _claim_now(self, event_ids: list[str]) -> list[bool]:
        ttl = str(self.claim_ttl_ms)
        results = await self.redis.execute(
            [("SET", self.key_prefix + event_id, "1", "NX", "PX", ttl) for event_id in event_ids]
        )
        return [result is not None for result in results]

    async def _flush(self) -> None:
        pending, self._pending = self._pending, []
        all_ids = [event_id for event_ids, _ in pending for event_id in event_ids]
        try:
            claims = await self._claim_now(all_ids)
        except (RedisConnectionError, OSError, TimeoutError) as error:
            for _, future in pending:
                future.set_exception(error)
            return
        start = 0
        for event_ids, future in pending:
            future.set_result(claims[start:start + len(event_ids)])
            start += len(event_ids)

    async def handle_events(self, request: Request) -> Response:
        self.requests_in_progress += 1
        try:
            return await self._handle_events(request)
        finally:
            self.requests_in_progress -= 1

    async def _handle_events(self, request: Request) -> Response:
        received_s = time.monotonic()
        try:
            body = json.loads(request.body)
            events = body["events"] if isinstance(body, dict) and "events" in body else [body]
            event_ids = [str(event["event_id"]) for event in events]
        except (ValueError, KeyError, TypeError) as error:
            return Response.json(400, {"error": f"invalid event body: {error}"})

        self.counters.received += len(events)
        claims = await self.claim(event_ids)
        for event, claimed in zip(events, claims, strict=True):
            self._enqueue(received_s, event, claimed)
        return Response.json(202, {"accepted": sum(claims)})

    def _enqueue(self, received_s: float, event: dict[str, Any], claimed: bool) -> None:
        if not claimed:
            self.counters.duplicate += 1
            return
        self.counters.claimed += 1
        try:
            self.queue.put_nowait((received_s, event))
        except asyncio.QueueFull:
            self.counters.dropped += 1

    async def consume(self) -> None:
        while True:
            received_s, event = await self.queue.get()
            counters = self.counters
            if str(event["event_id"]).startswith(counters.lag_prefix):
                counters.lags_s.append(time.monotonic() - received_s)
            counters.consumed += 1

    async def handle_stats(self, request: Request) -> Response:
        return Response.json(200, {**self.counters.snapshot(), "queue_depth": self.queue.qsize(),
                                   "requests_in_progress": self.requests_in_progress})

    async def handle_reset(self, request: Request) -> Response:
        self.counters = Counters(lag_prefix=request.query.get("lag_prefix", ""))
        return Response.json(200, {"status": "reset"})

    async def handle_healthz(self, request: Request) -> Response:
        return Response.json(200, {"status": "ok"})


async def serve(args: argparse.Namespace) -> None:
    redis = PipelinedRedis.from_url(args.redis_url, connect_timeout_s=5.0, reply_timeout_s=5.0)
    await redis.execute([("PING",)])
    ingest = MinimalIngest(redis, args.key_prefix, args.claim_ttl_ms, args.queue_max_size,
                           coalesce=not args.claim_per_request)
    server = HttpServer({
        ("POST", "/events"): ingest.handle_events,
        ("GET", "/stats"): ingest.handle_stats,
        ("POST", "/reset"): ingest.handle_reset,
        ("GET", "/healthz"): ingest.handle_healthz,
    }, max_body_bytes=args.max_body_bytes)  # fmt: skip
    await server.start(args.host, args.port)
    consumer = asyncio.create_task(ingest.consume())
    logger.info("Minimal handler listening on http://%s:%d", args.host, args.port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    try:
        await stop.wait()
    finally:
        consumer.cancel()
        await server.close()
        await redis.close()
        logger.info("Minimal handler stopped: %s", json.dumps(ingest.counters.snapshot()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8191)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--max-body-bytes", type=int, default=10 * 1024 * 1024)
    parser.add_argument("--key-prefix", default="bench:minimal:",
                        help="prefix of the claim keys; the benchmark deletes its keys afterwards")
    parser.add_argument("--claim-ttl-ms", type=int, default=60_000)
    parser.add_argument("--queue-max-size", type=int, default=1_000_000)
    parser.add_argument("--claim-per-request", action="store_true",
                        help="send each request's claims as their own Redis round trip instead "
                        "of one pipeline per event-loop turn")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args))
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
