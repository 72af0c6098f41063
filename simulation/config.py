"""Configuration of the capacity model: one frozen `ModelConfig`, loadable from TOML or JSON.

Every field carries its unit in its name (`_s`, `_ms`, `_per_s`), and every value is checked when
the object is built, so a bad file fails with a `ConfigError` that names the field, the value and
the valid range. The defaults describe a plain M/M/c/K queue: Poisson arrivals, one exponential
execution call per event, no timeouts, errors, CPU cost, refresh cost or downstream capacity
limit. Calibration switches the extras on.

A file holds the same nesting as the dataclasses, for example in TOML:

    pool_size = 8
    queue_max = 1000
    [arrivals]
    kind = "schedule"
    schedule = [[0, 50], [300, 100], [600, 150]]
    [execution]
    latency = "lognormal"
    latency_median_ms = 8
    latency_sigma = 0.6
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

ArrivalKind = Literal["poisson", "schedule", "trace"]
FanoutKind = Literal["fixed", "channels"]
LatencyKind = Literal["exponential", "lognormal", "deterministic", "empirical"]

ARRIVAL_KINDS: tuple[str, ...] = get_args(ArrivalKind)
FANOUT_KINDS: tuple[str, ...] = get_args(FanoutKind)
LATENCY_KINDS: tuple[str, ...] = get_args(LatencyKind)


class ConfigError(ValueError):
    """A model setting is missing, of the wrong type or out of its valid range."""


def _require(condition: bool, name: str, value: object, valid: str) -> None:
    if not condition:
        raise ConfigError(f"{name}={value!r} is invalid: {valid}")


def _require_finite_at_least(name: str, value: float, minimum: float) -> None:
    _require(
        isinstance(value, int | float) and math.isfinite(value) and value >= minimum,
        name,
        value,
        f"use a finite number >= {minimum}",
    )


def _require_probability(name: str, value: float) -> None:
    _require(
        isinstance(value, int | float) and 0.0 <= value < 1.0,
        name,
        value,
        "use a probability in [0, 1)",
    )


@dataclass(frozen=True, kw_only=True)
class ArrivalConfig:
    """Arrival process of signal events at the supervisor's HTTP ingest.

    `poisson` uses `rate_per_s` for the whole run. `schedule` is a piecewise-constant Poisson
    process given as `(start_s, rate_per_s)` steps, the first starting at 0, which is how the
    constant, step, spike and soak load profiles are written. `trace` replays measured arrival
    times in seconds since the start, from `trace_times_s` or from `trace_path` (a JSON list, or a
    text/CSV file with one time per line).
    """

    kind: ArrivalKind = "poisson"
    rate_per_s: float = 100.0
    schedule: tuple[tuple[float, float], ...] = ()
    trace_path: str | None = None
    trace_times_s: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        _require(self.kind in ARRIVAL_KINDS, "arrivals.kind", self.kind, f"use {ARRIVAL_KINDS}")
        if self.kind == "poisson":
            _require_finite_at_least("arrivals.rate_per_s", self.rate_per_s, 0.0)
            _require(self.rate_per_s > 0, "arrivals.rate_per_s", self.rate_per_s, "use a rate > 0")
        if self.kind == "schedule":
            self._check_schedule()
        if self.kind == "trace":
            _require(
                bool(self.trace_times_s) or self.trace_path is not None,
                "arrivals.trace_times_s",
                self.trace_times_s,
                "a trace needs trace_times_s or trace_path",
            )
            for time_s in self.trace_times_s:
                _require_finite_at_least("arrivals.trace_times_s[]", time_s, 0.0)

    def _check_schedule(self) -> None:
        _require(
            len(self.schedule) > 0,
            "arrivals.schedule",
            self.schedule,
            "give at least one (start_s, rate_per_s) step",
        )
        _require(
            self.schedule[0][0] == 0,
            "arrivals.schedule[0].start_s",
            self.schedule[0][0],
            "the first step must start at 0",
        )
        previous_start_s = -1.0
        for index, (start_s, rate_per_s) in enumerate(self.schedule):
            _require_finite_at_least(f"arrivals.schedule[{index}].start_s", start_s, 0.0)
            _require_finite_at_least(f"arrivals.schedule[{index}].rate_per_s", rate_per_s, 0.0)
            _require(
                start_s > previous_start_s,
                f"arrivals.schedule[{index}].start_s",
                start_s,
                "step start times must increase strictly",
            )
            previous_start_s = start_s


@dataclass(frozen=True, kw_only=True)
class FanoutConfig:
    """Number of copy trades (execution calls) per event.

    `fixed` gives every event `fixed_count` calls. `channels` picks the event's channel with
    Zipf-like popularity (channel `k`, counting from 1 in list order, has weight `1 / k**s` with
    `s = zipf_exponent`) and gives it that channel's count from `channel_config_counts`.
    """

    kind: FanoutKind = "fixed"
    fixed_count: int = 1
    channel_config_counts: tuple[int, ...] = ()
    zipf_exponent: float = 1.0

    def __post_init__(self) -> None:
        _require(self.kind in FANOUT_KINDS, "fanout.kind", self.kind, f"use {FANOUT_KINDS}")
        _require(
            isinstance(self.fixed_count, int) and self.fixed_count >= 0,
            "fanout.fixed_count",
            self.fixed_count,
            "use an integer >= 0",
        )
        _require_finite_at_least("fanout.zipf_exponent", self.zipf_exponent, 0.0)
        if self.kind == "channels":
            _require(
                len(self.channel_config_counts) > 0,
                "fanout.channel_config_counts",
                self.channel_config_counts,
                "give one config count per channel",
            )
        for count in self.channel_config_counts:
            _require(
                isinstance(count, int) and count >= 0,
                "fanout.channel_config_counts[]",
                count,
                "use integers >= 0",
            )


@dataclass(frozen=True, kw_only=True)
class ExecutionConfig:
    """Execution service as one copy trade sees it: latency, timeout, errors, retries, capacity.

    Latency of one attempt, before the capacity slowdown: `exponential` with `latency_mean_ms`,
    `lognormal` with `latency_median_ms` and `latency_sigma`, `deterministic` equal to
    `latency_mean_ms`, or `empirical` resampled from `latency_samples_ms`.

    Retries follow the supervisor's client: at most `max_attempts` attempts; only timeouts, 429 and
    5xx are retried, after `backoff_base_ms * 2**(attempt - 1)` scaled by a uniform draw (full
    jitter). `timeout_ms = None` means no client timeout.

    Capacity mirrors the stub: with `n` calls in progress counting the new one, capacity
    `capacity_concurrent = C` and limit `M` (`limit_concurrent`, default `2 * C`), a call gets 429
    at once when `n > M`, else its latency is multiplied by `max(1, n / C)`. `C = 0` means
    unlimited.
    """

    latency: LatencyKind = "exponential"
    latency_mean_ms: float = 10.0
    latency_median_ms: float = 10.0
    latency_sigma: float = 0.5
    latency_samples_ms: tuple[float, ...] = ()
    timeout_ms: float | None = None
    error_probability: float = 0.0
    max_attempts: int = 3
    backoff_base_ms: float = 50.0
    capacity_concurrent: int = 0
    limit_concurrent: int | None = None

    def __post_init__(self) -> None:
        _require(
            self.latency in LATENCY_KINDS, "execution.latency", self.latency, f"use {LATENCY_KINDS}"
        )
        _require_finite_at_least("execution.latency_mean_ms", self.latency_mean_ms, 0.0)
        _require_finite_at_least("execution.latency_median_ms", self.latency_median_ms, 0.0)
        _require_finite_at_least("execution.latency_sigma", self.latency_sigma, 0.0)
        if self.latency == "empirical":
            _require(
                len(self.latency_samples_ms) > 0,
                "execution.latency_samples_ms",
                self.latency_samples_ms,
                "empirical latency needs at least one sample",
            )
        for sample_ms in self.latency_samples_ms:
            _require_finite_at_least("execution.latency_samples_ms[]", sample_ms, 0.0)
        if self.timeout_ms is not None:
            _require_finite_at_least("execution.timeout_ms", self.timeout_ms, 0.0)
            _require(self.timeout_ms > 0, "execution.timeout_ms", self.timeout_ms, "use > 0")
        _require_probability("execution.error_probability", self.error_probability)
        _require(
            isinstance(self.max_attempts, int) and 1 <= self.max_attempts <= 20,
            "execution.max_attempts",
            self.max_attempts,
            "use an integer from 1 to 20",
        )
        _require_finite_at_least("execution.backoff_base_ms", self.backoff_base_ms, 0.0)
        _require(
            isinstance(self.capacity_concurrent, int) and self.capacity_concurrent >= 0,
            "execution.capacity_concurrent",
            self.capacity_concurrent,
            "use an integer >= 0 (0 means unlimited)",
        )
        if self.limit_concurrent is not None:
            _require(
                isinstance(self.limit_concurrent, int) and self.limit_concurrent >= 1,
                "execution.limit_concurrent",
                self.limit_concurrent,
                "use an integer >= 1, or leave it unset for 2 * capacity_concurrent",
            )

    @property
    def capacity_limited(self) -> bool:
        """True when latency depends on the number of calls in progress."""
        return self.capacity_concurrent > 0

    @property
    def effective_limit_concurrent(self) -> int:
        """The 429 limit `M`; only meaningful when `capacity_limited`."""
        if self.limit_concurrent is not None:
            return self.limit_concurrent
        return 2 * self.capacity_concurrent


@dataclass(frozen=True, kw_only=True)
class CpuConfig:
    """Supervisor CPU time on its single event-loop core, shared by ingest and workers.

    Every received event (duplicates included) holds the core for `ingest_cost_ms` before it is
    enqueued; every event a worker takes holds it for `worker_cost_ms` before its execution calls.
    Throughput can never exceed `1 / (ingest + worker cost)` events per second, whatever the pool.
    """

    ingest_cost_ms: float = 0.0
    worker_cost_ms: float = 0.0

    def __post_init__(self) -> None:
        _require_finite_at_least("cpu.ingest_cost_ms", self.ingest_cost_ms, 0.0)
        _require_finite_at_least("cpu.worker_cost_ms", self.worker_cost_ms, 0.0)


@dataclass(frozen=True, kw_only=True)
class RefreshConfig:
    """Config cache refresh cadence and cost.

    Each refresh first waits `*_db_time_ms` for the database (the loop stays free), then holds the
    event-loop core for `*_stall_ms` while it applies the rows, which delays ingest and workers.
    The first full refresh happens before the instance is ready, so the run's first full refresh
    is at `full_refresh_interval_ms`.
    """

    refresh_interval_ms: float = 5000.0
    incremental_db_time_ms: float = 0.0
    incremental_stall_ms: float = 0.0
    full_refresh_interval_ms: float = 300_000.0
    full_db_time_ms: float = 0.0
    full_stall_ms: float = 0.0

    def __post_init__(self) -> None:
        for name in ("refresh_interval_ms", "full_refresh_interval_ms"):
            value = getattr(self, name)
            _require_finite_at_least(f"refresh.{name}", value, 0.0)
            _require(value > 0, f"refresh.{name}", value, "use an interval > 0")
        for name in (
            "incremental_db_time_ms",
            "incremental_stall_ms",
            "full_db_time_ms",
            "full_stall_ms",
        ):
            _require_finite_at_least(f"refresh.{name}", getattr(self, name), 0.0)

    @property
    def stalls_loop(self) -> bool:
        """True when a refresh holds the event-loop core."""
        return self.incremental_stall_ms > 0 or self.full_stall_ms > 0


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Everything one model run needs. Build it with keywords, `from_dict` or `from_file`.

    `queue_max` is the queue capacity `K`: events waiting, not counting those held by workers. An
    event arriving when depth equals `K` and no worker is idle is dropped. `duplicate_ratio` is the
    fraction of arrivals that are duplicates; they cost ingest CPU time and never enter the queue.
    `warmup_s = None` removes the warm-up chosen by MSER-5; a number overrides it.
    """

    arrivals: ArrivalConfig = field(default_factory=ArrivalConfig)
    fanout: FanoutConfig = field(default_factory=FanoutConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    cpu: CpuConfig = field(default_factory=CpuConfig)
    refresh: RefreshConfig = field(default_factory=RefreshConfig)
    duplicate_ratio: float = 0.0
    pool_size: int = 8
    queue_max: int = 1000
    duration_s: float = 600.0
    warmup_s: float | None = None
    scrape_interval_s: float = 1.0
    replications: int = 1
    seed: int = 0
    start_unix_s: float = 0.0

    def __post_init__(self) -> None:
        _require_probability("duplicate_ratio", self.duplicate_ratio)
        _require(
            isinstance(self.pool_size, int) and self.pool_size >= 1,
            "pool_size",
            self.pool_size,
            "use an integer >= 1",
        )
        _require(
            isinstance(self.queue_max, int) and self.queue_max >= 0,
            "queue_max",
            self.queue_max,
            "use an integer >= 0",
        )
        _require_finite_at_least("duration_s", self.duration_s, 0.0)
        _require(self.duration_s > 0, "duration_s", self.duration_s, "use a duration > 0")
        if self.warmup_s is not None:
            _require(
                isinstance(self.warmup_s, int | float) and 0 <= self.warmup_s < self.duration_s,
                "warmup_s",
                self.warmup_s,
                f"use a value in [0, duration_s={self.duration_s}), or omit it for MSER-5",
            )
        _require_finite_at_least("scrape_interval_s", self.scrape_interval_s, 0.0)
        _require(
            self.scrape_interval_s > 0,
            "scrape_interval_s",
            self.scrape_interval_s,
            "use an interval > 0",
        )
        _require(
            isinstance(self.replications, int) and self.replications >= 1,
            "replications",
            self.replications,
            "use an integer >= 1",
        )
        _require(
            isinstance(self.seed, int) and self.seed >= 0,
            "seed",
            self.seed,
            "use an integer >= 0",
        )

    @property
    def uses_cpu(self) -> bool:
        """True when the event-loop core must be modelled as a shared resource."""
        has_cost = self.cpu.ingest_cost_ms > 0 or self.cpu.worker_cost_ms > 0
        return has_cost or self.refresh.stalls_loop

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Build a config from nested mappings, as read from a TOML or JSON file."""
        return _build(cls, data, prefix="")

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        """Read a config from a `.toml` or `.json` file."""
        file_path = Path(path)
        try:
            text = file_path.read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"cannot read model config {file_path}: {error}") from error
        suffix = file_path.suffix.lower()
        try:
            if suffix == ".toml":
                data: Any = tomllib.loads(text)
            elif suffix == ".json":
                data = json.loads(text)
            else:
                raise ConfigError(
                    f"model config {file_path} has suffix {suffix!r}: use .toml or .json"
                )
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
            raise ConfigError(
                f"model config {file_path} is not valid {suffix[1:]}: {error}"
            ) from error
        if not isinstance(data, Mapping):
            raise ConfigError(f"model config {file_path} must hold a table/object at the top")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """Return plain nested dicts and lists, ready for JSON or TOML."""
        plain: dict[str, Any] = _to_plain(asdict(self))
        return plain

    def with_changes(self, **changes: Any) -> ModelConfig:
        """Return a copy with top-level fields replaced (validated again)."""
        return replace(self, **changes)


_T = TypeVar("_T")


def _build(cls: type[_T], data: Mapping[str, Any], prefix: str) -> _T:
    known = {item.name: item for item in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown model setting {prefix}{unknown[0]}: valid names here are {sorted(known)}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        nested_type = _NESTED.get(name) if cls is ModelConfig else None
        if nested_type is not None:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{prefix}{name} must be a table/object, got {value!r}")
            kwargs[name] = _build(nested_type, value, prefix=f"{name}.")
        else:
            kwargs[name] = _to_tuples(value)
    try:
        return cls(**kwargs)
    except TypeError as error:
        where = prefix or "top level"
        raise ConfigError(f"invalid model settings under {where}: {error}") from error


def _to_tuples(value: Any) -> Any:
    if isinstance(value, Sequence) and not isinstance(value, str):
        return tuple(_to_tuples(item) for item in value)
    return value


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _to_plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_to_plain(item) for item in value]
    if is_dataclass(value):
        return _to_plain(asdict(value))  # type: ignore[arg-type]
    return value


_NESTED: dict[str, type[Any]] = {
    "arrivals": ArrivalConfig,
    "fanout": FanoutConfig,
    "execution": ExecutionConfig,
    "cpu": CpuConfig,
    "refresh": RefreshConfig,
}
