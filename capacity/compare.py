"""Comparison of measured and predicted metrics at each load step of a run.

The prediction replays the run's measured arrival times (every event in `event_timings.csv`,
which excludes duplicates) through the calibrated model, over the run's whole span including the
drain, so the queue each step inherits from the previous one is modelled too. Each replication
draws fresh fan-outs and latencies. Both sides are measured by `capacity.measure.window_metrics`
over the same windows. The prediction is the mean over replications with a Student t 95%
half-width.

Accuracy targets, checked on the steps not used for calibration whose offered rate is 50% to
130% of the calibrated capacity: mean lag, p95 end-to-end latency and mean queue depth within
15% relative error, drop rate within 2 percentage points. Near-zero values make relative errors
meaningless, so a metric also passes when its absolute error is within a floor: 5 ms for lags,
10 ms for end-to-end latency, 0.5 events for queue depth.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from capacity.bundle import RunBundle
from capacity.calibrate import Calibration
from capacity.measure import STEP_METRICS, EventTimes, measure_steps, window_metrics
from simulation.config import ArrivalConfig, CpuConfig
from simulation.model import simulate
from simulation.monitor import RunRecords

logger = logging.getLogger(__name__)

RELATIVE_TARGET = 0.15
DROP_RATE_TARGET = 0.02
LOAD_RANGE = (0.5, 1.3)

# metric -> (relative error limit or None, absolute error limit)
TARGETS: dict[str, tuple[float | None, float]] = {
    "mean_lag_s": (RELATIVE_TARGET, 0.005),
    "p95_lag_s": (RELATIVE_TARGET, 0.005),
    "p95_e2e_latency_s": (RELATIVE_TARGET, 0.010),
    "mean_queue_depth": (RELATIVE_TARGET, 0.5),
    "drop_rate": (None, DROP_RATE_TARGET),
    "throughput_per_s": (RELATIVE_TARGET, 0.5),
    "offered_rate_per_s": (RELATIVE_TARGET, 0.5),
    "execution_error_rate": (None, DROP_RATE_TARGET),
}
ACCURACY_METRICS: tuple[str, ...] = (
    "mean_lag_s", "p95_e2e_latency_s", "mean_queue_depth", "drop_rate",
)
TABLE_COLUMNS: tuple[str, ...] = (
    "metric", "load_step", "measured", "predicted", "predicted_ci95", "relative_error",
    "absolute_error", "used_for_calibration", "within_target", "load_fraction", "judged",
)


def relative_error(measured: float, predicted: float) -> float:
    """Return `(predicted - measured) / |measured|`; NaN when the measured value is 0."""
    if measured == 0 or not math.isfinite(measured) or not math.isfinite(predicted):
        return math.nan
    return (predicted - measured) / abs(measured)


def within_target(metric: str, measured: float, predicted: float) -> bool:
    """Return True when the error is within the metric's relative limit or its absolute floor."""
    relative_limit, absolute_limit = TARGETS[metric]
    if not (math.isfinite(measured) and math.isfinite(predicted)):
        return False
    if abs(predicted - measured) <= absolute_limit:
        return True
    if relative_limit is None:
        return False
    error = relative_error(measured, predicted)
    return math.isfinite(error) and abs(error) <= relative_limit


def event_times_from_records(run: RunRecords, origin_unix_s: float) -> EventTimes:
    """Convert a model run's records into event times on the Unix clock of the bundle."""
    events = run.events
    keep = ~events.duplicate
    return EventTimes(
        received_s=events.arrival_s[keep] + origin_unix_s,
        enqueued_s=events.enqueue_s[keep] + origin_unix_s,
        started_s=events.start_s[keep] + origin_unix_s,
        finished_s=events.end_s[keep] + origin_unix_s,
        dropped=events.dropped[keep],
        executions=events.executions[keep].astype(np.float64),
        execution_errors=events.execution_errors[keep].astype(np.float64),
    )


@dataclass
class Comparison:
    """Measured against predicted metrics per load step, and the simulated series."""

    table: pd.DataFrame
    measured: pd.DataFrame
    simulated_series: pd.DataFrame
    calibration_steps: tuple[int, ...]
    capacity_per_s: float
    replications: int

    def accuracy_summary(self) -> dict[str, Any]:
        """Say whether the judged steps meet the accuracy targets, per metric and overall."""
        judged = self.table[self.table["judged"]]
        metrics: dict[str, Any] = {}
        for metric in ACCURACY_METRICS:
            rows = judged[judged["metric"] == metric]
            errors = rows["relative_error"].abs()
            metrics[metric] = {
                "steps": [int(step) for step in rows["load_step"]],
                "within_target": bool(rows["within_target"].all()) if len(rows) else None,
                "max_abs_relative_error": float(errors.max()) if errors.notna().any() else None,
                "max_abs_error": float(rows["absolute_error"].abs().max()) if len(rows) else None,
            }
        verdicts = [value["within_target"] for value in metrics.values()]
        return {
            "judged_steps": sorted({int(step) for step in judged["load_step"]}),
            "calibration_steps": list(self.calibration_steps),
            "capacity_per_s": self.capacity_per_s,
            "metrics": metrics,
            "passed": bool(verdicts) and all(verdict is True for verdict in verdicts),
        }


