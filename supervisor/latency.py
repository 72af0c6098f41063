"""Latency distributions of the execution service, and a summary of observed latencies.

The execution stub draws each call's base latency from one of these distributions, and the
capacity model can draw the same distributions in bulk, so stub and model agree on what
"exponential with a mean of 5 ms" means. Scalar draws take a `random.Random` (cheap on the
stub's hot path); bulk draws take a `numpy.random.Generator`. Neither uses global random
state. numpy is imported only where it is used, so command-line parsers that import this module
stay fast to build.

A distribution whose every draw is zero reports `always_zero`, so callers can skip sleeping.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

LatencyKind = Literal["fixed", "exponential", "lognormal"]
LATENCY_KINDS: tuple[LatencyKind, ...] = ("fixed", "exponential", "lognormal")


class LatencyError(ValueError):
    """A latency distribution was given parameters it cannot draw from."""


class LatencyDistribution(Protocol):
    """A distribution of latencies in milliseconds."""

    @property
    def mean_ms(self) -> float: ...

    @property
    def always_zero(self) -> bool: ...

    def sample_ms(self, rng: random.Random) -> float: ...

    def sample_many_ms(self, generator: np.random.Generator, size: int) -> npt.NDArray[np.float64]:
        ...

    def describe(self) -> dict[str, object]: ...


@dataclass(frozen=True)
class FixedLatency:
    """The same latency on every draw."""

    latency_ms: float

    def __post_init__(self) -> None:
        _check_non_negative("fixed latency", self.latency_ms)

    @property
    def mean_ms(self) -> float:
        return self.latency_ms

    @property
    def always_zero(self) -> bool:
        return self.latency_ms == 0.0

    def sample_ms(self, rng: random.Random) -> float:
        return self.latency_ms

    def sample_many_ms(self, generator: np.random.Generator, size: int) -> npt.NDArray[np.float64]:
        import numpy as np

        return np.full(size, self.latency_ms, dtype=np.float64)

    def describe(self) -> dict[str, object]:
        return {"kind": "fixed", "latency_ms": self.latency_ms}


@dataclass(frozen=True)
class ExponentialLatency:
    """Exponentially distributed latency with the given mean. A mean of 0 always draws 0."""

    latency_mean_ms: float

    def __post_init__(self) -> None:
        _check_non_negative("exponential mean latency", self.latency_mean_ms)

    @property
    def mean_ms(self) -> float:
        return self.latency_mean_ms

    @property
    def always_zero(self) -> bool:
        return self.latency_mean_ms == 0.0

    def sample_ms(self, rng: random.Random) -> float:
        if self.always_zero:
            return 0.0
        return rng.expovariate(1.0 / self.latency_mean_ms)

    def sample_many_ms(self, generator: np.random.Generator, size: int) -> npt.NDArray[np.float64]:
        if self.always_zero:
            import numpy as np

            return np.zeros(size, dtype=np.float64)
        return generator.exponential(self.latency_mean_ms, size)

    def describe(self) -> dict[str, object]:
        return {"kind": "exponential", "latency_mean_ms": self.latency_mean_ms}


@dataclass(frozen=True)
class LognormalLatency:
    """Lognormal latency: `median_ms * exp(sigma * Z)` with Z standard normal."""

    median_ms: float
    sigma: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.median_ms) or self.median_ms <= 0.0:
            raise LatencyError(
                f"lognormal median latency {self.median_ms} ms is invalid: it must be a positive "
                "number (use the fixed distribution with 0 ms for no latency)"
            )
        if not math.isfinite(self.sigma) or self.sigma < 0.0:
            raise LatencyError(
                f"lognormal sigma {self.sigma} is invalid: it must be 0 or a positive number"
            )

    @property
    def mean_ms(self) -> float:
        return self.median_ms * math.exp(self.sigma**2 / 2.0)

    @property
    def always_zero(self) -> bool:
        return False

    def sample_ms(self, rng: random.Random) -> float:
        return rng.lognormvariate(math.log(self.median_ms), self.sigma)

    def sample_many_ms(self, generator: np.random.Generator, size: int) -> npt.NDArray[np.float64]:
        return generator.lognormal(math.log(self.median_ms), self.sigma, size)

    def describe(self) -> dict[str, object]:
        return {"kind": "lognormal", "median_ms": self.median_ms, "sigma": self.sigma}


def build_latency(
    kind: str,
    *,
    latency_ms: float | None = None,
    median_ms: float | None = None,
    sigma: float | None = None,
) -> LatencyDistribution:
    """Build a distribution by name, rejecting parameters that belong to another kind.

    `latency_ms` is the fixed value or the exponential mean (default 0). `median_ms` (required)
    and `sigma` (default 0.5) are for lognormal only.
    """
    if kind in ("fixed", "exponential"):
        if median_ms is not None or sigma is not None:
            raise LatencyError(
                f"a median and sigma apply only to the lognormal distribution, not to {kind}: "
                "drop them or choose lognormal"
            )
        value_ms = 0.0 if latency_ms is None else latency_ms
        return FixedLatency(value_ms) if kind == "fixed" else ExponentialLatency(value_ms)

    if kind == "lognormal":
        if latency_ms is not None:
            raise LatencyError(
                "the lognormal distribution takes a median and sigma, not a fixed or mean "
                f"latency ({latency_ms} ms): give the median instead"
            )
        if median_ms is None:
            raise LatencyError("the lognormal distribution needs a median latency in ms")
        return LognormalLatency(median_ms, 0.5 if sigma is None else sigma)

    raise LatencyError(
        f"latency distribution {kind!r} is unknown: choose one of {', '.join(LATENCY_KINDS)}"
    )


def _check_non_negative(what: str, value_ms: float) -> None:
    if not math.isfinite(value_ms) or value_ms < 0.0:
        raise LatencyError(f"{what} {value_ms} ms is invalid: it must be 0 or a positive number")


class LatencySummary:
    """Count, mean and maximum of every recorded latency, and percentiles of the latest ones.

    Percentiles cover only the last `window_size` recordings, so memory stays bounded on long
    runs. Count, mean and maximum cover everything since the last `clear()`.
    """

    def __init__(self, window_size: int = 10_000) -> None:
        if window_size < 1:
            raise ValueError(f"window_size {window_size} is invalid: it must be at least 1")
        self._recent_s: deque[float] = deque(maxlen=window_size)
        self._count = 0
        self._sum_s = 0.0
        self._max_s = 0.0

    def record_s(self, latency_s: float) -> None:
        self._recent_s.append(latency_s)
        self._count += 1
        self._sum_s += latency_s
        if latency_s > self._max_s:
            self._max_s = latency_s

    def clear(self) -> None:
        self._recent_s.clear()
        self._count = 0
        self._sum_s = 0.0
        self._max_s = 0.0

    def snapshot_ms(self) -> dict[str, float | int | None]:
        """Return count, mean, p50, p95, p99 and max in ms, with None statistics before any call."""
        if self._count == 0:
            return {"count": 0, "mean_ms": None, "p50_ms": None, "p95_ms": None,
                    "p99_ms": None, "max_ms": None, "percentile_window": 0}
        import numpy as np

        recent_ms = np.fromiter(self._recent_s, dtype=np.float64) * 1000.0
        p50, p95, p99 = np.percentile(recent_ms, [50.0, 95.0, 99.0])
        return {
            "count": self._count,
            "mean_ms": self._sum_s / self._count * 1000.0,
            "p50_ms": float(p50),
            "p95_ms": float(p95),
            "p99_ms": float(p99),
            "max_ms": self._max_s * 1000.0,
            "percentile_window": len(self._recent_s),
        }
