"""Comparison: error arithmetic and target flags, and a full comparison and plots on the
recorded sample bundle in examples/sample-bundle."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from capacity.bundle import load_bundle
from capacity.calibrate import calibrate
from capacity.compare import TABLE_COLUMNS, compare_run, relative_error, within_target
from capacity.measure import STEP_METRICS
from capacity.plots import plot_overlay, plot_step_comparison

SAMPLE_BUNDLE = Path(__file__).resolve().parent.parent / "examples" / "sample-bundle"
PNG_MAGIC = b"\x89PNG"


def test_relative_error_signed() -> None:
    assert relative_error(2.0, 2.5) == pytest.approx(0.25)
    assert relative_error(2.0, 1.5) == pytest.approx(-0.25)
    assert math.isnan(relative_error(0.0, 1.0))


@pytest.mark.parametrize(
    ("metric", "measured", "predicted", "expected"),
    [
        ("mean_lag_s", 1.0, 1.14, True),
        ("mean_lag_s", 1.0, 1.16, False),
        ("mean_lag_s", 0.001, 0.005, True),  # 4 ms apart: inside the 5 ms floor
        ("mean_lag_s", 0.001, 0.007, False),
        ("p95_e2e_latency_s", 0.050, 0.059, True),
        ("mean_queue_depth", 0.1, 0.5, True),
        ("mean_queue_depth", 100.0, 80.0, False),
        ("drop_rate", 0.0, 0.019, True),
        ("drop_rate", 0.30, 0.33, False),
        ("drop_rate", 0.30, math.nan, False),
    ],
)
def test_within_target(metric: str, measured: float, predicted: float, expected: bool) -> None:
    assert within_target(metric, measured, predicted) is expected


@pytest.fixture(scope="module")
def comparison_and_bundle():  # type: ignore[no-untyped-def]
    bundle = load_bundle(SAMPLE_BUNDLE)
    calibration = calibrate(bundle)
    return compare_run(bundle, calibration, replications=2, seed=3), bundle, calibration


def test_comparison_table_columns(comparison_and_bundle) -> None:  # type: ignore[no-untyped-def]
    comparison, bundle, calibration = comparison_and_bundle
    table = comparison.table

    assert list(table.columns) == list(TABLE_COLUMNS)
    assert len(table) == len(STEP_METRICS) * len(bundle.load_steps)
    used = table[table["used_for_calibration"]]["load_step"].unique()
    assert sorted(used) == sorted(calibration.calibration_steps)
    assert not table[table["judged"]]["used_for_calibration"].any()
    measured_rows = table[table["metric"] == "offered_rate_per_s"]
    # The model replays the measured arrivals, so the offered rate matches exactly.
    assert (measured_rows["measured"] - measured_rows["predicted"]).abs().max() < 1e-9
    assert table["predicted"].notna().all()


def test_accuracy_summary_shape(comparison_and_bundle) -> None:  # type: ignore[no-untyped-def]
    comparison, _, _ = comparison_and_bundle

    summary = comparison.accuracy_summary()

    assert set(summary["metrics"]) == {"mean_lag_s", "p95_e2e_latency_s", "mean_queue_depth",
                                       "drop_rate"}
    assert isinstance(summary["passed"], bool)
    judged = set(summary["judged_steps"])
    assert judged.isdisjoint(summary["calibration_steps"])


def test_comparison_csv_fixed_columns(comparison_and_bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    comparison, _, _ = comparison_and_bundle
    path = tmp_path / "comparison.csv"

    comparison.table.to_csv(path, index=False)

    header = path.read_text().splitlines()[0].split(",")
    for column in ("metric", "load_step", "measured", "predicted", "relative_error"):
        assert column in header


def test_plots_written(comparison_and_bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    comparison, bundle, _ = comparison_and_bundle

    overlay = plot_overlay(bundle, comparison, tmp_path / "figures" / "overlay.png")
    steps = plot_step_comparison(comparison, tmp_path / "figures" / "steps.png")

    for path in (overlay, steps):
        assert path.read_bytes()[:4] == PNG_MAGIC
        assert path.stat().st_size > 10_000
