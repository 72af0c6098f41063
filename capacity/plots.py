"""Figures of the comparison: measured against simulated time series, and per-step metrics.

Both functions draw with matplotlib's Agg backend, write a PNG and return its path. Calibration
steps are shaded grey so a reader sees at once which steps the model was fitted on.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from capacity.bundle import RunBundle
from capacity.compare import Comparison

# (series column, axis label, per-second difference of a counter)
OVERLAY_PANELS: tuple[tuple[str, str, bool], ...] = (
    ("queue_depth", "queue depth (events)", False),
    ("lag_mean_s", "mean lag per scrape (s)", False),
    ("e2e_p95_s", "p95 end-to-end latency per scrape (s)", False),
    ("dropped_total", "drops per second", True),
)
STEP_PANELS: tuple[tuple[str, str], ...] = (
    ("mean_lag_s", "mean lag (s)"),
    ("p95_e2e_latency_s", "p95 end-to-end latency (s)"),
    ("mean_queue_depth", "mean queue depth (events)"),
    ("drop_rate", "drop rate"),
    ("throughput_per_s", "throughput (events/s)"),
    ("p95_lag_s", "p95 lag (s)"),
)


def _panel_values(series: pd.DataFrame, column: str, per_second: bool) -> tuple[
    np.ndarray, np.ndarray
]:
    ordered = series.sort_values("timestamp")
    stamps = pd.to_numeric(ordered["timestamp"], errors="coerce").to_numpy(np.float64)
    values = pd.to_numeric(ordered[column], errors="coerce").to_numpy(np.float64)
    if per_second:
        return stamps[1:], np.diff(values) / np.diff(stamps)
    return stamps, values


def _shade_steps(axis: Axes, comparison: Comparison, origin_s: float) -> None:
    for row in comparison.measured.itertuples():
        if int(row.load_step) in comparison.calibration_steps:
            axis.axvspan(row.start_unix_s - origin_s, row.end_unix_s - origin_s,
                         color="0.9", zorder=0)
        axis.axvline(row.start_unix_s - origin_s, color="0.7", linewidth=0.6)


def plot_overlay(bundle: RunBundle, comparison: Comparison, path: str | Path) -> Path:
    """Draw measured and simulated (replication 0) series of depth, lag, e2e p95 and drops."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    steps = bundle.load_steps
    origin_s = steps[0].start_unix_s if steps else float(bundle.series["timestamp"].min())

    figure, axes = plt.subplots(len(OVERLAY_PANELS), 1, figsize=(10, 10), sharex=True)
    for axis, (column, label, per_second) in zip(axes, OVERLAY_PANELS, strict=True):
        for series, name, style in ((bundle.series, "measured", "-"),
                                    (comparison.simulated_series, "simulated", "--")):
            if column not in series:
                continue
            stamps, values = _panel_values(series, column, per_second)
            axis.plot(stamps - origin_s, values, style, label=name, linewidth=1.2)
        _shade_steps(axis, comparison, origin_s)
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].legend(loc="upper left")
    axes[0].set_title("Measured and simulated series (grey: calibration steps)")
    axes[-1].set_xlabel("seconds since the first load step")
    figure.tight_layout()
    figure.savefig(target, dpi=110)
    plt.close(figure)
    return target


def plot_step_comparison(comparison: Comparison, path: str | Path) -> Path:
    """Draw measured values and predictions with 95% intervals for each load step."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    table = comparison.table

    figure, axes = plt.subplots(2, 3, figsize=(13, 7))
    for axis, (metric, label) in zip(axes.flat, STEP_PANELS, strict=True):
        rows = table[table["metric"] == metric].sort_values("load_step")
        offered = rows["load_fraction"].to_numpy() * 100.0
        axis.plot(offered, rows["measured"], "o-", label="measured")
        axis.errorbar(offered, rows["predicted"], yerr=rows["predicted_ci95"].fillna(0.0),
                      fmt="s--", capsize=3, label="predicted (95% CI)")
        for fraction, used in zip(offered, rows["used_for_calibration"], strict=True):
            if used:
                axis.axvspan(fraction - 2.0, fraction + 2.0, color="0.9", zorder=0)
        axis.set_title(label)
        axis.set_xlabel("offered load (% of calibrated capacity)")
        axis.grid(alpha=0.3)
    axes.flat[0].legend(loc="upper left")
    figure.suptitle("Measured and predicted per load step (grey: calibration steps)")
    figure.tight_layout()
    figure.savefig(target, dpi=110)
    plt.close(figure)
    return target
