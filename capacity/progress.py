"""Progress of the capacity plan: numbered stages with elapsed time, written as lines.

`StageProgress` prints `[3/12] Calibrate the model` when a stage starts and
`[3/12] done in 4.2 s (total 61.0 s)` when it ends, so a long run shows where it is and where
the time went. The clock is injected, and every finished stage is kept in `durations_s` for the
report.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import TextIO

Clock = Callable[[], float]


class StageProgress:
    """Numbered stages of one run; `stage(title)` wraps each one in a `with` block."""

    def __init__(
        self,
        total_stages: int,
        *,
        stream: TextIO | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        if total_stages < 1:
            raise ValueError(f"total_stages={total_stages} is invalid: use 1 or more")
        self.total_stages = total_stages
        self._stream = stream
        self._clock = clock
        self._started_s = clock()
        self._number = 0
        self.durations_s: dict[str, float] = {}

    @property
    def elapsed_s(self) -> float:
        """Seconds since this progress object was made."""
        return self._clock() - self._started_s

    def print(self, message: str) -> None:
        """Write one line of detail under the current stage."""
        stream = self._stream if self._stream is not None else sys.stderr
        print(f"      {message}", file=stream, flush=True)

    @contextlib.contextmanager
    def stage(self, title: str) -> Iterator[None]:
        """Announce a stage, run the block, then write its duration (also when it fails)."""
        self._number += 1
        label = f"[{self._number}/{self.total_stages}]"
        self._write(f"{label} {title}")
        stage_started_s = self._clock()
        outcome = "failed after"
        try:
            yield
            outcome = "done in"
        finally:
            duration_s = self._clock() - stage_started_s
            self.durations_s[title] = duration_s
            self._write(f"{label} {outcome} {duration_s:.1f} s (total {self.elapsed_s:.1f} s)")

    def skip(self, title: str, reason: str) -> None:
        """Count a stage that does not run in this configuration, with the reason."""
        self._number += 1
        self._write(f"[{self._number}/{self.total_stages}] {title}: skipped ({reason})")

    def _write(self, line: str) -> None:
        stream = self._stream if self._stream is not None else sys.stderr
        print(line, file=stream, flush=True)
