"""Calibration: a `ModelConfig` for the measured setting, fitted from one run bundle.

What is taken from where:

- pool size, queue capacity, refresh intervals, execution timeout and attempts: the supervisor's
  `/stats` `instance` settings in `metadata.json`;
- execution latency: a lognormal fitted to the durations of successful first-attempt calls
  in the calibration steps. Each duration is first divided by the stub's capacity slowdown
  `max(1, n / C)`, with `n` the supervisor's calls in progress when the call started, because
  the model applies that slowdown itself. The empirical samples are kept as well;
- the stub's capacity `C`, its 429 limit and error rate: the stub settings in `metadata.json`
  (when absent: no capacity limit, and the error probability from the retries seen);
- fan-out: config counts per channel from `configs.csv` (active and auto-executing), channels
  ordered by how many events they received, and a Zipf exponent fitted by maximum likelihood
  to those event counts, since the model takes popularity only as `1 / k**s`;
- CPU: a least-squares fit of the supervisor's CPU seconds per scrape interval against events
  received and execution calls made in that interval (plus an idle term), giving an ingest cost
  per event and a worker cost per event (per-call cost times the mean fan-out);
- duplicate ratio: duplicates over events received in the series.

Calibration steps: by default three interleaved steps (`choose_calibration_steps`): the lowest,
the one nearest capacity and the highest overloaded one. Without an overloaded step, the steps
where the measured worker utilisation stays below 0.8. The other steps judge the model.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
import tomli_w
from scipy import optimize, stats

from capacity.bundle import RunBundle
from capacity.measure import event_times_from_bundle, measure_steps, measurement_windows
from simulation.config import (
    ArrivalConfig,
    CpuConfig,
    ExecutionConfig,
    FanoutConfig,
    ModelConfig,
    RefreshConfig,
)

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
LatencyModel = Literal["lognormal", "empirical"]

SATURATION_UTILIZATION = 0.8
OVERLOAD_DROP_RATE = 0.02
KNIFE_EDGE_BAND = 0.1
SERVICE_GROWTH_NOTE = 0.03
MAX_KEPT_SAMPLES = 2000
DEFAULT_BACKOFF_MS = 50.0


class CalibrationError(ValueError):
    """The bundle lacks what a calibration needs; the message names it."""


@dataclass(frozen=True)
class LognormalFit:
    """Lognormal fit of latencies: median and sigma with 95% confidence intervals."""

    median_ms: float
    median_ci95_ms: tuple[float, float]
    sigma: float
    sigma_ci95: tuple[float, float]
    sample_count: int


def fit_lognormal(samples_ms: FloatArray) -> LognormalFit:
    """Fit a lognormal by the mean and standard deviation of the log of positive samples.

    The median's interval is the t interval of the log mean, the sigma's the chi-square
    interval of the log variance; both assume independent samples.
    """
    positive = samples_ms[np.isfinite(samples_ms) & (samples_ms > 0)]
    count = int(positive.size)
    if count < 3:
        raise CalibrationError(
            f"{count} positive latency samples are too few for a lognormal fit: record a "
            "longer run or more calibration steps"
        )
    logs = np.log(positive)
    mu = float(logs.mean())
    sigma = float(logs.std(ddof=1))
    t = float(stats.t.ppf(0.975, count - 1))
    half = t * sigma / math.sqrt(count)
    low_chi = float(stats.chi2.ppf(0.975, count - 1))
    high_chi = float(stats.chi2.ppf(0.025, count - 1))
    return LognormalFit(
        median_ms=math.exp(mu),
        median_ci95_ms=(math.exp(mu - half), math.exp(mu + half)),
        sigma=sigma,
        sigma_ci95=(sigma * math.sqrt((count - 1) / low_chi),
                    sigma * math.sqrt((count - 1) / high_chi)),
        sample_count=count,
    )


def calls_in_progress(started_s: FloatArray, duration_s: FloatArray) -> FloatArray:
    """Return, for each call, how many calls were in progress when it started, itself included."""
    ends_s = np.sort(started_s + duration_s)
    starts_s = np.sort(started_s)
    begun = np.searchsorted(starts_s, started_s, side="right")
    ended = np.searchsorted(ends_s, started_s, side="right")
    in_progress: FloatArray = (begun - ended).astype(np.float64)
    return in_progress


def base_latency_samples_ms(
    calls: pd.DataFrame, capacity: int, windows: Sequence[tuple[float, float]]
) -> FloatArray:
    """Return first-attempt successful call durations in the windows, without the slowdown."""
    started_s = pd.to_numeric(calls["started_unix_s"], errors="coerce").to_numpy(np.float64)
    duration_s = pd.to_numeric(calls["duration_s"], errors="coerce").to_numpy(np.float64)
    first_ok = (calls["outcome"].astype(str) == "success").to_numpy().copy()
    if "attempts" in calls:
        first_ok &= pd.to_numeric(calls["attempts"], errors="coerce").to_numpy() == 1
    inside = np.zeros(started_s.size, dtype=bool)
    for start_s, end_s in windows:
        inside |= (started_s >= start_s) & (started_s < end_s)

    slowdown = np.ones(started_s.size)
    if capacity > 0:
        slowdown = np.maximum(1.0, calls_in_progress(started_s, duration_s) / capacity)
    base_ms: FloatArray = (duration_s / slowdown * 1000.0)[first_ok & inside]
    return base_ms


def fit_zipf_exponent(event_counts: Sequence[int]) -> float:
    """Fit `s` of weights `1 / k**s` (k from 1, counts in rank order) by maximum likelihood."""
    counts = np.asarray(event_counts, dtype=np.float64)
    if counts.sum() <= 0:
        raise CalibrationError("no events per channel to fit the channel popularity to")
    log_ranks = np.log(np.arange(1, counts.size + 1, dtype=np.float64))

    def negative_log_likelihood(s: float) -> float:
        log_norm = float(np.log(np.exp(-s * log_ranks).sum()))
        return float(s * (counts * log_ranks).sum() + counts.sum() * log_norm)

    result = optimize.minimize_scalar(negative_log_likelihood, bounds=(0.0, 6.0),
                                      method="bounded")
    return float(result.x)


def fanout_from_bundle(bundle: RunBundle) -> tuple[FanoutConfig, dict[str, Any]]:
    """Build the channel fan-out from configs.csv and the channels of the events received."""
    configs = bundle.configs
    if configs.empty:
        raise CalibrationError(
            f"bundle {bundle.path} has no configs.csv rows: the run's database was not readable"
        )
    active = configs
    for column in ("isActive", "autoExecute"):
        if column in active:
            active = active[active[column].astype(str).str.lower().isin(("true", "1"))]
    per_channel = active.groupby(active["channel"].astype(str)).size()
    events = bundle.event_timings["channel"].astype(str).value_counts()
    channels = sorted(set(per_channel.index) | set(events.index),
                      key=lambda name: (-int(events.get(name, 0)), name))
    config_counts = tuple(int(per_channel.get(name, 0)) for name in channels)
    event_counts = [int(events.get(name, 0)) for name in channels]
    exponent = fit_zipf_exponent(event_counts)
    fanout = FanoutConfig(kind="channels", channel_config_counts=config_counts,
                          zipf_exponent=exponent)

    shares = np.asarray(event_counts, dtype=np.float64) / sum(event_counts)
    weights = np.arange(1, len(channels) + 1, dtype=np.float64) ** -exponent
    weights /= weights.sum()
    info = {
        "channels": channels,
        "channel_config_counts": list(config_counts),
        "channel_event_share": [round(float(share), 5) for share in shares],
        "zipf_exponent": exponent,
        "mean_fanout_measured": float(np.dot(shares, config_counts)),
        "mean_fanout_model": float(np.dot(weights, config_counts)),
    }
    return fanout, info


def _diffs(series: pd.DataFrame, column: str) -> FloatArray:
    values = pd.to_numeric(series[column], errors="coerce").to_numpy(np.float64)
    return np.diff(values)


def fit_cpu_costs(
    series: pd.DataFrame, windows: Sequence[tuple[float, float]], mean_fanout: float
) -> dict[str, float]:
    """Fit the supervisor's CPU cost per received event and per execution call, in ms.

    Least squares of the CPU seconds per scrape interval on events received, calls made and
    elapsed time (idle work such as refreshes). When a fitted cost is negative (too little
    spread in the rates), the whole CPU time over events received is the ingest cost instead.
    """
    required = ("timestamp", "cpu_seconds", "received_total", "executions_total")
    if any(column not in series for column in required) or len(series) < 4:
        raise CalibrationError("supervisor_series.csv lacks cpu_seconds or counter columns")
    ordered = series.sort_values("timestamp")
    stamps = pd.to_numeric(ordered["timestamp"], errors="coerce").to_numpy(np.float64)
    cpu_s, received, calls = (_diffs(ordered, name) for name in required[1:])
    elapsed_s = np.diff(stamps)
    ends = stamps[1:]
    inside = np.zeros(ends.size, dtype=bool)
    for start_s, end_s in windows:
        inside |= (ends > start_s) & (ends <= end_s)
    usable = inside & np.isfinite(cpu_s) & np.isfinite(received) & np.isfinite(calls)
    if usable.sum() < 4 or received[usable].sum() <= 0:
        raise CalibrationError("too few scrapes with events in the calibration steps to fit CPU")

    design = np.column_stack([received[usable], calls[usable], elapsed_s[usable]])
    coefficients, *_ = np.linalg.lstsq(design, cpu_s[usable], rcond=None)
    per_event_s, per_call_s, idle_per_s = (float(value) for value in coefficients)
    method = "least squares on events, calls and time"
    if per_event_s < 0 or per_call_s < 0:
        per_event_s = float(cpu_s[usable].sum() / received[usable].sum())
        per_call_s = 0.0
        idle_per_s = 0.0
        method = "total CPU over events received"
    return {
        "ingest_cost_ms": per_event_s * 1000.0,
        "per_call_cost_ms": per_call_s * 1000.0,
        "worker_cost_ms": per_call_s * mean_fanout * 1000.0,
        "idle_cpu_per_s": idle_per_s,
        "cpu_cost_per_event_ms": (per_event_s + per_call_s * mean_fanout) * 1000.0,
        "method_is_least_squares": float(method.startswith("least")),
    }


def utilization_per_step(bundle: RunBundle) -> dict[int, float]:
    """Return the mean of busy workers over pool size in each step's measurement window."""
    series = bundle.series
    stamps = pd.to_numeric(series["timestamp"], errors="coerce")
    busy = pd.to_numeric(series["workers_busy"], errors="coerce")
    pool = pd.to_numeric(series["pool_size"], errors="coerce")
    result = {}
    for step, start_s, end_s, _ in measurement_windows(bundle):
        inside = (stamps >= start_s) & (stamps < end_s)
        result[step] = float((busy[inside] / pool[inside]).mean())
    return result


