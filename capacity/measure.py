"""Measured metrics per load step, computed the same way for a run bundle and for the model.

Every metric comes from per-event times (receipt, enqueue, worker start, finish) inside a step's
measurement window, so the measured and the simulated figures are computed by one function,
`window_metrics`, and differ only in where the times come from.

Settle time: the first `settle_s` seconds of each step are not measured, because the queue
needs time to move from the previous step's level to the new one. The default is 20% of the
step, at most 5 s (6 s of a 30 s step, 5 s of longer steps). An event belongs to the window in
which it was received. The queue depth is the exact time average over the window of the number
of admitted events between enqueue and worker start, which is what the `supervisor_queue_depth`
gauge shows; the series' sampled mean is kept beside it as a cross-check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from capacity.bundle import RunBundle

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

SETTLE_FRACTION = 0.2
MAX_SETTLE_S = 5.0

STEP_METRICS: tuple[str, ...] = (
    "mean_lag_s",
    "p95_lag_s",
    "p95_e2e_latency_s",
    "mean_queue_depth",
    "drop_rate",
    "throughput_per_s",
    "offered_rate_per_s",
    "execution_error_rate",
)


def default_settle_s(step_duration_s: float) -> float:
    """Return the settle time trimmed from the start of a step of this length."""
    return min(MAX_SETTLE_S, SETTLE_FRACTION * step_duration_s)


@dataclass(frozen=True)
class EventTimes:
    """Per-event times in seconds on one clock; NaN where an event never reached that point.

    `executions` and `execution_errors` count each event's execution calls and those whose
    final outcome was not success.
    """

    received_s: FloatArray
    enqueued_s: FloatArray
    started_s: FloatArray
    finished_s: FloatArray
    dropped: BoolArray
    executions: FloatArray
    execution_errors: FloatArray

    @property
    def lag_s(self) -> FloatArray:
        lag: FloatArray = self.started_s - self.enqueued_s
        return lag

    @property
    def e2e_s(self) -> FloatArray:
        e2e: FloatArray = self.finished_s - self.received_s
        return e2e


def _column(frame: pd.DataFrame, name: str) -> FloatArray:
    values: FloatArray = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64)
    return values


def event_times_from_bundle(bundle: RunBundle) -> EventTimes:
    """Build event times from a bundle's `event_timings.csv` and `execution_timings.csv`."""
    events = bundle.event_timings
    calls = bundle.execution_timings
    ids = events["event_id"].astype(str)
    if len(calls):
        failed_calls = calls["outcome"].astype(str) != "success"
        per_event = pd.DataFrame({"event_id": calls["event_id"].astype(str), "error": failed_calls})
        grouped = per_event.groupby("event_id")["error"].agg(["size", "sum"])
        executions = ids.map(grouped["size"]).fillna(0.0).to_numpy(dtype=np.float64)
        errors = ids.map(grouped["sum"]).fillna(0.0).to_numpy(dtype=np.float64)
    else:
        executions = np.zeros(len(events))
        errors = np.zeros(len(events))
    return EventTimes(
        received_s=_column(events, "received_unix_s"),
        enqueued_s=_column(events, "enqueued_unix_s"),
        started_s=_column(events, "started_unix_s"),
        finished_s=_column(events, "finished_unix_s"),
        dropped=(events["outcome"].astype(str) == "dropped").to_numpy(),
        executions=executions,
        execution_errors=errors,
    )


def mean_queue_depth(times: EventTimes, start_s: float, end_s: float) -> float:
    """Return the time-averaged number of admitted events waiting for a worker in a window."""
    admitted = ~times.dropped & ~np.isnan(times.enqueued_s)
    enter_s = times.enqueued_s[admitted]
    leave_s = np.where(np.isnan(times.started_s[admitted]), np.inf, times.started_s[admitted])
    overlap_s = np.clip(np.minimum(leave_s, end_s) - np.maximum(enter_s, start_s), 0.0, None)
    return float(overlap_s.sum() / (end_s - start_s))


def _mean(values: FloatArray) -> float:
    return float(values.mean()) if values.size else math.nan


def _p95(values: FloatArray) -> float:
    return float(np.percentile(values, 95)) if values.size else math.nan


def window_metrics(times: EventTimes, start_s: float, end_s: float) -> dict[str, float]:
    """Measure one window `[start_s, end_s)`; events belong to it by receipt time."""
    if not end_s > start_s:
        raise ValueError(f"window [{start_s}, {end_s}) is empty: end must be after start")
    length_s = end_s - start_s
    received = (times.received_s >= start_s) & (times.received_s < end_s)
    lags = times.lag_s[received]
    e2e = times.e2e_s[received]
    finished = (times.finished_s >= start_s) & (times.finished_s < end_s)
    started = received & ~np.isnan(times.started_s)
    executions = float(times.executions[started].sum())
    count = int(received.sum())

    return {
        "mean_lag_s": _mean(lags[~np.isnan(lags)]),
        "p95_lag_s": _p95(lags[~np.isnan(lags)]),
        "p95_e2e_latency_s": _p95(e2e[~np.isnan(e2e)]),
        "mean_queue_depth": mean_queue_depth(times, start_s, end_s),
        "drop_rate": float(times.dropped[received].sum() / count) if count else math.nan,
        "throughput_per_s": float(finished.sum() / length_s),
        "offered_rate_per_s": count / length_s,
        "execution_error_rate": (
            float(times.execution_errors[started].sum()) / executions if executions else 0.0
        ),
        "events": float(count),
    }


def measurement_windows(
    bundle: RunBundle, settle_s: float | None = None
) -> list[tuple[int, float, float, float]]:
    """Return `(step, start_unix_s, end_unix_s, rate_per_s)` of each step after its settle time."""
    windows = []
    for step in bundle.load_steps:
        trim_s = default_settle_s(step.duration_s) if settle_s is None else settle_s
        if trim_s >= step.duration_s:
            raise ValueError(
                f"settle_s={trim_s} is not shorter than step {step.step} "
                f"({step.duration_s:.1f} s): pass a smaller settle_s"
            )
        windows.append((step.step, step.start_unix_s + trim_s, step.end_unix_s, step.rate_per_s))
    return windows


def _series_depth(bundle: RunBundle, start_s: float, end_s: float) -> float:
    series = bundle.series
    if series.empty or "queue_depth" not in series:
        return math.nan
    stamps = pd.to_numeric(series["timestamp"], errors="coerce")
    inside = (stamps >= start_s) & (stamps < end_s)
    values = pd.to_numeric(series.loc[inside, "queue_depth"], errors="coerce").dropna()
    return float(values.mean()) if len(values) else math.nan


def measure_steps(bundle: RunBundle, settle_s: float | None = None) -> pd.DataFrame:
    """Return one row per load step with the measured metrics of its window.

    Columns: `load_step`, `rate_per_s` (the profile's), `start_unix_s`, `end_unix_s` (the window
    after the settle time), the `STEP_METRICS`, `events` and `series_mean_queue_depth`.
    """
    if not bundle.load_steps:
        raise ValueError(f"bundle {bundle.path} has no load_steps in metadata.json")
    times = event_times_from_bundle(bundle)
    rows = []
    for step, start_s, end_s, rate_per_s in measurement_windows(bundle, settle_s):
        row: dict[str, float] = {
            "load_step": step,
            "rate_per_s": rate_per_s,
            "start_unix_s": start_s,
            "end_unix_s": end_s,
        }
        row.update(window_metrics(times, start_s, end_s))
        row["series_mean_queue_depth"] = _series_depth(bundle, start_s, end_s)
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["load_step"] = frame["load_step"].astype(int)
    return frame
