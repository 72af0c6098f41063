"""Signal events for the load: channels by Zipf-like popularity, unique ids, chosen duplicates.

Each user owns one `EventSource` with its own seeded generator, so a run is repeatable from its
seeds. Event ids are `<run_id>-w<worker>-u<user>-<n>`: unique within a run across every worker
and user, and across runs because the run id is new each run (the supervisor's dedup keeps ids
for a day). A duplicate re-sends one of the user's recent events unchanged, as a feed that
retries would.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import random
from collections import deque
from collections.abc import Sequence
from typing import Any

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "BNBUSDT")
RECENT_EVENTS_KEPT = 256


def derive_seed(base_seed: int, *labels: int | str) -> int:
    """Return a 63-bit seed for one worker or user, stable across Python versions and runs."""
    text = ":".join(str(part) for part in (base_seed, *labels))
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class ZipfChannelChooser:
    """Pick channels with weight 1 / (rank + 1) ** exponent; rank 0 is the most popular."""

    def __init__(self, channels: Sequence[str], exponent: float) -> None:
        if not channels:
            raise ValueError("no channels to send events to: seed configs or pass --channels")
        if exponent < 0:
            raise ValueError(f"--zipf-exponent={exponent} is invalid: set 0 or more")
        self.channels = list(channels)
        weights = [1.0 / (rank + 1) ** exponent for rank in range(len(self.channels))]
        self._cumulative = list(itertools.accumulate(weights))
        self.probabilities = [weight / self._cumulative[-1] for weight in weights]

    def choose(self, rng: random.Random) -> str:
        point = rng.random() * self._cumulative[-1]
        index = bisect.bisect_right(self._cumulative, point)
        return self.channels[min(index, len(self.channels) - 1)]


class EventSource:
    """Builds the events of one user: new ones, and duplicates at `duplicate_ratio`."""

    def __init__(
        self,
        *,
        id_prefix: str,
        chooser: ZipfChannelChooser,
        duplicate_ratio: float,
        rng: random.Random,
    ) -> None:
        if not 0.0 <= duplicate_ratio <= 1.0:
            raise ValueError(f"--duplicate-ratio={duplicate_ratio} is invalid: set 0 to 1")
        self._id_prefix = id_prefix
        self._chooser = chooser
        self._duplicate_ratio = duplicate_ratio
        self._rng = rng
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS_KEPT)
        self._counter = itertools.count()
        self.new_events = 0
        self.duplicate_events = 0

    def next_event(self, emitted_at: str) -> dict[str, Any]:
        """Return a duplicate of a recent event with the duplicate ratio, else a new event."""
        if self._recent and self._rng.random() < self._duplicate_ratio:
            self.duplicate_events += 1
            return self._recent[self._rng.randrange(len(self._recent))]

        event = self._new_event(emitted_at)
        self._recent.append(event)
        self.new_events += 1
        return event

    def _new_event(self, emitted_at: str) -> dict[str, Any]:
        rng = self._rng
        return {
            "event_id": f"{self._id_prefix}-{next(self._counter)}",
            "channel": self._chooser.choose(rng),
            "symbol": rng.choice(SYMBOLS),
            "side": "buy" if rng.random() < 0.5 else "sell",
            "quantity": round(rng.uniform(0.01, 2.0), 4),
            "price": round(rng.uniform(10.0, 70_000.0), 2),
            "emitted_at": emitted_at,
        }

    def next_batch(self, batch_size: int, emitted_at: str) -> list[dict[str, Any]]:
        return [self.next_event(emitted_at) for _ in range(batch_size)]
