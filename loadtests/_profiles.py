"""Load profiles: the offered event rate as a pure function of run time.

A profile is a list of consecutive load steps, each with a constant rate. Time 0 is the start
of the first step. The cumulative count of offered events, Λ(t), is piecewise linear, so the
time of the n-th event (the inverse of Λ) is exact and needs no numerical search. The open-model
pacing derives every user's send times from that inverse, so the offered rate follows the
profile whatever the response times are.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Literal, get_args

ProfileName = Literal["constant", "step", "spike", "soak"]
PROFILE_NAMES: tuple[str, ...] = get_args(ProfileName)


class ProfileError(ValueError):
    """A profile parameter is invalid; the message names the option and the fix."""


@dataclass(frozen=True)
class LoadStep:
    """One interval of constant offered rate, in seconds since the load started."""

    step: int
    start_s: float
    end_s: float
    rate_per_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True, kw_only=True)
class ProfileParameters:
    """Every option that shapes a profile; each profile reads only its own fields."""

    rate_per_s: float = 100.0
    duration_s: float = 60.0
    step_count: int = 5
    step_duration_s: float = 60.0
    step_start_rate_per_s: float | None = None
    step_rate_increment_per_s: float = 100.0
    spike_base_rate_per_s: float | None = None
    spike_rate_per_s: float | None = None
    spike_start_s: float = 30.0
    spike_duration_s: float = 10.0
    soak_rate_per_s: float | None = None
    soak_duration_s: float = 3600.0


def _require_positive(option: str, value: float) -> None:
    if not value > 0:
        raise ProfileError(f"--{option}={value} is invalid: set a number above 0")


def _require_non_negative(option: str, value: float) -> None:
    if not value >= 0:
        raise ProfileError(f"--{option}={value} is invalid: set a number of 0 or more")


def build_load_steps(profile: str, params: ProfileParameters) -> list[LoadStep]:
    """Build the load steps of `profile`; raise ProfileError naming a bad option."""
    if profile == "constant":
        return _constant_steps(params.rate_per_s, params.duration_s, "duration-s")
    if profile == "soak":
        rate = params.rate_per_s if params.soak_rate_per_s is None else params.soak_rate_per_s
        return _constant_steps(rate, params.soak_duration_s, "soak-duration-s")
    if profile == "step":
        return _step_steps(params)
    if profile == "spike":
        return _spike_steps(params)
    raise ProfileError(
        f"--profile={profile!r} is unknown: choose one of {', '.join(PROFILE_NAMES)}"
    )


def _constant_steps(rate_per_s: float, duration_s: float, duration_option: str) -> list[LoadStep]:
    _require_non_negative("rate-per-s", rate_per_s)
    _require_positive(duration_option, duration_s)
    return [LoadStep(0, 0.0, duration_s, rate_per_s)]


def _step_steps(params: ProfileParameters) -> list[LoadStep]:
    start_rate = (
        params.rate_per_s if params.step_start_rate_per_s is None else params.step_start_rate_per_s
    )
    if params.step_count < 1:
        raise ProfileError(f"--step-count={params.step_count} is invalid: set 1 or more")
    _require_positive("step-duration-s", params.step_duration_s)
    _require_non_negative("step-start-rate-per-s", start_rate)
    last_rate = start_rate + (params.step_count - 1) * params.step_rate_increment_per_s
    if last_rate < 0:
        raise ProfileError(
            f"--step-rate-increment-per-s={params.step_rate_increment_per_s} makes the last "
            f"step's rate negative ({last_rate}): raise it or lower --step-count"
        )

    steps = []
    for index in range(params.step_count):
        start_s = index * params.step_duration_s
        rate = start_rate + index * params.step_rate_increment_per_s
        steps.append(LoadStep(index, start_s, start_s + params.step_duration_s, rate))
    return steps


def _spike_steps(params: ProfileParameters) -> list[LoadStep]:
    base = (
        params.rate_per_s if params.spike_base_rate_per_s is None else params.spike_base_rate_per_s
    )
    spike = 5 * base if params.spike_rate_per_s is None else params.spike_rate_per_s
    _require_non_negative("spike-base-rate-per-s", base)
    _require_non_negative("spike-rate-per-s", spike)
    _require_positive("duration-s", params.duration_s)
    _require_positive("spike-duration-s", params.spike_duration_s)
    _require_non_negative("spike-start-s", params.spike_start_s)
    spike_end_s = params.spike_start_s + params.spike_duration_s
    if spike_end_s > params.duration_s:
        raise ProfileError(
            f"--spike-start-s={params.spike_start_s} plus --spike-duration-s="
            f"{params.spike_duration_s} ends after --duration-s={params.duration_s}: "
            "shorten the spike or lengthen the run"
        )

    bounds = [(0.0, params.spike_start_s, base), (params.spike_start_s, spike_end_s, spike)]
    bounds.append((spike_end_s, params.duration_s, base))
    kept = [(start, end, rate) for start, end, rate in bounds if end > start]
    return [LoadStep(index, start, end, rate) for index, (start, end, rate) in enumerate(kept)]


def total_duration_s(steps: list[LoadStep]) -> float:
    return steps[-1].end_s if steps else 0.0


def peak_rate_per_s(steps: list[LoadStep]) -> float:
    return max((step.rate_per_s for step in steps), default=0.0)


def rate_at(steps: list[LoadStep], t_s: float) -> float:
    """Return the offered rate at run time `t_s`; 0 before the start and after the end."""
    for step in steps:
        if step.start_s <= t_s < step.end_s:
            return step.rate_per_s
    return 0.0


def expected_events(steps: list[LoadStep], t_s: float) -> float:
    """Return Λ(t): events the profile offers from time 0 until `t_s`."""
    total = 0.0
    for step in steps:
        if t_s <= step.start_s:
            break
        total += step.rate_per_s * (min(t_s, step.end_s) - step.start_s)
    return total


class ArrivalClock:
    """The inverse of Λ: the run time at which the profile's n-th event is due.

    `n` is a real number, so users can place their sends at fractional positions. A step with
    rate 0 offers nothing, so no event falls inside it.
    """

    def __init__(self, steps: list[LoadStep]) -> None:
        self._steps = [step for step in steps if step.rate_per_s > 0]
        self._cumulative: list[float] = []
        total = 0.0
        for step in self._steps:
            self._cumulative.append(total)
            total += step.rate_per_s * step.duration_s
        self.total_events = total

    def time_of(self, n: float) -> float | None:
        """Return the run time of event position `n`, or None when it lies past the end."""
        if n < 0 or n >= self.total_events:
            return None
        index = bisect.bisect_right(self._cumulative, n) - 1
        step = self._steps[index]
        return step.start_s + (n - self._cumulative[index]) / step.rate_per_s