def trace_config(bundle: RunBundle, calibration: Calibration, replications: int, seed: int,
                 ) -> tuple[Any, float]:
    """Return the calibrated config replaying the bundle's arrivals, and its Unix origin."""
    received = pd.to_numeric(bundle.event_timings["received_unix_s"], errors="coerce").dropna()
    if received.empty:
        raise ValueError(f"bundle {bundle.path} has no event timings to replay")
    start = float(bundle.metadata.get("start_unix_s", received.min()))
    origin_s = min(start, float(received.min()))
    end_s = float(bundle.metadata.get("end_unix_s", received.max() + 10.0))
    times_s = tuple(float(value) for value in np.sort(received.to_numpy() - origin_s))

    base = calibration.model_config
    duplicates = base.duplicate_ratio
    # Duplicates are not in the timings, but they cost ingest time: spread their cost over
    # the replayed events.
    ingest_ms = base.cpu.ingest_cost_ms / (1.0 - duplicates)
    config = replace(
        base,
        arrivals=ArrivalConfig(kind="trace", trace_times_s=times_s),
        cpu=CpuConfig(ingest_cost_ms=ingest_ms, worker_cost_ms=base.cpu.worker_cost_ms),
        duplicate_ratio=0.0,
        duration_s=max(end_s - origin_s, times_s[-1] + 1.0),
        warmup_s=0.0,
        replications=replications,
        seed=seed,
        start_unix_s=origin_s,
    )
    return config, origin_s


def _t_half_width(values: list[float]) -> float:
    finite = [value for value in values if math.isfinite(value)]
    if len(finite) < 2:
        return math.nan
    t = float(stats.t.ppf(0.975, len(finite) - 1))
    return t * float(np.std(finite, ddof=1)) / math.sqrt(len(finite))


def predict_steps(
    bundle: RunBundle, calibration: Calibration, measured: pd.DataFrame, *,
    replications: int, seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Simulate the run; return per-step predictions (mean, `_ci95`) and replication 0's series."""
    config, origin_s = trace_config(bundle, calibration, replications, seed)
    logger.info("Replaying %d arrivals through the model, %d replications",
                len(config.arrivals.trace_times_s), replications)
    result = simulate(config)
    per_run = [event_times_from_records(run, origin_s) for run in result.runs]

    rows = []
    for window in measured.itertuples():
        samples = [window_metrics(times, window.start_unix_s, window.end_unix_s)
                   for times in per_run]
        row: dict[str, float] = {"load_step": int(window.load_step)}
        for metric in STEP_METRICS:
            values = [sample[metric] for sample in samples]
            row[metric] = float(np.nanmean(values)) if any(map(math.isfinite, values)) else math.nan
            row[f"{metric}_ci95"] = _t_half_width(values)
        rows.append(row)
    return pd.DataFrame(rows), result.series(0)


def compare_run(
    bundle: RunBundle, calibration: Calibration, *, judge_steps: list[int] | None = None,
    replications: int = 5, seed: int = 1, settle_s: float | None = None,
) -> Comparison:
    """Compare measured and predicted metrics at every load step of `bundle`.

    `judge_steps` overrides which steps the accuracy summary judges; by default, the steps not
    used for calibration whose offered rate is within `LOAD_RANGE` of the calibrated capacity.
    """
    measured = measure_steps(bundle, settle_s)
    predicted, series = predict_steps(bundle, calibration, measured,
                                      replications=replications, seed=seed)
    capacity = calibration.capacity_per_s
    calibration_steps = set(calibration.calibration_steps)

    rows = []
    for measured_row, predicted_row in zip(measured.to_dict("records"),
                                           predicted.to_dict("records"), strict=True):
        step = int(measured_row["load_step"])
        load_fraction = measured_row["offered_rate_per_s"] / capacity
        if judge_steps is None:
            in_range = LOAD_RANGE[0] <= load_fraction <= LOAD_RANGE[1]
            judged = in_range and step not in calibration_steps
        else:
            judged = step in judge_steps
        for metric in STEP_METRICS:
            value, prediction = float(measured_row[metric]), float(predicted_row[metric])
            rows.append({
                "metric": metric,
                "load_step": step,
                "measured": value,
                "predicted": prediction,
                "predicted_ci95": float(predicted_row[f"{metric}_ci95"]),
                "relative_error": relative_error(value, prediction),
                "absolute_error": prediction - value,
                "used_for_calibration": step in calibration_steps,
                "within_target": within_target(metric, value, prediction),
                "load_fraction": load_fraction,
                "judged": judged,
            })
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    return Comparison(
        table=table,
        measured=measured,
        simulated_series=series,
        calibration_steps=tuple(sorted(calibration_steps)),
        capacity_per_s=capacity,
        replications=replications,
    )
