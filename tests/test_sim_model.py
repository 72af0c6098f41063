"""Model behaviour: config loading, conservation, CPU cap, downstream capacity, refresh stalls,
common random numbers, duplicates, the scrape series and the output analysis."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from simulation.analysis import mser_truncation, ratio_estimate
from simulation.config import (
    ArrivalConfig,
    ConfigError,
    CpuConfig,
    ExecutionConfig,
    FanoutConfig,
    ModelConfig,
    RefreshConfig,
)
from simulation.model import SupervisorModel, draw_inputs, run_replication
from simulation.monitor import SERIES_COLUMNS, scrape_series


def _config(**changes: object) -> ModelConfig:
    base = ModelConfig(
        arrivals=ArrivalConfig(rate_per_s=200.0),
        execution=ExecutionConfig(latency_mean_ms=10.0),
        pool_size=4,
        queue_max=100,
        duration_s=60.0,
    )
    return dataclasses.replace(base, **changes)


def test_config_round_trips_through_json_and_toml(tmp_path: Path) -> None:
    config = _config(
        arrivals=ArrivalConfig(kind="schedule", schedule=((0.0, 10.0), (30.0, 50.0))),
        fanout=FanoutConfig(kind="channels", channel_config_counts=(3, 1, 0)),
        execution=ExecutionConfig(latency="lognormal", timeout_ms=500.0, error_probability=0.1),
    )
    json_path = tmp_path / "model.json"
    json_path.write_text(json.dumps(config.to_dict()))
    toml_path = tmp_path / "model.toml"
    toml_path.write_text(
        "pool_size = 4\nqueue_max = 100\nduration_s = 60.0\n"
        '[arrivals]\nkind = "schedule"\nschedule = [[0.0, 10.0], [30.0, 50.0]]\n'
        '[fanout]\nkind = "channels"\nchannel_config_counts = [3, 1, 0]\n'
        '[execution]\nlatency = "lognormal"\ntimeout_ms = 500.0\nerror_probability = 0.1\n'
    )

    assert ModelConfig.from_file(json_path) == config
    assert ModelConfig.from_file(toml_path) == config


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"pool_size": 0}, "pool_size=0 is invalid"),
        ({"queue_size": 3}, "unknown model setting queue_size"),
        ({"execution": {"error_probability": 1.5}}, "execution.error_probability=1.5"),
        ({"arrivals": {"kind": "schedule", "schedule": [[5, 1]]}}, "must start at 0"),
        ({"execution": {"latency": "empirical"}}, "needs at least one sample"),
        ({"warmup_s": 700}, "warmup_s=700 is invalid"),
    ],
)
def test_config_rejects_bad_values(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict(data)


def test_run_conserves_events_with_every_extra() -> None:
    config = _config(
        fanout=FanoutConfig(kind="channels", channel_config_counts=(5, 2, 0, 1)),
        execution=ExecutionConfig(
            latency_mean_ms=20.0,
            timeout_ms=60.0,
            error_probability=0.05,
            capacity_concurrent=6,
        ),
        cpu=CpuConfig(ingest_cost_ms=0.2, worker_cost_ms=0.5),
        refresh=RefreshConfig(refresh_interval_ms=2000, incremental_stall_ms=20),
        duplicate_ratio=0.1,
        queue_max=20,
    )

    events = run_replication(config, 0).events

    assert events.dropped.sum() > 0
    assert events.failed.sum() > 0
    assert events.arrival_s.size == (
        events.admitted.sum()
        + events.dropped.sum()
        + events.duplicate.sum()
        + np.isnan(events.enqueue_s).sum()
    )
    started = events.started
    assert np.all(events.start_s[started] >= events.enqueue_s[started])
    assert np.all(
        events.enqueue_s[~np.isnan(events.enqueue_s)]
        >= events.arrival_s[~np.isnan(events.enqueue_s)]
    )
    completed = events.completed
    assert np.all(events.end_s[completed] >= events.start_s[completed])
    assert not np.any(started & (events.dropped | events.duplicate))


@pytest.mark.parametrize("pool_size", [32, 64])
def test_worker_cpu_cost_caps_throughput(pool_size: int) -> None:
    worker_cost_ms = 2.0
    config = _config(
        arrivals=ArrivalConfig(rate_per_s=800.0),
        cpu=CpuConfig(worker_cost_ms=worker_cost_ms),
        pool_size=pool_size,
        duration_s=40.0,
        warmup_s=5.0,
    )

    events = run_replication(config, 0).events
    finished = events.completed & (events.end_s >= 5.0)
    throughput_per_s = finished.sum() / 35.0

    assert throughput_per_s == pytest.approx(1000.0 / worker_cost_ms, rel=0.02)
    assert events.dropped.sum() > 0


def test_large_pool_slows_execution_and_gets_429() -> None:
    execution = ExecutionConfig(latency_mean_ms=20.0, capacity_concurrent=4, limit_concurrent=8)
    small = _config(execution=execution, arrivals=ArrivalConfig(rate_per_s=400.0), pool_size=4)
    large = dataclasses.replace(small, pool_size=32)

    small_events = run_replication(small, 0).events
    large_events = run_replication(large, 0).events
    small_service_s = np.nanmean(small_events.end_s - small_events.start_s)
    large_service_s = np.nanmean(large_events.end_s - large_events.start_s)

    small_done = small_events.completed
    assert (
        small_events.execution_attempts[small_done].sum()
        == small_events.executions[small_done].sum()
    )
    assert small_service_s == pytest.approx(0.020, rel=0.1)
    assert large_events.execution_attempts.sum() > large_events.executions.sum()
    assert large_service_s > 1.5 * small_service_s


def test_full_refresh_stall_shows_as_lag_spike() -> None:
    config = _config(
        refresh=RefreshConfig(full_refresh_interval_ms=20_000, full_stall_ms=2000),
        pool_size=8,
        queue_max=1000,
        duration_s=65.0,
    )

    run = run_replication(config, 0)
    series = scrape_series(run, config.scrape_interval_s)
    after_refresh = series[series["t_s"].isin([23.0, 45.0])]
    quiet = series[series["t_s"].isin([10.0, 15.0, 30.0, 35.0])]

    assert list(run.full_refresh_done_s) == pytest.approx([22.0, 44.0])
    assert after_refresh["lag_p95_s"].min() > 0.2
    assert quiet["lag_p95_s"].max() < 0.05
    assert series["full_refresh_last_success_unix_s"].isna().sum() == 22
    assert series["full_refresh_last_success_unix_s"].iloc[-1] == pytest.approx(44.0)


def test_pool_sizes_share_random_numbers() -> None:
    small = _config(pool_size=4, queue_max=5, arrivals=ArrivalConfig(rate_per_s=500.0))
    large = dataclasses.replace(small, pool_size=8)

    small_events = run_replication(small, 0).events
    large_events = run_replication(large, 0).events
    both = small_events.completed & large_events.completed

    np.testing.assert_array_equal(small_events.arrival_s, large_events.arrival_s)
    np.testing.assert_allclose(
        (small_events.end_s - small_events.start_s)[both],
        (large_events.end_s - large_events.start_s)[both],
        rtol=1e-9,
        atol=1e-12,
    )
    assert small_events.dropped.sum() > large_events.dropped.sum()


def test_replications_use_different_streams() -> None:
    config = _config()

    first = draw_inputs(config, 0).arrival_s
    second = draw_inputs(config, 1).arrival_s

    assert not np.array_equal(first[:10], second[:10])


def test_call_processes_match_precomputed_service() -> None:
    config = _config(
        fanout=FanoutConfig(fixed_count=3),
        execution=ExecutionConfig(latency_mean_ms=10.0, timeout_ms=25.0, error_probability=0.1),
        queue_max=10,
    )
    inputs = draw_inputs(config, 0)

    precomputed = SupervisorModel(config, inputs).run().events
    played_out = SupervisorModel(config, dataclasses.replace(inputs, service=None)).run().events

    np.testing.assert_allclose(precomputed.start_s, played_out.start_s, equal_nan=True)
    np.testing.assert_allclose(precomputed.end_s, played_out.end_s, equal_nan=True)
    np.testing.assert_array_equal(precomputed.failed, played_out.failed)
    done = precomputed.completed
    np.testing.assert_array_equal(
        precomputed.execution_attempts[done], played_out.execution_attempts[done]
    )


def test_duplicates_never_enter_the_queue() -> None:
    config = _config(duplicate_ratio=0.3)

    events = run_replication(config, 0).events

    assert events.duplicate.mean() == pytest.approx(0.3, abs=0.02)
    assert not np.any(events.started & events.duplicate)
    assert not np.any(events.dropped & events.duplicate)


def test_schedule_steps_set_the_arrival_rate() -> None:
    config = _config(
        arrivals=ArrivalConfig(kind="schedule", schedule=((0.0, 100.0), (20.0, 0.0), (40.0, 400.0)))
    )

    arrival_s = draw_inputs(config, 0).arrival_s
    counts = np.histogram(arrival_s, bins=[0.0, 20.0, 40.0, 60.0])[0]

    assert counts[1] == 0
    for count, expected in ((counts[0], 2000), (counts[2], 8000)):
        assert abs(count - expected) < 5 * np.sqrt(expected)


def test_trace_arrivals_replay_given_times() -> None:
    config = _config(arrivals=ArrivalConfig(kind="trace", trace_times_s=(0.5, 1.0, 70.0)))

    events = run_replication(config, 0).events

    np.testing.assert_array_equal(events.arrival_s, [0.5, 1.0])
    assert events.completed.all()


def test_series_has_interface_columns_and_accounts_events() -> None:
    config = _config(
        duplicate_ratio=0.1,
        queue_max=3,
        arrivals=ArrivalConfig(rate_per_s=500.0),
        cpu=CpuConfig(ingest_cost_ms=0.1),
    )

    series = scrape_series(run_replication(config, 0), config.scrape_interval_s)

    assert tuple(series.columns) == SERIES_COLUMNS
    assert (series["target"] == "model").all()
    accounted = (
        series["processed_total"]
        + series["failed_total"]
        + series["dropped_total"]
        + series["duplicate_total"]
        + series["in_flight"]
    )
    assert (accounted == series["received_total"]).all()
    assert (series["queue_depth"] <= 3).all()
    assert (series["workers_busy"] <= config.pool_size).all()
    assert series["dropped_total"].iloc[-1] > 0


def test_mser_cuts_an_initial_transient() -> None:
    rng = np.random.default_rng(3)
    transient = np.linspace(10.0, 0.0, 500)
    series = np.concatenate((transient, np.zeros(4500))) + rng.normal(0.0, 0.5, 5000)

    cut = mser_truncation(series)

    assert 300 <= cut <= 700
    assert mser_truncation(rng.normal(0.0, 1.0, 5000)) < 500


def test_ratio_estimate_has_zero_width_for_proportional_totals() -> None:
    ratio, half_width = ratio_estimate([1.0, 2.0, 3.0], [10.0, 20.0, 30.0])

    assert ratio == pytest.approx(0.1)
    assert half_width == pytest.approx(0.0, abs=1e-15)
