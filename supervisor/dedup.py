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
batch post, and many concurrent single posts, cost one round trip. Workers settle their claims
with `settle_later`, which does not wait: the done mark or release rides in the next claim's
pipeline, or goes on its own after `SETTLE_DELAY_S` when no claim comes first. Under load that
halves the round trips per event, and no worker waits on Redis after its event. Done and
release are Lua scripts called with `EVALSHA`. The first pipeline that needs them loads them in
the same round trip, and so does the retry after a `NOSCRIPT` reply (Redis restarted or lost
its script cache). Pipelines go through `supervisor.resp.PipelinedRedis`, one lean
connection that fails a pipeline whose replies take longer than `timeout_s`. When Redis cannot
be reached or does not reply in time, every operation raises `DedupUnavailable`, and callers
fail closed (see docs/service.md). The connection is opened again on the next operation, so
dedup recovers as soon as Redis responds again.

Without Redis, `MemoryDedup` keeps the same three steps in a dict with expiry on the injected
clock. It is correct for one instance only.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from supervisor.clock import Clock
from supervisor.resp import PipelinedRedis, RedisConnectionError, is_error, is_noscript

logger = logging.getLogger(__name__)

DONE_VALUE = "done"
# Maximum wait of a deferred done mark or release for a claim pipeline to ride in.
SETTLE_DELAY_S = 0.005

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

    def settle_later(self, event_id: str, *, done: bool) -> None:
        """Mark done (`done=True`) or release without waiting; a failure is logged, not raised."""
        ...

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

    def settle_later(self, event_id: str, *, done: bool) -> None:
        # In process there is no round trip to save, so the change is made at once.
        now = self._clock.monotonic()
        if self._live_value(event_id, now) != self._instance_id:
            return
        if done:
            self._entries[event_id] = (DONE_VALUE, now + self._done_ttl_s)
            self._entries.move_to_end(event_id)
        else:
            del self._entries[event_id]

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._entries.clear()


OpKind = Literal["claim", "done", "release"]
Command = tuple[OpKind, str]


@dataclass(slots=True)
class _Op:
    """The operations of one call; its future gets one result per event id, in order."""

    kind: OpKind
    event_ids: Sequence[str]
    future: asyncio.Future[list[bool]] = field(repr=False)


def _script_sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


def _finish(flushed: asyncio.Future[None], *_: object) -> None:
    if not flushed.done():
        flushed.set_result(None)


def _describe(error: BaseException) -> str:
    # A timeout from `asyncio.timeout` has an empty message.
    return str(error) or type(error).__name__


