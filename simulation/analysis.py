"""Output analysis: warm-up removal, per-replication summaries and confidence intervals.

Warm-up: a run starts empty, which biases early lags low. Unless `warmup_s` is given, the
truncation point comes from MSER-5 applied to the lags of admitted events in
enqueue order: the series is cut into batches of 5, and the truncation `d` (in batches, searched
over the first half) minimises `sum_{j > d} (Z_j - mean_d)^2 / (m - d)^2`, the squared standard
error of the mean of what is kept. The warm-up time is the enqueue time of the first kept event,
and every metric of that replication is measured over `[warmup_s, duration_s]`.

Confidence intervals come from independent replications (Student t, 95%, `n - 1` degrees of
freedom). Means that are ratios of totals (drop rate, mean lag, mean end-to-end latency) use the
ratio estimator `sum Y / sum X` over replications with a delta-method half-width, not a
per-event binomial or i.i.d. interval, because events within one run are correlated.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats

from simulation.monitor import RunRecords, busy_time_s, max_depth, time_weighted_depth

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

MSER_BATCH_SIZE = 5

SUMMARY_KEYS: tuple[str, ...] = (
    "mean_lag_s",
    "p95_lag_s",
    "p99_lag_s",
    "drop_rate",
    "mean_queue_depth",
    "max_queue_depth",
    "utilization",
    "throughput_per_s",
    "mean_e2e_latency_s",
    "p95_e2e_latency_s",
)

# Summary keys estimated as a ratio of totals across replications: (numerator, denominator).
RATIO_KEYS: dict[str, tuple[str, str]] = {
    "drop_rate": ("dropped", "offered"),
    "mean_lag_s": ("lag_sum_s", "lag_count"),
    "mean_e2e_latency_s": ("e2e_sum_s", "e2e_count"),
}


def mser_truncation(series: FloatArray, batch_size: int = MSER_BATCH_SIZE) -> int:
    """Return how many leading observations MSER-`batch_size` removes from `series`."""
    batches = series.size // batch_size
    if batches < 4:
        return 0
    means = series[: batches * batch_size].reshape(batches, batch_size).mean(axis=1)
    # Suffix sums give every candidate's kept mean and spread in one pass.
    suffix_sum = np.cumsum(means[::-1])[::-1]
    suffix_square = np.cumsum((means**2)[::-1])[::-1]
    kept = np.arange(batches, 0, -1, dtype=np.float64)
    spread = suffix_square - suffix_sum**2 / kept
    statistic = spread / kept**2
    candidates = batches // 2
    best = int(np.argmin(statistic[: candidates + 1]))
    if best == candidates:
        logger.warning(
            "MSER-5 truncation is at the end of its search range (%d of %d batches): the run "
            "may be too short to reach steady state, so lengthen duration_s",
            best,
            batches,
        )
    return best * batch_size


def mser_warmup_s(run: RunRecords) -> float:
    """Return the warm-up time chosen by MSER-5 on the lags of admitted events."""
    events = run.events
    started = events.started
    order = np.argsort(events.enqueue_s[started], kind="stable")
    lags = events.lag_s[started][order]
    cut = mser_truncation(lags)
    if cut == 0 or cut >= lags.size:
        return 0.0
    return float(events.enqueue_s[started][order][cut])


@dataclass(frozen=True)
class ReplicationSummary:
    """Metrics of one replication over `[warmup_s, duration_s]`, plus the totals behind them."""

    warmup_s: float
    metrics: dict[str, float]
    offered: int
    dropped: int
    lag_sum_s: float
    lag_count: int
    e2e_sum_s: float
    e2e_count: int

    def total(self, name: str) -> float:
        """Return one of the totals used by the ratio estimators."""
        value: float = getattr(self, name)
        return value


def _percentile(values: FloatArray, percent: float) -> float:
    return float(np.percentile(values, percent)) if values.size else math.nan


def summarize_run(run: RunRecords, warmup_s: float | None) -> ReplicationSummary:
    """Measure one replication after removing its warm-up (MSER-5 when `warmup_s` is None)."""
    cut_s = mser_warmup_s(run) if warmup_s is None else float(warmup_s)
    stop_s = run.duration_s
    window_s = stop_s - cut_s
    events = run.events

    met_queue = ~np.isnan(events.enqueue_s) & ~events.duplicate & (events.enqueue_s >= cut_s)
    offered = int(met_queue.sum())
    dropped = int((met_queue & events.dropped).sum())
    started = events.started & (events.start_s >= cut_s)
    lags = events.lag_s[started]
    completed = events.completed & (events.end_s >= cut_s)
    e2e = events.e2e_s[completed]

    metrics = {
        "mean_lag_s": float(lags.mean()) if lags.size else math.nan,
        "p95_lag_s": _percentile(lags, 95),
        "p99_lag_s": _percentile(lags, 99),
        "drop_rate": dropped / offered if offered else math.nan,
        "mean_queue_depth": time_weighted_depth(events, cut_s, stop_s),
        "max_queue_depth": float(max_depth(events, cut_s, stop_s)),
        "utilization": busy_time_s(events, cut_s, stop_s) / (run.pool_size * window_s),
        "throughput_per_s": completed.sum() / window_s,
        "mean_e2e_latency_s": float(e2e.mean()) if e2e.size else math.nan,
        "p95_e2e_latency_s": _percentile(e2e, 95),
    }
    return ReplicationSummary(
        warmup_s=cut_s,
        metrics=metrics,
        offered=offered,
        dropped=dropped,
        lag_sum_s=float(lags.sum()),
        lag_count=int(lags.size),
        e2e_sum_s=float(e2e.sum()),
        e2e_count=int(e2e.size),
    )


def t_half_width(values: Sequence[float]) -> float:
    """Return the 95% Student t half-width of the mean of independent replications."""
    sample = np.asarray(values, dtype=np.float64)
    if sample.size < 2:
        return math.nan
    quantile = stats.t.ppf(0.975, sample.size - 1)
    return float(quantile * sample.std(ddof=1) / math.sqrt(sample.size))


def ratio_estimate(
    numerators: Sequence[float], denominators: Sequence[float]
) -> tuple[float, float]:
    """Return `sum Y / sum X` and its 95% delta-method half-width over replications.

    With `r = mean(Y) / mean(X)` and residuals `d_i = Y_i - r X_i`, the variance of `r` is
    about `var(d) / (n mean(X)^2)`.
    """
    y = np.asarray(numerators, dtype=np.float64)
    x = np.asarray(denominators, dtype=np.float64)
    if x.sum() <= 0:
        return math.nan, math.nan
    ratio = float(y.sum() / x.sum())
    if y.size < 2:
        return ratio, math.nan
    residuals = y - ratio * x
    quantile = stats.t.ppf(0.975, y.size - 1)
    half_width = quantile * residuals.std(ddof=1) / (math.sqrt(y.size) * x.mean())
    return ratio, float(half_width)


def combine_replications(summaries: Sequence[ReplicationSummary]) -> dict[str, float]:
    """Return the summary keys over all replications, with `_ci95` half-widths when n > 1.

    Ratio keys use the ratio estimator; the others (percentiles, depth, utilisation,
    throughput, and the maximum depth, which is the mean of the per-replication maxima) use
    the mean of the replications and its t interval.
    """
    result: dict[str, float] = {}
    for key in SUMMARY_KEYS:
        if key in RATIO_KEYS:
            numerator, denominator = RATIO_KEYS[key]
            value, half_width = ratio_estimate(
                [summary.total(numerator) for summary in summaries],
                [summary.total(denominator) for summary in summaries],
            )
        else:
            values = [summary.metrics[key] for summary in summaries]
            value = float(np.mean(values))
            half_width = t_half_width(values)
        result[key] = value
        if len(summaries) > 1:
            result[f"{key}_ci95"] = half_width
    return result
