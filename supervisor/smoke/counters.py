"""Event outcome counters from a target's `/stats`, and their change over a step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FINISHED_OUTCOMES = ("processed", "failed", "dropped", "duplicate", "not_owned", "rejected")


@dataclass
class Snapshot:
    """Event outcome counters of one target's `/stats`."""

    received: int
    outcomes: dict[str, int]

    @classmethod
    def from_stats(cls, stats: Any) -> Snapshot:
        events = stats["events"]
        return cls(
            received=int(events["received"]),
            outcomes={name: int(events[name]) for name in FINISHED_OUTCOMES},
        )

    def delta(self, before: Snapshot) -> Snapshot:
        return Snapshot(
            received=self.received - before.received,
            outcomes={k: v - before.outcomes[k] for k, v in self.outcomes.items()},
        )

    @property
    def finished(self) -> int:
        return sum(self.outcomes.values())
