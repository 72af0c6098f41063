"""The bounded FIFO queue between ingest and the worker pool.

Queue depth counts the events waiting here, not those already held by workers. Capacity is
`SUPERVISOR_QUEUE_MAX_SIZE`: an event offered when depth equals capacity is refused at once
(the caller drops it), never blocked, so ingest stays fast under overload and the drop shows
in the metrics. Each entry remembers when it was enqueued, so the age of the oldest waiting
event is known at any time.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

from supervisor.clock import Clock

T = TypeVar("T")



class QueueClosed(Exception):
    """The queue was closed while a worker waited on it."""


class WorkQueue(Generic[T]):
    """A bounded FIFO that refuses, rather than waits, when full."""

    def __init__(self, capacity: int, clock: Clock) -> None:
        if capacity < 1:
            raise ValueError(f"capacity={capacity} is invalid: it must be at least 1")
        self.capacity = capacity
        self._clock = clock
        self._items: deque[tuple[float, T]] = deque()
        self._getters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    @property
    def depth(self) -> int:
        """Number of events waiting, not counting those held by workers."""
        return len(self._items)

    def oldest_age_s(self) -> float:
        """Seconds the oldest waiting event has waited; 0.0 when the queue is empty."""
        if not self._items:
            return 0.0
        return max(0.0, self._clock.monotonic() - self._items[0][0])

    def offer(self, item: T, enqueued_at_s: float) -> bool:
        """Append `item`; return False (and keep nothing) when depth equals capacity or closed."""
        if self._closed or len(self._items) >= self.capacity:
            return False
        self._items.append((enqueued_at_s, item))
        self._wake_one_getter()
        return True

    def _wake_one_getter(self) -> None:
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
                return

    async def get(self) -> T:
        """Wait for and remove the oldest item; raises `QueueClosed` once closed and empty."""
        while not self._items:
            if self._closed:
                raise QueueClosed
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except asyncio.CancelledError:
                # Pass a wake-up this getter received, but cannot use, on to the next one.
                if getter.done() and not getter.cancelled() and self._items:
                    self._wake_one_getter()
                raise
        return self._items.popleft()[1]

    def drain_nowait(self) -> list[T]:
        """Remove and return every waiting item, oldest first."""
        items = [item for _, item in self._items]
        self._items.clear()
        return items

    def close(self) -> None:
        """Refuse further offers and wake every waiting getter once the queue is empty."""
        self._closed = True
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
