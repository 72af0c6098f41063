"""Ring buffer of per-event and per-execution timing records, served by `GET /timings`.

Every finished event (processed, failed or dropped after it was queued) and every execution
call adds one record with a sequence number shared by both kinds, so a reader pages through
them with `after=<last seq seen>` and learns from `dropped_records` how many it missed because
the ring wrapped. Times are Unix seconds built from one wall-clock reading at start plus
monotonic offsets, so they line up with other processes' Unix timestamps without jumping when
the wall clock is adjusted.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Any

from supervisor.clock import Clock

Record = dict[str, Any]



class UnixTimeBase:
    """Converts monotonic readings to Unix seconds from one wall-clock reading at start."""

    def __init__(self, clock: Clock) -> None:
        self.start_monotonic_s = clock.monotonic()
        self.start_unix_s = clock.time()

    def unix(self, monotonic_s: float) -> float:
        """Return the Unix time of a monotonic reading."""
        return self.start_unix_s + (monotonic_s - self.start_monotonic_s)


class TimingsBuffer:
    """Keeps the last `size` records; `size == 0` keeps none."""

    def __init__(self, size: int) -> None:
        self.size = size
        # Kinds and records sit in two parallel rings rather than one ring of (kind, record)
        # pairs. A record contains only strings and numbers, so the garbage collector stops
        # tracking it. A tuple that contains a dict stays tracked for good, and a full ring of
        # them made every older-generation collection scan each record, which stalled the
        # event loop for milliseconds at a time.
        maxlen = size if size > 0 else 1
        self._kinds: deque[str] = deque(maxlen=maxlen)
        self._records: deque[Record] = deque(maxlen=maxlen)
        self._last_seq = 0

    @property
    def last_seq(self) -> int:
        """Sequence number of the newest record, 0 before the first."""
        return self._last_seq

    def _append(self, kind: str, record: Record) -> None:
        if self.size == 0:
            return
        self._last_seq += 1
        record["seq"] = self._last_seq
        self._kinds.append(kind)
        self._records.append(record)

    def add_event(
        self,
        *,
        event_id: str,
        channel: str,
        outcome: str,
        received_unix_s: float,
        enqueued_unix_s: float,
        started_unix_s: float | None,
        finished_unix_s: float | None,
        fanout: int,
    ) -> None:
        """Record one finished event; started and finished are None for a dropped event."""
        self._append(
            "events",
            {
                "seq": 0,
                "event_id": event_id,
                "channel": channel,
                "outcome": outcome,
                "received_unix_s": received_unix_s,
                "enqueued_unix_s": enqueued_unix_s,
                "started_unix_s": started_unix_s,
                "finished_unix_s": finished_unix_s,
                "fanout": fanout,
            },
        )

    def add_execution(
        self,
        *,
        event_id: str,
        config_id: str,
        started_unix_s: float,
        duration_s: float,
        outcome: str,
        attempts: int,
        status: int | None,
    ) -> None:
        """Record one execution call with its final outcome and HTTP status (None if none)."""
        self._append(
            "executions",
            {
                "seq": 0,
                "event_id": event_id,
                "config_id": config_id,
                "started_unix_s": started_unix_s,
                "duration_s": duration_s,
                "outcome": outcome,
                "attempts": attempts,
                "status": status,
            },
        )

    def page(self, after: int, limit: int) -> dict[str, Any]:
        """Return up to `limit` records with seq above `after`, oldest first, for `/timings`."""
        page: dict[str, Any] = {"next": after, "dropped_records": 0, "events": [], "executions": []}
        if not self._records or after >= self._last_seq:
            return page

        first_seq = self._last_seq - len(self._records) + 1
        start_seq = max(after + 1, first_seq)
        page["dropped_records"] = start_seq - (after + 1)

        skip = start_seq - first_seq
        selected = zip(itertools.islice(self._kinds, skip, None),
                       itertools.islice(self._records, skip, None), strict=True)  # fmt: skip
        for kind, record in itertools.islice(selected, max(0, limit)):
            page[kind].append(record)
            page["next"] = record["seq"]
        if page["next"] == after:
            page["next"] = start_seq - 1
        return page
