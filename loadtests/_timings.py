"""Paging through a supervisor's `/timings` ring buffer into the bundle's timing CSVs.

Events and execution calls share one sequence; `after=<last seq seen>` returns the next
records, and `dropped_records` counts those the ring overwrote before they were read. The
pager first skips what the buffer held before the run (records of earlier runs), then reads
during the run every few seconds so a long run loses as little as possible to the ring.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, TextIO

EVENT_COLUMNS = (
    "target",
    "seq",
    "event_id",
    "channel",
    "outcome",
    "received_unix_s",
    "enqueued_unix_s",
    "started_unix_s",
    "finished_unix_s",
    "fanout",
)
EXECUTION_COLUMNS = (
    "target",
    "seq",
    "event_id",
    "config_id",
    "started_unix_s",
    "duration_s",
    "outcome",
    "attempts",
    "status",
)
PAGE_LIMIT = 5000

FetchJson = Callable[[str], Mapping[str, Any]]


class LatencyHistogram:
    """Log-spaced histogram of latencies with about 1% relative resolution, for p95 at scale."""

    _GROWTH = 1.01

    def __init__(self) -> None:
        self._buckets: Counter[int] = Counter()
        self.count = 0

    def add(self, value_s: float) -> None:
        value_ms = max(value_s * 1000.0, 0.001)
        self._buckets[math.ceil(math.log(value_ms, self._GROWTH))] += 1
        self.count += 1

    def quantile_s(self, fraction: float) -> float | None:
        """Return the upper bound of the bucket holding the quantile, or None when empty."""
        if self.count == 0:
            return None
        rank = math.ceil(self.count * fraction)
        seen = 0
        for bucket in sorted(self._buckets):
            seen += self._buckets[bucket]
            if seen >= rank:
                return float(self._GROWTH**bucket / 1000.0)
        return None


def end_to_end_s(record: Mapping[str, Any]) -> float | None:
    """Return finished minus received for a processed or failed event, else None."""
    if record.get("outcome") not in ("processed", "failed"):
        return None
    finished, received = record.get("finished_unix_s"), record.get("received_unix_s")
    if finished is None or received is None:
        return None
    return float(finished) - float(received)


class TimingsPager:
    """Reads one target's `/timings` pages and appends them to the two CSV writers."""

    def __init__(
        self,
        target: str,
        fetch_json: FetchJson,
        events_file: TextIO,
        executions_file: TextIO,
        histogram: LatencyHistogram,
    ) -> None:
        self.target = target
        self._fetch_json = fetch_json
        self._events = csv.writer(events_file)
        self._executions = csv.writer(executions_file)
        self._histogram = histogram
        self.cursor = 0
        self.dropped_records = 0
        self.skipped_before_run = 0
        self.events_read = 0
        self.executions_read = 0

    def _page(self) -> Mapping[str, Any]:
        return self._fetch_json(f"{self.target}/timings?after={self.cursor}&limit={PAGE_LIMIT}")

    def skip_existing(self) -> None:
        """Move the cursor past every record the buffer holds now, without writing them."""
        while True:
            page = self._page()
            records = len(page.get("events", [])) + len(page.get("executions", []))
            if records == 0:
                return
            self.skipped_before_run += records
            self.cursor = int(page["next"])

    def read_available(self) -> int:
        """Write every record after the cursor; return how many were written."""
        written = 0
        while True:
            page = self._page()
            events, executions = page.get("events", []), page.get("executions", [])
            if not events and not executions:
                return written
            self.dropped_records += int(page.get("dropped_records", 0))
            for record in events:
                self._events.writerow([self.target, *(record.get(c) for c in EVENT_COLUMNS[1:])])
                latency_s = end_to_end_s(record)
                if latency_s is not None:
                    self._histogram.add(latency_s)
            for record in executions:
                row = [self.target, *(record.get(c) for c in EXECUTION_COLUMNS[1:])]
                self._executions.writerow(row)
            self.events_read += len(events)
            self.executions_read += len(executions)
            written += len(events) + len(executions)
            self.cursor = int(page["next"])