def choose_calibration_steps(measured: pd.DataFrame) -> list[int]:
    """Pick interleaved calibration steps from per-step measurements (`measure_steps` rows).

    This needs at least three steps and an overloaded one (drop rate at least
    `OVERLOAD_DROP_RATE`), else it returns an empty list. The lowest-rate step pins the latency
    shape. The highest-rate overloaded step pins the service rate: its throughput is the pool
    size over the mean service time under real load. The step whose offered rate is nearest
    that throughput is added when within `KNIFE_EDGE_BAND` of it, because there the queue
    depends so steeply on the service rate that a short window measures noise, not the model.
    """
    ordered = measured.sort_values("offered_rate_per_s")
    overloaded = ordered[ordered["drop_rate"] >= OVERLOAD_DROP_RATE]
    if len(ordered) < 3 or overloaded.empty:
        return []
    lowest = int(ordered["load_step"].iloc[0])
    top = int(overloaded["load_step"].iloc[-1])
    chosen = {lowest, top}
    throughput_per_s = float(overloaded["throughput_per_s"].iloc[-1])
    rest = ordered[~ordered["load_step"].isin(chosen)]
    if not rest.empty and throughput_per_s > 0:
        distance = (rest["offered_rate_per_s"] / throughput_per_s - 1.0).abs()
        if float(distance.min()) <= KNIFE_EDGE_BAND:
            chosen.add(int(rest["load_step"].iloc[int(np.argmin(distance.to_numpy()))]))
    return sorted(chosen)