class RedisDedup:
    """Dedup shared by every instance through Redis, with operations pipelined per loop turn."""

    backend = "redis"

    def __init__(
        self,
        client: PipelinedRedis,
        clock: Clock,
        *,
        instance_id: str,
        key_prefix: str,
        claim_ttl_ms: int,
        done_ttl_ms: int,
        timeout_s: float = 2.0,
    ) -> None:
        self._client = client
        self._instance_id = instance_id
        self._prefix = key_prefix
        self._claim_ttl_ms = claim_ttl_ms
        self._done_ttl_ms = done_ttl_ms
        self._timeout_s = timeout_s
        self._script_shas: dict[OpKind, str] = {
            "done": _script_sha(_MARK_DONE_LUA),
            "release": _script_sha(_RELEASE_LUA),
        }
        self._scripts_loaded = False
        self._pending: list[_Op] = []
        self._deferred: list[Command] = []
        self._deferred_timer: asyncio.TimerHandle | None = None
        # One future per flush from the moment it is scheduled until its replies are handled.
        self._flushes: set[asyncio.Future[None]] = set()
        self._error_log = LogLimiter(clock)
        self._settle_log = LogLimiter(clock)
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
        timeout_s: float = 2.0,
    ) -> RedisDedup:
        """Build a dedup store whose connects and pipelines time out after `timeout_s`.

        The bound covers a whole pipeline, including waits for a busy event loop. At 0.5 s,
        batches of 100 from 64 connections on a loaded 2-core machine hit it and were refused.
        A URL that cannot be used raises `supervisor.resp.RedisUrlError`.
        """
        return cls(
            PipelinedRedis.from_url(url, connect_timeout_s=timeout_s, reply_timeout_s=timeout_s),
            clock,
            instance_id=instance_id,
            key_prefix=key_prefix,
            claim_ttl_ms=claim_ttl_ms,
            done_ttl_ms=done_ttl_ms,
            timeout_s=timeout_s,
        )

    def key(self, event_id: str) -> str:
        """Return the Redis key of an event id."""
        return self._prefix + event_id

    def _submit(self, kind: OpKind, event_ids: Sequence[str]) -> asyncio.Future[list[bool]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[bool]] = loop.create_future()
        if not self._pending:
            self._start_flush(loop)
        self._pending.append(_Op(kind, event_ids, future))
        return future

    def _start_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        # The flush runs on the next loop turn, so every operation issued before then joins
        # the same pipeline, and so do the deferred settlements waiting now.
        if self._deferred_timer is not None:
            self._deferred_timer.cancel()
            self._deferred_timer = None
        flushed: asyncio.Future[None] = loop.create_future()
        self._flushes.add(flushed)
        flushed.add_done_callback(self._flushes.discard)
        loop.call_soon(self._flush, flushed)

    def settle_later(self, event_id: str, *, done: bool) -> None:
        self._deferred.append(("done" if done else "release", event_id))
        if self._pending or self._deferred_timer is not None:
            return  # a flush is already on its way
        loop = asyncio.get_running_loop()
        self._deferred_timer = loop.call_later(SETTLE_DELAY_S, self._flush_deferred, loop)

    def _flush_deferred(self, loop: asyncio.AbstractEventLoop) -> None:
        self._deferred_timer = None
        if self._deferred and not self._pending:
            self._start_flush(loop)

    async def claim_many(self, event_ids: Sequence[str]) -> list[bool]:
        if not event_ids:
            return []
        return await self._submit("claim", event_ids)

    async def mark_done(self, event_id: str) -> None:
        await self._submit("done", (event_id,))

    async def release(self, event_id: str) -> None:
        await self._submit("release", (event_id,))

    def _command(self, kind: OpKind, event_id: str) -> tuple[str | int, ...]:
        key = self.key(event_id)
        if kind == "claim":
            # The reply is OK when the claim was made, and nil when NX found the key.
            return ("SET", key, self._instance_id, "NX", "PX", self._claim_ttl_ms)
        if kind == "done":
            sha = self._script_shas["done"]
            return ("EVALSHA", sha, 1, key, self._instance_id, DONE_VALUE, self._done_ttl_ms)
        return ("EVALSHA", self._script_shas["release"], 1, key, self._instance_id)

    async def _execute(self, commands: list[Command]) -> list[Any]:
        """Send `commands` as one pipeline and return one reply (or error reply) per command.

        The scripts are loaded at the head of the pipeline until a load has succeeded.
        """
        load_scripts = not self._scripts_loaded and any(k != "claim" for k, _ in commands)
        wire = [self._command(kind, event_id) for kind, event_id in commands]
        if load_scripts:
            wire[:0] = [("SCRIPT", "LOAD", _MARK_DONE_LUA), ("SCRIPT", "LOAD", _RELEASE_LUA)]
        replies = await self._client.execute(wire)  # bounded by the client's reply timeout
        if not load_scripts:
            return replies

        for reply in replies[:2]:
            if is_error(reply):
                raise RedisConnectionError(f"SCRIPT LOAD of the dedup scripts failed: {reply}")
        self._scripts_loaded = True
        return replies[2:]

    async def _execute_reloading(self, commands: list[Command]) -> list[Any]:
        """Run `_execute`, then rerun once the script calls that Redis rejected with `NOSCRIPT`."""
        return await self._reload_missing(commands, await self._execute(commands))

    async def _reload_missing(self, commands: list[Command], replies: list[Any]) -> list[Any]:
        """Rerun once the script calls that Redis rejected with `NOSCRIPT`, loading the scripts."""
        missing = [i for i, reply in enumerate(replies) if is_noscript(reply)]
        if not missing:
            return replies

        logger.info("Redis lost the dedup scripts (restart or SCRIPT FLUSH); loading them again")
        self._scripts_loaded = False
        retried = await self._execute([commands[i] for i in missing])
        for index, reply in zip(missing, retried, strict=True):
            replies[index] = reply
        return replies

    def _flush(self, flushed: asyncio.Future[None]) -> None:
        """Send the pending operations and deferred settlements as one pipeline.

        With the connection open and the scripts loaded (or only claims to send), the pipeline
        is written at once and its replies handled in a callback. Otherwise a task connects,
        loads the scripts and then sends it. Each costs a few microseconds per pipeline, and
        when events arrive one at a time each event has a pipeline of its own.
        """
        ops, self._pending = self._pending, []
        deferred, self._deferred = self._deferred, []
        commands = [(op.kind, event_id) for op in ops for event_id in op.event_ids]
        commands += deferred
        if not commands:
            _finish(flushed)
            return
        sent = None
        if self._scripts_loaded or all(kind == "claim" for kind, _ in commands):
            sent = self._client.send_now([self._command(kind, key) for kind, key in commands])
        if sent is None:
            task = asyncio.get_running_loop().create_task(self._flush_slowly(ops, deferred,
                                                                              commands))
            task.add_done_callback(functools.partial(_finish, flushed))
            return
        sent.add_done_callback(
            functools.partial(self._on_replies, ops, deferred, commands, flushed)
        )

    def _on_replies(self, ops: list[_Op], deferred: list[Command], commands: list[Command],
                    flushed: asyncio.Future[None], sent: asyncio.Future[list[Any]]) -> None:
        try:
            replies = sent.result()
        except (RedisConnectionError, OSError, TimeoutError, asyncio.CancelledError) as error:
            self._flush_failed(ops, deferred, error)
            _finish(flushed)
            return
        if any(is_noscript(reply) for reply in replies):
            task = asyncio.get_running_loop().create_task(
                self._flush_slowly(ops, deferred, commands, replies)
            )
            task.add_done_callback(functools.partial(_finish, flushed))
            return
        self._settle_replies(ops, deferred, replies)
        _finish(flushed)

    async def _flush_slowly(self, ops: list[_Op], deferred: list[Command],
                            commands: list[Command], replies: list[Any] | None = None) -> None:
        """Send `commands` (or rerun the `NOSCRIPT` ones of `replies`) and handle the replies."""
        try:
            if replies is None:
                replies = await self._execute_reloading(commands)
            else:
                replies = await self._reload_missing(commands, replies)
        except (RedisConnectionError, OSError, TimeoutError) as error:
            self._flush_failed(ops, deferred, error)
            return
        self._settle_replies(ops, deferred, replies)

    def _flush_failed(self, ops: list[_Op], deferred: list[Command],
                      error: BaseException) -> None:  # fmt: skip
        if ops:
            self._fail(ops, error)
        else:
            self.available = False
        self._log_settle_failure([event_id for _, event_id in deferred], error)

    def _settle_replies(self, ops: list[_Op], deferred: list[Command],
                        replies: list[Any]) -> None:  # fmt: skip
        """Resolve each operation's future and log the settlements that Redis rejected."""
        self._recovered()

        start = 0
        for op in ops:
            end = start + len(op.event_ids)
            self._resolve(op, replies[start:end])
            start = end
        failed = [
            (event_id, reply)
            for (_, event_id), reply in zip(deferred, replies[start:], strict=True)
            if is_error(reply)
        ]
        if failed:
            self._log_settle_failure([event_id for event_id, _ in failed], failed[0][1])

    def _log_settle_failure(self, event_ids: list[str], error: BaseException) -> None:
        if not event_ids:
            return
        suppressed = self._settle_log.allow()
        if suppressed is not None:
            logger.error(
                "Could not mark done or release %d dedup claims (%s), first event %s. They "
                "expire after the claim TTL instead (%d similar errors suppressed)",
                len(event_ids),
                _describe(error),
                event_ids[0],
                suppressed,
            )

    def _resolve(self, op: _Op, replies: list[Any]) -> None:
        if op.future.done():
            return
        error = next((r for r in replies if is_error(r)), None)
        if error is None:
            op.future.set_result([bool(reply) for reply in replies])
        else:
            self._fail([op], error)

    def _fail(self, ops: list[_Op], error: BaseException) -> None:
        self.available = False
        suppressed = self._error_log.allow()
        if suppressed is not None:
            logger.error(
                "Redis dedup failed for %d operations (%s). Events are rejected until Redis "
                "responds again (%d similar errors suppressed)",
                sum(len(op.event_ids) for op in ops),
                _describe(error),
                suppressed,
            )
        for op in ops:
            if not op.future.done():
                op.future.set_exception(DedupUnavailable(_describe(error)))

    def _recovered(self) -> None:
        if not self.available:
            self.available = True
            logger.warning("Redis dedup responds again; accepting events")

    async def ping(self) -> bool:
        """Check that Redis replies to PING in time, update `available`, and return the result."""
        try:
            async with asyncio.timeout(self._timeout_s):
                (reply,) = await self._client.execute([("PING",)])
            if is_error(reply):
                raise RedisConnectionError(f"PING returned an error: {reply}")
        except (RedisConnectionError, OSError, TimeoutError) as error:
            self.available = False
            logger.debug("Redis dedup ping failed: %r", error)
            return False
        self._recovered()
        return True

    async def close(self) -> None:
        """Send the deferred settlements, wait for every pipeline, then close the client."""
        if self._deferred and not self._pending:
            self._start_flush(asyncio.get_running_loop())
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)
        await self._client.close()
