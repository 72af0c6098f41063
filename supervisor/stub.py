"""The execution service stub: `supervisor execution-stub`.

An HTTP server standing in for the platform's execution service in load tests, end-to-end
tests and calibration runs. Each `POST /execute` is one copy trade. The stub applies the
capacity rule that the model mirrors. Let `n` be the calls in progress counting the new one,
`C` the capacity and `M` the limit (0 means unlimited for both). A call with `n > M` gets 429
at once. Any other call sleeps `base * max(1, n / C)`, with `base` drawn from the latency
distribution, then gets 500 with the configured error probability, else 200.

Only calls answered 200 count as executions, so a duplicate key is one executed (200) more than
once; a 429 or 500 leaves the trade unexecuted and a retry of it is not a duplicate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from supervisor.http_server import HttpServer, Request, Response
from supervisor.latency import (
    LATENCY_KINDS,
    LatencyDistribution,
    LatencyError,
    LatencySummary,
    build_latency,
)

logger = logging.getLogger(__name__)

SleepFunction = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]

DEFAULT_PORT = 8090
MAX_LOGGED_BAD_REQUESTS = 10

MAX_BODY_BYTES = 1_048_576

_FILLED = Response(200, b'{"status": "filled"}')
_ERROR = Response(500, b'{"status": "error", "reason": "injected error"}')
_REJECTED = Response(429, b'{"status": "rejected", "reason": "concurrency limit reached"}')


class StubOptionError(ValueError):
    """A command-line option of the stub has a value it cannot start with."""


@dataclass(frozen=True, kw_only=True)
class StubOptions:
    """Validated options of one stub, with `max_concurrency` already resolved from the capacity."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    latency: LatencyDistribution
    capacity: int = 0
    max_concurrency: int = 0
    error_rate: float = 0.0
    seed: int

    def describe(self) -> dict[str, object]:
        return {
            "host": self.host,
            "port": self.port,
            "latency": self.latency.describe(),
            "capacity": self.capacity,
            "max_concurrency": self.max_concurrency,
            "error_rate": self.error_rate,
            "seed": self.seed,
        }


def build_options(args: argparse.Namespace) -> StubOptions:
    """Validate parsed arguments, raising `StubOptionError` that names the option and the fix."""
    try:
        latency = build_latency(
            args.latency,
            latency_ms=args.latency_ms,
            median_ms=args.latency_median_ms,
            sigma=args.latency_sigma,
        )
    except LatencyError as error:
        raise StubOptionError(f"--latency {args.latency}: {error}") from error

    if not 0 <= args.port <= 65_535:
        raise StubOptionError(f"--port {args.port} is invalid: use 0 to 65535 (0 picks a free one)")
    if args.capacity < 0:
        raise StubOptionError(
            f"--capacity {args.capacity} is invalid: use 0 for unlimited or a positive number"
        )
    max_concurrency = 2 * args.capacity if args.max_concurrency is None else args.max_concurrency
    if max_concurrency < 0:
        raise StubOptionError(
            f"--max-concurrency {max_concurrency} is invalid: use 0 for no limit or a positive "
            "number"
        )
    if 0 < max_concurrency < args.capacity:
        raise StubOptionError(
            f"--max-concurrency {max_concurrency} is below --capacity {args.capacity}, so latency "
            f"would never scale: set it to at least {args.capacity}, or 0 for no limit"
        )
    if not (math.isfinite(args.error_rate) and 0.0 <= args.error_rate <= 1.0):
        raise StubOptionError(
            f"--error-rate {args.error_rate} is invalid: it is a probability from 0 to 1"
        )

    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(8), "big")
    return StubOptions(
        host=args.host,
        port=args.port,
        latency=latency,
        capacity=args.capacity,
        max_concurrency=max_concurrency,
        error_rate=args.error_rate,
        seed=seed,
    )


