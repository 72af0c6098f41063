"""Client of the execution service: one `POST /execute` per copy trade, with retries.

Each call carries the idempotency key `<event_id>:<config_id>`, in the `Idempotency-Key`
header and in the body, so a retried or redelivered copy trade cannot execute twice at a
service that honours the key. Timeouts, 429 and 5xx answers (and failed connections) are
retried, up to `max_attempts` attempts in all, waiting a uniformly drawn time between 0 and
`backoff_ms * 2**(attempt - 1)` ("full jitter") before each retry. Any other non-2xx answer
is final and counts as `rejected`.

Final outcomes: `success` (2xx), `rejected` (other 4xx and anything not retried), `timeout`
(the last attempt timed out) and `error` (the last attempt got 429, 5xx or no connection).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from dataclasses import dataclass
from typing import Protocol

from supervisor.clock import Clock
from supervisor.config_cache import CachedConfig
from supervisor.events import Event
from supervisor.http_pool import HttpClientError, HttpPool
from supervisor.metrics import ExecutionOutcome

logger = logging.getLogger(__name__)

_JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    """The final outcome of one copy trade and what it took to get there."""

    config_id: str
    outcome: ExecutionOutcome
    attempts: int
    status: int | None
    started_s: float
    duration_s: float


class Executor(Protocol):
    """Runs one copy trade to its final outcome; `ExecutionClient` is the real one."""

    async def execute(self, event: Event, config: CachedConfig) -> ExecutionResult: ...


def idempotency_key(event_id: str, config_id: str) -> str:
    """Return the key that makes a repeated copy trade harmless."""
    return f"{event_id}:{config_id}"


def request_body(event: Event, config: CachedConfig, key: str | None = None) -> bytes:
    """Return the JSON body of the execution call for one copy trade.

    `key` is the idempotency key when the caller has already built it.
    """
    if key is None:
        key = idempotency_key(event.event_id, config.id)
    return json.dumps(
        {
            "idempotency_key": key,
            "event_id": event.event_id,
            "config_id": config.id,
            "user_id": config.user_id,
            "channel": event.channel,
            "symbol": event.symbol,
            "side": event.side,
            "quantity": config.quantity_for(event.quantity),
            "price": event.price,
        }
    ).encode()


def is_retryable_status(status: int) -> bool:
    """Return True for answers worth retrying: 429 and every 5xx."""
    return status == 429 or status >= 500


class ExecutionClient:
    """Calls the execution service for copy trades over one shared connection pool."""

    def __init__(
        self,
        pool: HttpPool,
        clock: Clock,
        rng: random.Random,
        *,
        timeout_ms: int,
        max_attempts: int,
        backoff_ms: int,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._rng = rng
        self._timeout_s = timeout_ms / 1000
        self._max_attempts = max_attempts
        self._backoff_s = backoff_ms / 1000

    def backoff_s(self, attempt: int) -> float:
        """Return the wait before retrying after failed attempt number `attempt` (from 1)."""
        return self._rng.uniform(0.0, self._backoff_s * 2 ** (attempt - 1))

    async def _attempt(self, body: bytes, key: str) -> tuple[ExecutionOutcome, int | None]:
        headers = {**_JSON_HEADERS, "Idempotency-Key": key}
        try:
            status = await self._pool.post("/execute", body, headers, self._timeout_s)
        except TimeoutError:
            return "timeout", None
        except HttpClientError as error:
            logger.debug("Execution call %s failed: %s", key, error)
            return "error", None

        if 200 <= status < 300:
            return "success", status
        if is_retryable_status(status):
            return "error", status
        return "rejected", status

    async def execute(self, event: Event, config: CachedConfig) -> ExecutionResult:
        """Run one copy trade to its final outcome, retrying retryable failures."""
        key = idempotency_key(event.event_id, config.id)
        body = request_body(event, config, key)
        started_s = self._clock.monotonic()
        attempt = 0
        while True:
            attempt += 1
            outcome, status = await self._attempt(body, key)
            if outcome in ("success", "rejected") or attempt >= self._max_attempts:
                break
            wait_s = self.backoff_s(attempt)
            logger.debug(
                "Execution call %s: attempt %d of %d ended %s (status %s); retrying in %.3f s",
                key, attempt, self._max_attempts, outcome, status, wait_s,
            )  # fmt: skip
            await self._clock.sleep(wait_s)

        if outcome != "success":
            logger.debug("Execution call %s ended %s after %d attempts", key, outcome, attempt)
        return ExecutionResult(
            config_id=config.id,
            outcome=outcome,
            attempts=attempt,
            status=status,
            started_s=started_s,
            duration_s=self._clock.monotonic() - started_s,
        )


def build_pool(base_url: str, max_connections: int) -> HttpPool:
    """Build the one connection pool shared by all workers, bounded to `max_connections`."""
    return HttpPool(base_url, max_connections=max_connections)


async def run_fanout(
    client: Executor, event: Event, configs: tuple[CachedConfig, ...]
) -> list[ExecutionResult]:
    """Execute every copy trade of one event concurrently; results follow `configs` order."""
    if not configs:
        return []
    if len(configs) == 1:
        return [await client.execute(event, configs[0])]
    return list(await asyncio.gather(*(client.execute(event, c) for c in configs)))