def default_calibration_steps(bundle: RunBundle) -> list[int]:
    """Return the interleaved steps of `choose_calibration_steps`, or the unsaturated ones."""
    chosen = choose_calibration_steps(measure_steps(bundle))
    if chosen:
        return chosen
    utilization = utilization_per_step(bundle)
    below = [step for step, value in utilization.items() if value < SATURATION_UTILIZATION]
    return below or [min(utilization)]


@dataclass
class Calibration:
    """A calibrated model config and the evidence behind each fitted value."""

    model_config: ModelConfig
    latency_median_ms: float
    latency_median_ci95_ms: tuple[float, float]
    latency_sigma: float
    latency_sigma_ci95: tuple[float, float]
    latency_samples_ms: tuple[float, ...]
    cpu_cost_per_event_ms: float
    cpu: dict[str, float]
    fanout: dict[str, Any]
    refresh: dict[str, Any]
    calibration_steps: tuple[int, ...]
    capacity_per_s: float
    mean_service_s: float
    stub_settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def details(self) -> dict[str, Any]:
        """Return everything but the model config as JSON-ready values."""
        return {
            "latency_median_ms": self.latency_median_ms,
            "latency_median_ci95_ms": list(self.latency_median_ci95_ms),
            "latency_sigma": self.latency_sigma,
            "latency_sigma_ci95": list(self.latency_sigma_ci95),
            "latency_sample_count": len(self.latency_samples_ms),
            "cpu_cost_per_event_ms": self.cpu_cost_per_event_ms,
            "cpu": self.cpu,
            "fanout": self.fanout,
            "refresh": self.refresh,
            "calibration_steps": list(self.calibration_steps),
            "capacity_per_s": self.capacity_per_s,
            "mean_service_s": self.mean_service_s,
            "stub_settings": self.stub_settings,
            "notes": self.notes,
        }

    def write(self, path: str | Path) -> Path:
        """Write the model config as TOML at `path` and the details as JSON beside it."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(tomli_w.dumps(_without_none(self.model_config.to_dict())))
        details = target.with_name(target.stem + "-calibration.json")
        details.write_text(json.dumps(self.details(), indent=2, default=float))
        return target


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_none(item) for key, item in value.items() if item is not None}
    return value


def _refresh_info(
    bundle: RunBundle, settings: dict[str, Any]
) -> tuple[RefreshConfig, dict[str, Any]]:
    info: dict[str, Any] = {
        "refresh_interval_ms": float(settings.get("config_refresh_ms", 5000)),
        "full_refresh_interval_ms": float(settings.get("config_full_refresh_ms", 300_000)),
    }
    for kind in ("incremental", "full"):
        column = f"{kind}_refresh_last_success_unix_s"
        if column in bundle.series:
            stamps = pd.to_numeric(bundle.series[column], errors="coerce").dropna().unique()
            gaps_s = np.diff(np.sort(stamps))
            info[f"{kind}_refreshes_seen"] = int(stamps.size)
            info[f"{kind}_mean_gap_s"] = float(gaps_s.mean()) if gaps_s.size else None
    # NOTE: the supervisor runs refresh queries in a worker thread, so a refresh costs database
    # time but no measured loop stall. The stalls stay 0, and the CPU fit's idle term carries
    # the loop's share of the refresh work.
    refresh = RefreshConfig(
        refresh_interval_ms=info["refresh_interval_ms"],
        incremental_db_time_ms=_median_duration_ms(bundle, "incremental", info),
        full_refresh_interval_ms=info["full_refresh_interval_ms"],
        full_db_time_ms=_median_duration_ms(bundle, "full", info),
    )
    return refresh, info


def _median_duration_ms(bundle: RunBundle, kind: str, info: dict[str, Any]) -> float:
    """Median of the `last_duration_s` values a run's scrapes saw for one refresh kind, in ms."""
    column = f"{kind}_refresh_last_duration_s"
    if column not in bundle.series:
        return 0.0
    durations_s = pd.to_numeric(bundle.series[column], errors="coerce").dropna().unique()
    if durations_s.size == 0:
        return 0.0
    median_ms = float(np.median(durations_s)) * 1000.0
    info[f"{kind}_refresh_median_duration_ms"] = median_ms
    return median_ms