class ExecutionStub:
    """State and capacity rule of the stub, apart from HTTP so tests can drive it directly.

    `sleep`, `clock` and `rng` are injected: tests pass a gated sleep to hold calls in progress
    and read the delay each call computed.
    """

    def __init__(
        self,
        options: StubOptions,
        *,
        sleep: SleepFunction = asyncio.sleep,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.options = options
        self._sleep = sleep
        self._clock = clock
        self._rng = rng if rng is not None else random.Random(options.seed)
        self._skip_sleep = options.latency.always_zero
        self.in_flight = 0
        self.latency_summary = LatencySummary()
        self.reset()

    def reset(self) -> None:
        """Clear counters, key counts and latencies, but keep counting calls still in progress."""
        self.counts: dict[str, int] = {}
        self.calls_total = 0
        self.executions_total = 0
        self.duplicate_keys = 0
        self.max_in_flight = self.in_flight
        self.rejected_429 = 0
        self.errors_500 = 0
        self.bad_requests = 0
        self.latency_summary.clear()

    def delay_s(self, in_progress: int) -> float:
        """Draw the delay of a call admitted with `in_progress` calls running, itself included."""
        base_ms = self.options.latency.sample_ms(self._rng)
        capacity = self.options.capacity
        if capacity > 0 and in_progress > capacity:
            return base_ms * (in_progress / capacity) / 1000.0
        return base_ms / 1000.0

    async def execute(self, key: str) -> int:
        """Apply the capacity rule to one call and return the HTTP status of its response."""
        self.calls_total += 1
        in_progress = self.in_flight + 1
        limit = self.options.max_concurrency
        if limit > 0 and in_progress > limit:
            self.rejected_429 += 1
            return 429

        self.in_flight = in_progress
        if in_progress > self.max_in_flight:
            self.max_in_flight = in_progress
        started_s = self._clock()
        try:
            if not self._skip_sleep:
                delay_s = self.delay_s(in_progress)
                if delay_s > 0.0:
                    await self._sleep(delay_s)
        finally:
            self.in_flight -= 1
        self.latency_summary.record_s(self._clock() - started_s)

        if self.options.error_rate > 0.0 and self._rng.random() < self.options.error_rate:
            self.errors_500 += 1
            return 500
        self._count_execution(key)
        return 200

    def _count_execution(self, key: str) -> None:
        executed = self.counts.get(key, 0) + 1
        self.counts[key] = executed
        self.executions_total += 1
        if executed == 2:
            self.duplicate_keys += 1

    def count_bad_request(self, problem: str) -> None:
        """Count a request rejected with 400, logging only the first few."""
        self.bad_requests += 1
        if self.bad_requests <= MAX_LOGGED_BAD_REQUESTS:
            logger.warning("Rejected execute request with 400: %s", problem)
            if self.bad_requests == MAX_LOGGED_BAD_REQUESTS:
                logger.warning("Further 400 responses are only counted in /stats bad_requests")

    def stats(self) -> dict[str, Any]:
        return {
            "executions_total": self.executions_total,
            "unique_keys": len(self.counts),
            "duplicate_keys": self.duplicate_keys,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "rejected_429": self.rejected_429,
            "errors_500": self.errors_500,
            "bad_requests": self.bad_requests,
            "calls_total": self.calls_total,
            "latency": self.latency_summary.snapshot_ms(),
            "settings": self.options.describe(),
            "cpu_seconds": time.process_time(),
        }


def build_server(stub: ExecutionStub, *, max_body_bytes: int = MAX_BODY_BYTES) -> HttpServer:
    """Build the HTTP server serving `stub`; `HttpServer.start` makes it listen."""

    async def handle_execute(request: Request) -> Response:
        key = request.headers.get("idempotency-key", "")
        problem = _check_execute_request(key, request.body)
        if problem is not None:
            stub.count_bad_request(problem)
            return Response.json(400, {"status": "invalid", "reason": problem})

        status = await stub.execute(key)
        if status == 200:
            return _FILLED
        return _REJECTED if status == 429 else _ERROR

    async def handle_stats(request: Request) -> Response:
        return Response.json(200, stub.stats())

    async def handle_keys(request: Request) -> Response:
        return Response.json(200, {"counts": stub.counts})

    async def handle_reset(request: Request) -> Response:
        stub.reset()
        logger.info("Counters reset by POST /reset; %d calls still in progress", stub.in_flight)
        return Response.json(200, {"status": "reset"})

    async def handle_healthz(request: Request) -> Response:
        return Response.json(200, {"status": "ok"})

    return HttpServer({
        ("POST", "/execute"): handle_execute,
        ("GET", "/stats"): handle_stats,
        ("GET", "/keys"): handle_keys,
        ("POST", "/reset"): handle_reset,
        ("GET", "/healthz"): handle_healthz,
    }, max_body_bytes=max_body_bytes)  # fmt: skip


def _check_execute_request(key: str, raw_body: bytes) -> str | None:
    """Return what is wrong with an execute request, or None when it follows the contract."""
    if not key:
        return "missing Idempotency-Key header: send <event_id>:<config_id>"
    try:
        body = json.loads(raw_body)
    except (ValueError, UnicodeDecodeError):
        return "request body is not valid JSON: send the copy trade as a JSON object"
    if not isinstance(body, dict):
        return "request body is not a JSON object: send the copy trade as a JSON object"
    body_key = body.get("idempotency_key")
    if body_key is not None and body_key != key:
        return (
            f"idempotency_key {body_key!r} in the body differs from the Idempotency-Key header "
            f"{key!r}: send the same key in both"
        )
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT,
        help=f"TCP port to listen on (default {DEFAULT_PORT}; 0 picks a free port and logs it)",
    )
    parser.add_argument(
        "--latency", choices=LATENCY_KINDS, default="fixed",
        help="distribution of the base latency of a call (default fixed)",
    )
    parser.add_argument(
        "--latency-ms", type=float, default=None,
        help="fixed latency, or mean of the exponential, in ms (default 0: respond at once)",
    )
    parser.add_argument(
        "--latency-median-ms", type=float, default=None,
        help="median of the lognormal latency in ms (required with --latency lognormal)",
    )
    parser.add_argument(
        "--latency-sigma", type=float, default=None,
        help="sigma of the lognormal latency, the standard deviation of its log (default 0.5)",
    )
    parser.add_argument(
        "--capacity", type=int, default=0,
        help="calls in progress before latency scales by n/capacity (default 0: unlimited)",
    )
    parser.add_argument(
        "--max-concurrency", type=int, default=None,
        help="calls in progress beyond which a call gets 429 (default 2*capacity; 0: no limit)",
    )
    parser.add_argument(
        "--error-rate", type=float, default=0.0,
        help="probability from 0 to 1 that an admitted call gets 500 (default 0)",
    )
    parser.add_argument(
        "--seed", type=int, default=None,
        help="seed of the stub's random generator (default: drawn at start and logged)",
    )


