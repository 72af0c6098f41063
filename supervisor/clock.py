"""Clocks: the one place the supervisor reads time or waits for it.

Components take a `Clock` so tests can drive them with `FakeClock` instead of real time.
`monotonic()` measures intervals and schedules work; `time()` is the wall clock, used only for
timestamps that leave the process (metrics, logs, timings). A `FakeClock` moves only when a test
calls `advance`, and it wakes sleepers in deadline order, each seeing `monotonic()` equal to its
own deadline.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Protocol


class Clock(Protocol):
    """Monotonic time, wall-clock time and sleeping, all in seconds."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clocks of the process: `time.monotonic`, `time.time` and `asyncio.sleep`."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


@dataclass(order=True)
class _Sleeper:
    deadline_s: float
    sequence: int
    future: asyncio.Future[None] = field(compare=False)


class FakeClock:
    """A clock for tests that moves only when the test calls `advance`.

    `time()` is `start_unix_s` plus the monotonic time elapsed since the clock was made, so both
    clocks move together.
    """

    def __init__(self, *, start_monotonic_s: float = 0.0, start_unix_s: float = 1.7e9) -> None:
        self._start_monotonic_s = start_monotonic_s
        self._now_s = start_monotonic_s
        self._start_unix_s = start_unix_s
        self._sleepers: list[_Sleeper] = []
        self._sequence = 0
        self._sleep_registered = asyncio.Event()

    def monotonic(self) -> float:
        return self._now_s

    def time(self) -> float:
        return self._start_unix_s + (self._now_s - self._start_monotonic_s)

    @property
    def sleepers(self) -> int:
        """Number of coroutines currently blocked in `sleep`."""
        return sum(1 for sleeper in self._sleepers if not sleeper.future.done())

    async def sleep(self, seconds: float) -> None:
        """Block until `advance` moves the clock to now plus `seconds`."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sequence += 1
        sleeper = _Sleeper(self._now_s + seconds, self._sequence, future)
        self._sleepers.append(sleeper)
        self._sleep_registered.set()
        try:
            await future
        finally:
            if sleeper in self._sleepers:
                self._sleepers.remove(sleeper)

    async def advance(self, seconds: float) -> None:
        """Move the clock forward by `seconds`, waking due sleepers in deadline order.

        Before each wake the clock is set to that sleeper's deadline. After it, the event loop
        runs once so the woken coroutine can proceed to its next await.
        """
        if seconds < 0:
            raise ValueError(f"cannot move a clock backwards: seconds={seconds}")
        target_s = self._now_s + seconds
        while True:
            due = [s for s in self._sleepers if not s.future.done() and s.deadline_s <= target_s]
            if not due:
                break
            sleeper = min(due)
            self._sleepers.remove(sleeper)
            self._now_s = max(self._now_s, sleeper.deadline_s)
            sleeper.future.set_result(None)
            await asyncio.sleep(0)
        self._now_s = target_s

    async def wait_for_sleepers(self, count: int = 1) -> None:
        """Return once at least `count` coroutines are blocked in `sleep`.

        Tests call it after `advance` to wait until a woken loop has finished its work (which
        may run in a thread) and is sleeping again.
        """
        while self.sleepers < count:
            self._sleep_registered.clear()
            await self._sleep_registered.wait()