def _execution_config(
    bundle: RunBundle, settings: dict[str, Any], fit: LognormalFit, samples_ms: FloatArray,
    latency_model: LatencyModel, notes: list[str],
) -> ExecutionConfig:
    stub = bundle.metadata.get("stub_settings") or {}
    capacity = int(stub.get("capacity", 0) or 0)
    limit = stub.get("max_concurrency")
    if "error_rate" in stub:
        error_probability = float(stub["error_rate"])
    else:
        error_probability = _retry_error_rate(bundle.execution_timings)
        notes.append("stub error rate not recorded; estimated from attempts per call")
    kept = _thin(samples_ms)
    return ExecutionConfig(
        latency=latency_model,
        latency_median_ms=fit.median_ms,
        latency_sigma=fit.sigma,
        latency_mean_ms=float(np.mean(samples_ms)),
        latency_samples_ms=tuple(kept) if latency_model == "empirical" else (),
        timeout_ms=float(settings.get("execution_timeout_ms", 2000)),
        error_probability=min(error_probability, 0.999),
        max_attempts=int(settings.get("execution_max_attempts", 3)),
        backoff_base_ms=DEFAULT_BACKOFF_MS,
        capacity_concurrent=capacity,
        limit_concurrent=int(limit) if capacity and limit else None,
    )