def main(args: argparse.Namespace) -> int:
    """Run the stub until SIGINT or SIGTERM, and return 2 on an invalid option."""
    try:
        options = build_options(args)
    except StubOptionError as error:
        print(f"supervisor execution-stub: {error}", file=sys.stderr)
        return 2

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve(options))
    return 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        logger.info("uvloop is not installed; using the default asyncio event loop")
        return None
    return uvloop.new_event_loop


async def serve(options: StubOptions, stop: asyncio.Event | None = None) -> None:
    """Serve the stub until `stop` is set, or until SIGINT or SIGTERM when `stop` is None."""
    stub = ExecutionStub(options)
    server = build_server(stub)
    port = await server.start(options.host, options.port)
    logger.info(
        "Execution stub listening on http://%s:%d with settings %s",
        options.host, port, json.dumps(options.describe()),
    )

    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signal_number, stop.set)
    try:
        await stop.wait()
    finally:
        await server.close()
        logger.info(
            "Execution stub stopped after %d executions, %d duplicate keys, %d responses 429, "
            "%d responses 500",
            stub.executions_total, stub.duplicate_keys, stub.rejected_429, stub.errors_500,
        )


if __name__ == "__main__":
    # `python -m supervisor.stub` runs the stub without building the other commands' parsers.
    _parser = argparse.ArgumentParser(prog="python -m supervisor.stub", description=__doc__)
    add_arguments(_parser)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    sys.exit(main(_parser.parse_args()))
