"""Calibration: the fits on synthetic data with known answers, and a full calibration of the
recorded sample bundle in examples/sample-bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from capacity.bundle import load_bundle
from capacity.calibrate import (
    CalibrationError,
    calibrate,
    calls_in_progress,
    choose_calibration_steps,
    fit_cpu_costs,
    fit_lognormal,
    fit_zipf_exponent,
)
from simulation.config import ModelConfig

SAMPLE_BUNDLE = Path(__file__).resolve().parent.parent / "examples" / "sample-bundle"


def test_lognormal_fit_covers_true_values() -> None:
    rng = np.random.default_rng(7)
    samples_ms = rng.lognormal(np.log(20.0), 0.5, size=4000)

    fit = fit_lognormal(samples_ms)

    assert fit.median_ci95_ms[0] <= 20.0 <= fit.median_ci95_ms[1]
    assert fit.sigma_ci95[0] <= 0.5 <= fit.sigma_ci95[1]
    assert fit.median_ci95_ms[1] - fit.median_ci95_ms[0] < 1.0
    assert fit.sample_count == 4000


def test_lognormal_fit_ignores_nonpositive() -> None:
    fit = fit_lognormal(np.array([0.0, -1.0, np.nan, 10.0, 10.0, 10.0]))

    assert fit.sample_count == 3
    assert fit.median_ms == pytest.approx(10.0)
    assert fit.sigma == pytest.approx(0.0)


def test_lognormal_fit_needs_samples() -> None:
    with pytest.raises(CalibrationError, match="too few"):
        fit_lognormal(np.array([5.0]))


def test_calls_in_progress_counts_self() -> None:
    started_s = np.array([0.0, 0.5, 1.0, 3.0])
    duration_s = np.array([1.0, 1.0, 1.0, 1.0])

    in_progress = calls_in_progress(started_s, duration_s)

    assert list(in_progress) == [1.0, 2.0, 2.0, 1.0]


def test_cpu_fit_recovers_costs() -> None:
    rng = np.random.default_rng(3)
    received = rng.integers(40, 160, size=60)
    calls = received * 3 + rng.integers(0, 30, size=60)
    cpu_s = received * 0.002 + calls * 0.0005 + 0.01
    series = pd.DataFrame({
        "timestamp": np.arange(61, dtype=float),
        "received_total": np.concatenate(([0], np.cumsum(received))),
        "executions_total": np.concatenate(([0], np.cumsum(calls))),
        "cpu_seconds": np.concatenate(([0.0], np.cumsum(cpu_s))),
    })

    costs = fit_cpu_costs(series, [(0.0, 61.0)], mean_fanout=3.0)

    assert costs["ingest_cost_ms"] == pytest.approx(2.0, rel=1e-6)
    assert costs["per_call_cost_ms"] == pytest.approx(0.5, rel=1e-6)
    assert costs["worker_cost_ms"] == pytest.approx(1.5, rel=1e-6)
    assert costs["cpu_cost_per_event_ms"] == pytest.approx(3.5, rel=1e-6)
    assert costs["idle_cpu_per_s"] == pytest.approx(0.01, rel=1e-6)


def test_cpu_fit_falls_back_to_ratio() -> None:
    # Calls proportional to events and CPU falling with calls: least squares gives a negative cost.
    received = np.array([10, 20, 30, 40, 50, 60])
    calls = np.array([60, 50, 40, 30, 20, 10])
    cpu_s = received * 0.001
    series = pd.DataFrame({
        "timestamp": np.arange(7, dtype=float),
        "received_total": np.concatenate(([0], np.cumsum(received))),
        "executions_total": np.concatenate(([0], np.cumsum(calls))),
        "cpu_seconds": np.concatenate(([0.0], np.cumsum(cpu_s - calls * 0.0001))),
    })

    costs = fit_cpu_costs(series, [(0.0, 7.0)], mean_fanout=2.0)

    total_ms = (cpu_s - calls * 0.0001).sum() / received.sum() * 1000.0
    assert costs["per_call_cost_ms"] == 0.0
    assert costs["ingest_cost_ms"] == pytest.approx(total_ms)


def test_zipf_fit_recovers_exponent() -> None:
    ranks = np.arange(1, 21, dtype=float)
    counts = np.round(1_000_000 * ranks**-1.2 / (ranks**-1.2).sum()).astype(int)

    assert fit_zipf_exponent(list(counts)) == pytest.approx(1.2, abs=0.01)


def test_zipf_fit_uniform() -> None:
    assert fit_zipf_exponent([500, 500, 500, 500]) == pytest.approx(0.0, abs=0.01)


def _steps(offered: list[float], throughput: list[float], drops: list[float]) -> pd.DataFrame:
    return pd.DataFrame({
        "load_step": range(len(offered)),
        "offered_rate_per_s": offered,
        "throughput_per_s": throughput,
        "drop_rate": drops,
    })


def test_calibration_steps_interleaved() -> None:
    measured = _steps(
        offered=[50.0, 70.0, 90.0, 110.0, 130.0, 150.0],
        throughput=[50.0, 70.0, 90.0, 105.0, 112.0, 113.0],
        drops=[0.0, 0.0, 0.0, 0.0, 0.12, 0.25],
    )

    # 110 events/s is the rate nearest the overload throughput of 113 events/s.
    assert choose_calibration_steps(measured) == [0, 3, 5]


def test_calibration_steps_skip_far_knife_edge() -> None:
    measured = _steps(
        offered=[40.0, 70.0, 160.0],
        throughput=[40.0, 70.0, 100.0],
        drops=[0.0, 0.0, 0.35],
    )

    assert choose_calibration_steps(measured) == [0, 2]


def test_calibration_steps_need_an_overloaded_step() -> None:
    measured = _steps(
        offered=[40.0, 60.0, 80.0], throughput=[40.0, 60.0, 80.0], drops=[0.0, 0.0, 0.001]
    )

    assert choose_calibration_steps(measured) == []


def test_calibrate_sample_bundle(tmp_path: Path) -> None:
    bundle = load_bundle(SAMPLE_BUNDLE)
    settings = bundle.supervisor_settings

    calibration = calibrate(bundle)

    config = calibration.model_config
    assert config.pool_size == settings["pool_size"]
    assert config.queue_max == settings["queue_capacity"]
    assert config.fanout.kind == "channels"
    assert sum(config.fanout.channel_config_counts) == int(
        bundle.configs["isActive"].astype(str).str.lower().eq("true").sum()
    )
    assert config.execution.capacity_concurrent == bundle.metadata["stub_settings"]["capacity"]
    assert 10.0 < calibration.latency_median_ms < 100.0
    low, high = calibration.latency_median_ci95_ms
    assert low < calibration.latency_median_ms < high
    assert calibration.cpu_cost_per_event_ms > 0
    assert 0 in calibration.calibration_steps
    assert calibration.capacity_per_s > 0
    assert len(calibration.latency_samples_ms) > 100


def test_calibration_write_round_trips(tmp_path: Path) -> None:
    calibration = calibrate(load_bundle(SAMPLE_BUNDLE), steps=[0])

    path = calibration.write(tmp_path / "model.toml")

    assert ModelConfig.from_file(path) == calibration.model_config
    details = json.loads((tmp_path / "model-calibration.json").read_text())
    assert details["calibration_steps"] == [0]
    assert details["latency_median_ms"] == pytest.approx(calibration.latency_median_ms)


def test_calibrate_rejects_unknown_step() -> None:
    with pytest.raises(CalibrationError, match="choose from"):
        calibrate(load_bundle(SAMPLE_BUNDLE), steps=[99])


def test_refresh_durations_become_database_time() -> None:
    bundle = load_bundle(SAMPLE_BUNDLE)
    series = bundle.series.copy()
    series["incremental_refresh_last_duration_s"] = np.resize([0.002, 0.004, 0.006], len(series))
    series["full_refresh_last_duration_s"] = np.resize([0.010, 0.030], len(series))
    bundle.series = series

    refresh = calibrate(bundle).model_config.refresh

    assert refresh.incremental_db_time_ms == pytest.approx(4.0)
    assert refresh.full_db_time_ms == pytest.approx(20.0)
    assert refresh.incremental_stall_ms == 0.0
    assert refresh.full_stall_ms == 0.0


def test_refresh_without_durations_costs_nothing() -> None:
    bundle = load_bundle(SAMPLE_BUNDLE)
    bundle.series = bundle.series.drop(
        columns=["incremental_refresh_last_duration_s", "full_refresh_last_duration_s"],
        errors="ignore",
    )

    refresh = calibrate(bundle).model_config.refresh

    assert refresh.incremental_db_time_ms == 0.0
    assert refresh.full_db_time_ms == 0.0