def _retry_error_rate(calls: pd.DataFrame) -> float:
    attempts = pd.to_numeric(calls.get("attempts", pd.Series(dtype=float)), errors="coerce")
    succeeded = (calls["outcome"].astype(str) == "success").sum()
    total = float(attempts.sum())
    return float((total - succeeded) / total) if total > 0 else 0.0


def _thin(samples_ms: FloatArray) -> list[float]:
    """Keep at most MAX_KEPT_SAMPLES samples, evenly spaced in sorted order."""
    ordered = np.sort(samples_ms)
    if ordered.size > MAX_KEPT_SAMPLES:
        index = np.linspace(0, ordered.size - 1, MAX_KEPT_SAMPLES).round().astype(int)
        ordered = ordered[index]
    return [round(float(value), 4) for value in ordered]


def _duplicate_ratio(series: pd.DataFrame) -> float:
    if "duplicate_total" not in series or "received_total" not in series:
        return 0.0
    received = pd.to_numeric(series["received_total"], errors="coerce")
    duplicate = pd.to_numeric(series["duplicate_total"], errors="coerce")
    span = float(received.max() - received.min())
    return float((duplicate.max() - duplicate.min()) / span) if span > 0 else 0.0


def _mean_service_s(bundle: RunBundle, windows: Sequence[tuple[float, float]]) -> float:
    times = event_times_from_bundle(bundle)
    inside = np.zeros(times.received_s.size, dtype=bool)
    for start_s, end_s in windows:
        inside |= (times.received_s >= start_s) & (times.received_s < end_s)
    service_s = (times.finished_s - times.started_s)[inside]
    service_s = service_s[np.isfinite(service_s)]
    if not service_s.size:
        raise CalibrationError("no finished event in the calibration steps")
    return float(service_s.mean())


def _note_service_growth(
    bundle: RunBundle, windows: Sequence[tuple[float, float]], notes: list[str]
) -> None:
    """Note how the mean event service time of the busiest calibration step compares with the
    quietest one's: a growth beyond `SERVICE_GROWTH_NOTE` means the service slows under load
    (for example CPU contention) or the run started slowly; the fitted latency averages over
    the steps."""
    if len(windows) < 2:
        return
    first_s = _mean_service_s(bundle, windows[:1])
    last_s = _mean_service_s(bundle, windows[-1:])
    growth = last_s / first_s - 1.0
    notes.append(
        f"mean event service time {first_s * 1000:.1f} ms in the first calibration step, "
        f"{last_s * 1000:.1f} ms in the last ({growth:+.1%})"
    )
    if abs(growth) > SERVICE_GROWTH_NOTE:
        notes.append(
            "the service time differs between calibration steps by more than sampling noise "
            "(a slowdown under load, or a slow start of the run); the fitted latency averages "
            "over the calibration steps, so expect errors in between"
        )


