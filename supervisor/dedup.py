"""Event deduplication: one claim per event id, shared through Redis or kept in process.

An event's life in dedup has three steps:

- claim: `SET {prefix}{event_id} {instance_id} NX PX claim_ttl_ms`. Success is a dedup miss
  (this instance now owns the event); failure is a dedup hit (someone claimed it before).
- done: after processing, the value becomes `done` with `PX dedup_ttl_ms`, but only while the
  value is still this instance's id, so a claim that expired and was taken over elsewhere is
  not overwritten.
- release: when the event is dropped, failed or left unprocessed at shutdown, the key is
  deleted, again only while this instance owns it, so a redelivery can be claimed anew.

Operations issued in the same event-loop iteration are sent to Redis as one pipeline, so a
batch post, and many concurrent single posts, cost one round trip. When Redis cannot be
reached every operation raises `DedupUnavailable`; callers fail closed (see docs/service.md).
The client reconnects by itself, so dedup recovers as soon as Redis responds again.

Without Redis, `MemoryDedup` keeps the same three steps in a dict with expiry on the injected
clock. It is correct for one instance only.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from supervisor.clock import Clock

logger = logging.getLogger(__name__)

DONE_VALUE = "done"

_MARK_DONE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) and 1 or 0
end
return 0
"""

_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class DedupUnavailable(Exception):
    """The dedup store could not be reached, so no claim was made."""



class Dedup(Protocol):
    """Dedup store interface used by the ingest path and the workers."""

    backend: str

    async def claim_many(self, event_ids: Sequence[str]) -> list[bool]:
        """Claim each id; True means claimed now (miss), False means already claimed (hit)."""
        ...

    async def mark_done(self, event_id: str) -> None: ...

    async def release(self, event_id: str) -> None: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


class LogLimiter:
    """Lets a repeated log message through at most once per `interval_s`, counting the rest."""

    def __init__(self, clock: Clock, interval_s: float = 10.0) -> None:
        self._clock = clock
        self._interval_s = interval_s
        self._next_allowed_s = float("-inf")
        self.suppressed = 0

    def allow(self) -> int | None:
        """Return how many messages were suppressed since the last one, or None to stay quiet."""
        now = self._clock.monotonic()
        if now < self._next_allowed_s:
            self.suppressed += 1
            return None
        self._next_allowed_s = now + self._interval_s
        suppressed, self.suppressed = self.suppressed, 0
        return suppressed


class MemoryDedup:
    """In-process dedup for a single instance; entries expire on the injected clock."""

    backend = "memory"

    def __init__(
        self, clock: Clock, *, instance_id: str, claim_ttl_ms: int, done_ttl_ms: int
    ) -> None:
        self._clock = clock
        self._instance_id = instance_id
        self._claim_ttl_s = claim_ttl_ms / 1000
        self._done_ttl_s = done_ttl_ms / 1000
        # event_id -> (value, expires_at_s); roughly in expiry order, which the sweep relies on.
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _live_value(self, event_id: str, now: float) -> str | None:
        entry = self._entries.get(event_id)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._entries[event_id]
            return None
        return entry[0]

    def _sweep(self, now: float) -> None:
        # NOTE: the sweep stops at the first live entry. An expired entry behind it is still
        # treated as expired on lookup, so it only takes memory until the sweep reaches it.
        while self._entries:
            event_id, (_, expires_at) = next(iter(self._entries.items()))
            if expires_at > now:
                return
            del self._entries[event_id]

    async def claim_many(self, event_ids: Sequence[str]) -> list[bool]:
        now = self._clock.monotonic()
        self._sweep(now)
        results = []
        for event_id in event_ids:
            if self._live_value(event_id, now) is not None:
                results.append(False)
                continue
            self._entries[event_id] = (self._instance_id, now + self._claim_ttl_s)
            results.append(True)
        return results

    async def mark_done(self, event_id: str) -> None:
        now = self._clock.monotonic()
        if self._live_value(event_id, now) == self._instance_id:
            self._entries[event_id] = (DONE_VALUE, now + self._done_ttl_s)
            self._entries.move_to_end(event_id)

    async def release(self, event_id: str) -> None:
        if self._live_value(event_id, self._clock.monotonic()) == self._instance_id:
            del self._entries[event_id]

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._entries.clear()


OpKind = Literal["claim", "done", "release"]


@dataclass(slots=True)
class _Op:
    kind: OpKind
    event_id: str
    future: asyncio.Future[bool] = field(repr=False)


