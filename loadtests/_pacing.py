"""Open-model pacing: every user sends at fixed positions of one shared arrival schedule.

The run has `user_count` users in all, spread by Locust over every worker process. User u owns
the event positions (k + phase_u) * user_count * batch_size for k = 0, 1, ..., where
phase_u is drawn once in [0, 1). Each user therefore offers 1/user_count of the profile's
rate, and the sum over users is the profile's rate whatever the number of workers is. A send
is due at the arrival clock's time of its position; it never waits for earlier responses
beyond the user's own previous request. When a request takes longer than the gap to the
user's next position, the next send leaves late: the lateness is recorded, not hidden, and the
send still happens, so a slow supervisor shows up as load on the supervisor, not as a lower
offered rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from _profiles import ArrivalClock


def user_count_for(
    peak_rate_per_s: float, batch_size: int, response_budget_ms: float, min_users: int
) -> int:
    """Return the users needed so each user's gap between sends is at least the budget.

    A user holds one request at a time, so it keeps its schedule while responses take less
    than its gap, user_count * batch_size / rate. Solving for the gap equal to the budget
    gives user_count = peak POST rate * budget.
    """
    post_rate_per_s = peak_rate_per_s / batch_size
    needed = math.ceil(post_rate_per_s * response_budget_ms / 1000.0)
    return max(min_users, needed, 1)


def user_gap_s(rate_per_s: float, user_count: int, batch_size: int) -> float:
    """Return the time between two sends of one user at a constant rate."""
    if rate_per_s <= 0:
        return math.inf
    return user_count * batch_size / rate_per_s


@dataclass
class LatenessStats:
    """Lateness of sends against their due time, in seconds."""

    late_threshold_s: float
    sends: int = 0
    late_sends: int = 0
    total_lateness_s: float = 0.0
    max_lateness_s: float = 0.0

    def record(self, lateness_s: float) -> None:
        lateness_s = max(0.0, lateness_s)
        self.sends += 1
        self.total_lateness_s += lateness_s
        self.max_lateness_s = max(self.max_lateness_s, lateness_s)
        if lateness_s > self.late_threshold_s:
            self.late_sends += 1

    def merge(self, other: LatenessStats) -> None:
        self.sends += other.sends
        self.late_sends += other.late_sends
        self.total_lateness_s += other.total_lateness_s
        self.max_lateness_s = max(self.max_lateness_s, other.max_lateness_s)

    @property
    def late_ratio(self) -> float:
        return self.late_sends / self.sends if self.sends else 0.0

    @property
    def mean_lateness_s(self) -> float:
        return self.total_lateness_s / self.sends if self.sends else 0.0


class UserPacer:
    """The due times of one user's sends, in run time (seconds since the load started)."""

    def __init__(
        self, clock: ArrivalClock, *, user_count: int, batch_size: int, phase: float
    ) -> None:
        if not 0.0 <= phase < 1.0:
            raise ValueError(f"phase={phase} is invalid: it must be in [0, 1)")
        self._clock = clock
        self._stride = user_count * batch_size
        self._phase = phase
        self._next_index = 0

    def next_due_s(self) -> float | None:
        """Return the run time of the next send, or None when the schedule has ended."""
        return self._clock.time_of((self._next_index + self._phase) * self._stride)

    def advance(self) -> None:
        self._next_index += 1

    def sends_until(self, t_s: float) -> int:
        """Return how many sends of this user fall before run time `t_s` (for tests)."""
        count = 0
        index = 0
        while True:
            due = self._clock.time_of((index + self._phase) * self._stride)
            if due is None or due >= t_s:
                return count
            count += 1
            index += 1
