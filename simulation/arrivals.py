"""Arrival times of signal events at the supervisor's ingest, drawn up front for a whole run.

Poisson and schedule arrivals are one construction: a unit-rate Poisson process (cumulative sums
of unit exponentials from the `arrivals` stream) mapped through the inverse of the cumulative
rate `Λ(t)`, which is piecewise linear for a piecewise-constant schedule. A constant rate is the
one-step schedule. Because the unit-rate points do not depend on the rate, two runs at different
loads with the same seed also share their arrival randomness. Trace arrivals are replayed as
given. Every function returns sorted times in `[0, duration_s)`.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import numpy.typing as npt

from simulation.config import ArrivalConfig, ConfigError

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


def rate_steps(arrivals: ArrivalConfig) -> tuple[FloatArray, FloatArray]:
    """Return the step start times and rates of a Poisson or schedule arrival process."""
    if arrivals.kind == "poisson":
        return np.array([0.0]), np.array([float(arrivals.rate_per_s)])
    if arrivals.kind == "schedule":
        starts_s = np.array([float(start_s) for start_s, _ in arrivals.schedule])
        rates_per_s = np.array([float(rate_per_s) for _, rate_per_s in arrivals.schedule])
        return starts_s, rates_per_s
    raise ConfigError(f"arrivals.kind={arrivals.kind!r} has no rate steps; it replays a trace")


def poisson_schedule_times(
    starts_s: FloatArray, rates_per_s: FloatArray, duration_s: float, rng: np.random.Generator
) -> FloatArray:
    """Draw a piecewise-constant Poisson process on `[0, duration_s)` by inverting `Λ(t)`."""
    bounds_s = np.append(starts_s, max(duration_s, float(starts_s[-1])))
    bounds_s = np.minimum(bounds_s, duration_s)
    segment_mass = rates_per_s * np.diff(bounds_s)
    cumulative_mass = np.concatenate(([0.0], np.cumsum(segment_mass)))
    total_mass = float(cumulative_mass[-1])

    unit_points = _unit_rate_points(total_mass, rng)

    # side="right" skips zero-rate segments, whose cumulative mass equals the next one's.
    segment = np.searchsorted(cumulative_mass, unit_points, side="right") - 1
    segment = np.minimum(segment, len(rates_per_s) - 1)
    times_s = bounds_s[segment] + (unit_points - cumulative_mass[segment]) / rates_per_s[segment]
    kept: FloatArray = times_s[times_s < duration_s]
    return kept


def _unit_rate_points(total_mass: float, rng: np.random.Generator) -> FloatArray:
    """Return the points of a unit-rate Poisson process on `[0, total_mass)`."""
    if total_mass <= 0:
        return np.empty(0)
    block = int(total_mass + 6.0 * math.sqrt(total_mass) + 64)
    points = np.cumsum(rng.exponential(1.0, size=block))
    while points[-1] < total_mass:
        more = np.cumsum(rng.exponential(1.0, size=block)) + points[-1]
        points = np.concatenate((points, more))
    result: FloatArray = points[points < total_mass]
    return result


def load_trace_times(arrivals: ArrivalConfig) -> FloatArray:
    """Return the trace's arrival times, from `trace_times_s` or the file at `trace_path`."""
    if arrivals.trace_times_s:
        times_s = np.array(arrivals.trace_times_s, dtype=np.float64)
    elif arrivals.trace_path is not None:
        times_s = _read_trace_file(Path(arrivals.trace_path))
    else:
        raise ConfigError("arrivals.kind='trace' needs trace_times_s or trace_path")
    if times_s.size and (not np.all(np.isfinite(times_s)) or times_s.min() < 0):
        raise ConfigError(
            f"arrival trace holds negative or non-finite times (min {times_s.min()!r}): "
            "give seconds since the start of the run"
        )
    return np.sort(times_s)


def _read_trace_file(path: Path) -> FloatArray:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read arrival trace {path}: {error}") from error
    try:
        if path.suffix.lower() == ".json":
            return np.array(json.loads(text), dtype=np.float64)
        lines = [line.split(",")[0].strip() for line in text.splitlines()]
        values = [line for line in lines if line and not line[0].isalpha()]
        return np.array([float(value) for value in values], dtype=np.float64)
    except (ValueError, TypeError) as error:
        raise ConfigError(
            f"arrival trace {path} is invalid: give a JSON list of seconds or one number per line"
            f" ({error})"
        ) from error


def draw_arrival_times(
    arrivals: ArrivalConfig, duration_s: float, rng: np.random.Generator
) -> FloatArray:
    """Return the sorted arrival times of one run on `[0, duration_s)`."""
    if arrivals.kind == "trace":
        times_s = load_trace_times(arrivals)
        kept = times_s[times_s < duration_s]
        if kept.size < times_s.size:
            logger.info(
                "Arrival trace cut at duration_s=%s: %d of %d arrivals kept",
                duration_s,
                kept.size,
                times_s.size,
            )
        return kept
    starts_s, rates_per_s = rate_steps(arrivals)
    return poisson_schedule_times(starts_s, rates_per_s, duration_s, rng)


def draw_duplicate_flags(count: int, duplicate_ratio: float, rng: np.random.Generator) -> BoolArray:
    """Mark each arrival as a duplicate with probability `duplicate_ratio`, independently."""
    flags: BoolArray = rng.random(count) < duplicate_ratio
    return flags
