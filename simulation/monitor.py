"""Records of one model run and what is measured from them.

The model writes one row per arrival into `EventRecords` (arrays indexed by arrival order) and
nothing else on the per-event path. Everything an observer would see is derived afterwards, in
numpy: the time-weighted queue depth and its maximum, worker utilisation, and the series sampled
every scrape interval with the columns a Prometheus scrape of the supervisor gives. Counting at
time `t` includes changes at exactly `t`.

Invariants: `dropped` and `duplicate` events have no start or end; an admitted event has
`enqueue_s <= start_s <= end_s` once started; events still queued or in service when the run
stops have NaN `start_s` or `end_s`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

SERIES_COLUMNS: tuple[str, ...] = (
    "timestamp",
    "t_s",
    "target",
    "queue_depth",
    "queue_capacity",
    "workers_busy",
    "pool_size",
    "received_total",
    "processed_total",
    "failed_total",
    "dropped_total",
    "duplicate_total",
    "not_owned_total",
    "rejected_total",
    "in_flight",
    "lag_sum_s",
    "lag_count",
    "e2e_sum_s",
    "e2e_count",
    "lag_mean_s",
    "lag_p95_s",
    "e2e_mean_s",
    "e2e_p95_s",
    "dedup_hit_total",
    "dedup_miss_total",
    "dedup_error_total",
    "executions_total",
    "execution_errors_total",
    "full_refresh_last_success_unix_s",
    "incremental_refresh_last_success_unix_s",
    "full_refresh_last_duration_s",
    "incremental_refresh_last_duration_s",
    "cpu_seconds",
)


@dataclass(frozen=True)
class EventRecords:
    """Per-arrival record of one run; times are seconds since the run started.

    `arrival_s` is receipt at ingest, `enqueue_s` the moment ingest finished and the event met
    the queue (admitted, dropped, or found to be a duplicate), `start_s` when a worker took it and
    `end_s` when its last execution call finished. `executions` counts the event's copy trades,
    `execution_errors` those that failed after their last attempt, and `execution_attempts` all
    attempts, retries included.
    """

    arrival_s: FloatArray
    enqueue_s: FloatArray
    start_s: FloatArray
    end_s: FloatArray
    dropped: BoolArray
    duplicate: BoolArray
    failed: BoolArray
    executions: IntArray
    execution_errors: IntArray
    execution_attempts: IntArray

    @property
    def admitted(self) -> BoolArray:
        """Events that entered the queue or went straight to a worker."""
        ingested = ~np.isnan(self.enqueue_s)
        mask: BoolArray = ingested & ~self.dropped & ~self.duplicate
        return mask

    @property
    def started(self) -> BoolArray:
        """Events a worker took before the run stopped."""
        mask: BoolArray = ~np.isnan(self.start_s)
        return mask

    @property
    def completed(self) -> BoolArray:
        """Events whose calls all finished before the run stopped (processed or failed)."""
        mask: BoolArray = ~np.isnan(self.end_s)
        return mask

    @property
    def lag_s(self) -> FloatArray:
        """Time from enqueue until a worker took the event; NaN when it was not taken."""
        lag: FloatArray = self.start_s - self.enqueue_s
        return lag

    @property
    def e2e_s(self) -> FloatArray:
        """Time from receipt until the last call finished; NaN when not completed."""
        e2e: FloatArray = self.end_s - self.arrival_s
        return e2e


@dataclass(frozen=True)
class RunRecords:
    """Everything one replication recorded, with the settings needed to interpret it."""

    events: EventRecords
    pool_size: int
    queue_max: int
    duration_s: float
    start_unix_s: float
    incremental_refresh_done_s: FloatArray
    full_refresh_done_s: FloatArray
    ingest_cost_s: float
    worker_cost_s: float
    incremental_stall_s: float
    full_stall_s: float


def time_weighted_depth(events: EventRecords, start_s: float, stop_s: float) -> float:
    """Return the mean queue depth over `[start_s, stop_s]`, weighting each depth by its time."""
    admitted = events.admitted
    enqueue_s = events.enqueue_s[admitted]
    left_s = np.where(np.isnan(events.start_s[admitted]), stop_s, events.start_s[admitted])
    overlap_s = np.clip(np.minimum(left_s, stop_s) - np.maximum(enqueue_s, start_s), 0.0, None)
    return float(overlap_s.sum() / (stop_s - start_s))


def depth_changes(events: EventRecords) -> tuple[FloatArray, IntArray]:
    """Return the times at which the depth changes and the depth just after each change.

    At equal times a worker taking an event is applied before a new event joins the queue, so an
    event handed straight to an idle worker never counts as waiting.
    """
    admitted = events.admitted
    waited = admitted & ~(events.start_s <= events.enqueue_s)
    join_s = events.enqueue_s[waited]
    leave_s = events.start_s[waited]
    leave_s = leave_s[~np.isnan(leave_s)]
    times_s = np.concatenate((leave_s, join_s))
    steps = np.concatenate((-np.ones(leave_s.size, np.int64), np.ones(join_s.size, np.int64)))
    order = np.lexsort((steps, times_s))
    depth: IntArray = np.cumsum(steps[order])
    return times_s[order], depth


def max_depth(events: EventRecords, start_s: float, stop_s: float) -> int:
    """Return the largest queue depth reached in `[start_s, stop_s]`."""
    times_s, depth = depth_changes(events)
    before = np.searchsorted(times_s, start_s, side="right")
    depth_at_start = int(depth[before - 1]) if before > 0 else 0
    inside = depth[before : np.searchsorted(times_s, stop_s, side="right")]
    return max(depth_at_start, int(inside.max())) if inside.size else depth_at_start


def busy_time_s(events: EventRecords, start_s: float, stop_s: float) -> float:
    """Return the worker-seconds spent on events within `[start_s, stop_s]`."""
    started = events.started
    begin_s = events.start_s[started]
    finish_s = np.where(np.isnan(events.end_s[started]), stop_s, events.end_s[started])
    overlap_s = np.clip(np.minimum(finish_s, stop_s) - np.maximum(begin_s, start_s), 0.0, None)
    return float(overlap_s.sum())


def _count_until(sorted_times_s: FloatArray, at_s: FloatArray) -> IntArray:
    counts: IntArray = np.searchsorted(sorted_times_s, at_s, side="right").astype(np.int64)
    return counts


def _cumulative_until(
    times_s: FloatArray, values: FloatArray, at_s: FloatArray
) -> tuple[IntArray, FloatArray]:
    order = np.argsort(times_s, kind="stable")
    sorted_times_s = times_s[order]
    sums = np.concatenate(([0.0], np.cumsum(values[order])))
    counts = _count_until(sorted_times_s, at_s)
    return counts, sums[counts]


def _window_stats(
    times_s: FloatArray, values: FloatArray, at_s: FloatArray, width_s: float
) -> tuple[FloatArray, FloatArray]:
    """Mean and 95th percentile of values whose time is in `(t - width_s, t]`, per `t`."""
    order = np.argsort(times_s, kind="stable")
    sorted_times_s = times_s[order]
    sorted_values = values[order]
    upper = np.searchsorted(sorted_times_s, at_s, side="right")
    lower = np.searchsorted(sorted_times_s, at_s - width_s, side="right")
    means = np.full(at_s.size, np.nan)
    p95s = np.full(at_s.size, np.nan)
    for index, (low, high) in enumerate(zip(lower, upper, strict=True)):
        if high > low:
            window = sorted_values[low:high]
            means[index] = window.mean()
            p95s[index] = np.percentile(window, 95)
    return means, p95s


def _last_before(done_s: FloatArray, at_s: FloatArray, start_unix_s: float) -> FloatArray:
    counts = _count_until(np.sort(done_s), at_s)
    padded = np.concatenate(([np.nan], np.sort(done_s) + start_unix_s))
    last: FloatArray = padded[counts]
    return last


def scrape_series(run: RunRecords, scrape_interval_s: float) -> pd.DataFrame:
    """Sample the run every `scrape_interval_s` from 0 to its end, as a scraper would see it."""
    events = run.events
    at_s = np.arange(0.0, run.duration_s + 1e-9, scrape_interval_s)

    duplicate = events.duplicate
    admitted = events.admitted
    started = events.started
    completed = events.completed
    failed = completed & events.failed
    processed = completed & ~events.failed

    received = _count_until(np.sort(events.arrival_s), at_s)
    duplicates = _count_until(np.sort(events.enqueue_s[duplicate]), at_s)
    dropped = _count_until(np.sort(events.enqueue_s[events.dropped]), at_s)
    admitted_count = _count_until(np.sort(events.enqueue_s[admitted]), at_s)
    started_count, lag_sum_s = _cumulative_until(
        events.start_s[started], events.lag_s[started], at_s
    )
    processed_count = _count_until(np.sort(events.end_s[processed]), at_s)
    failed_count = _count_until(np.sort(events.end_s[failed]), at_s)
    e2e_count, e2e_sum_s = _cumulative_until(events.end_s[completed], events.e2e_s[completed], at_s)
    _, executions = _cumulative_until(
        events.end_s[completed], events.executions[completed].astype(np.float64), at_s
    )
    _, execution_errors = _cumulative_until(
        events.end_s[completed], events.execution_errors[completed].astype(np.float64), at_s
    )
    lag_mean_s, lag_p95_s = _window_stats(
        events.start_s[started], events.lag_s[started], at_s, scrape_interval_s
    )
    e2e_mean_s, e2e_p95_s = _window_stats(
        events.end_s[completed], events.e2e_s[completed], at_s, scrape_interval_s
    )

    incremental_done = _count_until(np.sort(run.incremental_refresh_done_s), at_s)
    full_done = _count_until(np.sort(run.full_refresh_done_s), at_s)
    # NOTE: CPU time is booked when each piece of work starts, not spread over its duration.
    cpu_seconds = (
        run.ingest_cost_s * received
        + run.worker_cost_s * started_count
        + run.incremental_stall_s * incremental_done
        + run.full_stall_s * full_done
    )

    zeros = np.zeros(at_s.size, dtype=np.int64)
    columns: dict[str, object] = {
        "timestamp": run.start_unix_s + at_s,
        "t_s": at_s,
        "target": "model",
        "queue_depth": admitted_count - started_count,
        "queue_capacity": run.queue_max,
        "workers_busy": started_count - e2e_count,
        "pool_size": run.pool_size,
        "received_total": received,
        "processed_total": processed_count,
        "failed_total": failed_count,
        "dropped_total": dropped,
        "duplicate_total": duplicates,
        "not_owned_total": zeros,
        "rejected_total": zeros,
        # Events still in ingest count as in flight, so the accounted identity is exact.
        "in_flight": received - processed_count - failed_count - dropped - duplicates,
        "lag_sum_s": lag_sum_s,
        "lag_count": started_count,
        "e2e_sum_s": e2e_sum_s,
        "e2e_count": e2e_count,
        "lag_mean_s": lag_mean_s,
        "lag_p95_s": lag_p95_s,
        "e2e_mean_s": e2e_mean_s,
        "e2e_p95_s": e2e_p95_s,
        "dedup_hit_total": duplicates,
        "dedup_miss_total": admitted_count + dropped,
        "dedup_error_total": zeros,
        "executions_total": executions.astype(np.int64),
        "execution_errors_total": execution_errors.astype(np.int64),
        "full_refresh_last_success_unix_s": _last_before(
            run.full_refresh_done_s, at_s, run.start_unix_s
        ),
        "incremental_refresh_last_success_unix_s": _last_before(
            run.incremental_refresh_done_s, at_s, run.start_unix_s
        ),
        # The model's refresh cost is an input, not a measurement, so it is not sampled.
        "full_refresh_last_duration_s": np.full(at_s.size, np.nan),
        "incremental_refresh_last_duration_s": np.full(at_s.size, np.nan),
        "cpu_seconds": cpu_seconds,
    }
    return pd.DataFrame(columns, columns=list(SERIES_COLUMNS))
