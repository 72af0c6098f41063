"""The clock the smoke run measures and waits with, injected so tests can replace it."""

from __future__ import annotations

import time
from typing import Protocol


class SmokeClock(Protocol):
    """Monotonic time for intervals, wall-clock time for metric timestamps, and sleeping."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemSmokeClock:
    """The process's real clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))