def calibrate(
    bundle: RunBundle, steps: Sequence[int] | None = None, *,
    latency_model: LatencyModel = "lognormal",
) -> Calibration:
    """Fit a model config for the bundle's setting from its calibration steps."""
    settings = bundle.supervisor_settings
    if not settings:
        raise CalibrationError(f"bundle {bundle.path} has no supervisor_settings in metadata")
    chosen = sorted(steps) if steps is not None else default_calibration_steps(bundle)
    known = {step for step, *_ in measurement_windows(bundle)}
    unknown = sorted(set(chosen) - known)
    if unknown or not chosen:
        raise CalibrationError(
            f"calibration steps {chosen} are invalid: choose from the bundle's steps "
            f"{sorted(known)}"
        )
    windows = [(start_s, end_s) for step, start_s, end_s, _ in measurement_windows(bundle)
               if step in chosen]
    notes: list[str] = []

    stub = bundle.metadata.get("stub_settings") or {}
    capacity = int(stub.get("capacity", 0) or 0)
    samples_ms = base_latency_samples_ms(bundle.execution_timings, capacity, windows)
    fit = fit_lognormal(samples_ms)
    fanout, fanout_info = fanout_from_bundle(bundle)
    cpu = fit_cpu_costs(bundle.series, windows, fanout_info["mean_fanout_measured"])
    refresh, refresh_info = _refresh_info(bundle, settings)
    execution = _execution_config(bundle, settings, fit, samples_ms, latency_model, notes)

    pool_size = int(settings.get("pool_size", 1))
    config = ModelConfig(
        arrivals=_schedule(bundle),
        fanout=fanout,
        execution=execution,
        cpu=CpuConfig(ingest_cost_ms=cpu["ingest_cost_ms"], worker_cost_ms=cpu["worker_cost_ms"]),
        refresh=refresh,
        duplicate_ratio=min(_duplicate_ratio(bundle.series), 0.99),
        pool_size=pool_size,
        queue_max=int(settings.get("queue_capacity", 1000)),
        duration_s=sum(step.duration_s for step in bundle.load_steps),
    )
    mean_service_s = _mean_service_s(bundle, windows)
    _note_service_growth(bundle, windows, notes)
    logger.info(
        "Calibrated on steps %s: latency median %.2f ms sigma %.3f (%d samples), CPU %.3f ms "
        "per event, Zipf exponent %.3f",
        chosen, fit.median_ms, fit.sigma, fit.sample_count, cpu["cpu_cost_per_event_ms"],
        fanout.zipf_exponent,
    )
    return Calibration(
        model_config=config,
        latency_median_ms=fit.median_ms,
        latency_median_ci95_ms=fit.median_ci95_ms,
        latency_sigma=fit.sigma,
        latency_sigma_ci95=fit.sigma_ci95,
        latency_samples_ms=tuple(_thin(samples_ms)),
        cpu_cost_per_event_ms=cpu["cpu_cost_per_event_ms"],
        cpu=cpu,
        fanout=fanout_info,
        refresh=refresh_info,
        calibration_steps=tuple(chosen),
        capacity_per_s=pool_size / mean_service_s,
        mean_service_s=mean_service_s,
        stub_settings=dict(stub),
        notes=notes,
    )


def _schedule(bundle: RunBundle) -> ArrivalConfig:
    steps = bundle.load_steps
    origin_s = steps[0].start_unix_s
    schedule = tuple((round(step.start_unix_s - origin_s, 6), step.rate_per_s) for step in steps)
    return ArrivalConfig(kind="schedule", schedule=schedule)