class RedisDedup:
    """Dedup shared by every instance through Redis, with operations pipelined per loop turn."""

    backend = "redis"

    def __init__(
        self,
        client: aioredis.Redis,
        clock: Clock,
        *,
        instance_id: str,
        key_prefix: str,
        claim_ttl_ms: int,
        done_ttl_ms: int,
    ) -> None:
        self._client = client
        self._instance_id = instance_id
        self._prefix = key_prefix
        self._claim_ttl_ms = claim_ttl_ms
        self._done_ttl_ms = done_ttl_ms
        self._mark_done_script = client.register_script(_MARK_DONE_LUA)
        self._release_script = client.register_script(_RELEASE_LUA)
        self._pending: list[_Op] = []
        self._flush_tasks: set[asyncio.Task[None]] = set()
        self._error_log = LogLimiter(clock)
        self.available = True

    @classmethod
    def from_url(
        cls,
        url: str,
        clock: Clock,
        *,
        instance_id: str,
        key_prefix: str,
        claim_ttl_ms: int,
        done_ttl_ms: int,
        socket_timeout_s: float = 0.5,
    ) -> RedisDedup:
        """Build a dedup store with short socket timeouts and one quick retry on reconnect."""
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            retry=Retry(ExponentialBackoff(cap=0.05, base=0.005), retries=1),
            decode_responses=True,
        )
        return cls(
            client,
            clock,
            instance_id=instance_id,
            key_prefix=key_prefix,
            claim_ttl_ms=claim_ttl_ms,
            done_ttl_ms=done_ttl_ms,
        )

    def key(self, event_id: str) -> str:
        """Return the Redis key of an event id."""
        return self._prefix + event_id

    def _submit(self, kind: OpKind, event_id: str) -> asyncio.Future[bool]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        if not self._pending:
            # The flush task first runs on the next loop turn, so every operation issued
            # before then joins the same pipeline.
            task = loop.create_task(self._flush())
            self._flush_tasks.add(task)
            task.add_done_callback(self._flush_tasks.discard)
        self._pending.append(_Op(kind, event_id, future))
        return future

    async def claim_many(self, event_ids: Sequence[str]) -> list[bool]:
        futures = [self._submit("claim", event_id) for event_id in event_ids]
        return list(await asyncio.gather(*futures))

    async def mark_done(self, event_id: str) -> None:
        await self._submit("done", event_id)

    async def release(self, event_id: str) -> None:
        await self._submit("release", event_id)

    async def _queue_op(self, pipe: aioredis.client.Pipeline, op: _Op) -> None:
        key = self.key(op.event_id)
        if op.kind == "claim":
            pipe.set(key, self._instance_id, nx=True, px=self._claim_ttl_ms)
        elif op.kind == "done":
            await self._mark_done_script(
                keys=[key], args=[self._instance_id, DONE_VALUE, self._done_ttl_ms], client=pipe
            )
        else:
            await self._release_script(keys=[key], args=[self._instance_id], client=pipe)

    async def _flush(self) -> None:
        ops, self._pending = self._pending, []
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for op in ops:
                    await self._queue_op(pipe, op)
                replies = await pipe.execute()
        except (RedisError, OSError) as error:
            self._fail(ops, error)
            return
        self._recovered()
        for op, reply in zip(ops, replies, strict=True):
            if not op.future.done():
                op.future.set_result(bool(reply))

    def _fail(self, ops: list[_Op], error: Exception) -> None:
        self.available = False
        suppressed = self._error_log.allow()
        if suppressed is not None:
            logger.error(
                "Redis dedup failed for %d operations (%s); events are refused until Redis "
                "answers (%d similar errors suppressed)",
                len(ops),
                error,
                suppressed,
            )
        for op in ops:
            if not op.future.done():
                op.future.set_exception(DedupUnavailable(str(error)))

    def _recovered(self) -> None:
        if not self.available:
            self.available = True
            logger.warning("Redis dedup answers again; accepting events")

    async def ping(self) -> bool:
        """Return True when Redis answers PING; updates `available` either way."""
        try:
            await self._client.ping()
        except (RedisError, OSError) as error:
            self.available = False
            logger.debug("Redis dedup ping failed: %s", error)
            return False
        self._recovered()
        return True

    async def close(self) -> None:
        if self._flush_tasks:
            await asyncio.gather(*self._flush_tasks, return_exceptions=True)
        await self._client.aclose()
