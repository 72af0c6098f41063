"""Tests of the exact G/G/c/K recursion: queueing laws, the SimPy model and M/M/c/K theory."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulation.analysis import combine_replications, summarize_run
from simulation.config import (
    ArrivalConfig,
    CpuConfig,
    ExecutionConfig,
    FanoutConfig,
    ModelConfig,
)
from simulation.model import run_replication
from simulation.recursion import (
    QueueTrace,
    RecursionInputError,
    busy_worker_seconds,
    check_config_supported,
    max_queue_depth,
    queue_depth_steps,
    run_config,
    run_fifo_queue,
    summarize_config_run,
    time_weighted_queue_depth,
)
from simulation.theory import mmck

# Times on a coarse grid of half seconds, so equal times (the tie rule) come up often.
gaps_s = st.lists(st.integers(min_value=0, max_value=4).map(lambda k: k * 0.5), max_size=40)


@st.composite
def queue_inputs(draw: st.DrawFn) -> tuple[list[float], list[float], int, int]:
    gaps = draw(gaps_s)
    arrivals = np.cumsum(gaps).tolist()
    services = draw(
        st.lists(
            st.integers(min_value=0, max_value=8).map(lambda k: k * 0.5),
            min_size=len(arrivals),
            max_size=len(arrivals),
        )
    )
    pool_size = draw(st.integers(min_value=1, max_value=4))
    queue_max = draw(st.integers(min_value=0, max_value=4))
    return arrivals, services, pool_size, queue_max


def in_service_at(trace: QueueTrace, time_s: float, before: int) -> int:
    """Count events among the first `before` in service at `time_s` (start <= t < end)."""
    starts = trace.start_s[:before]
    ends = trace.end_s[:before]
    return int(np.sum((starts <= time_s) & (ends > time_s)))


def waiting_at(trace: QueueTrace, time_s: float, before: int) -> int:
    """Count events among the first `before` waiting at `time_s` (arrival <= t < start)."""
    arrivals = trace.arrival_s[:before]
    starts = trace.start_s[:before]
    return int(np.sum((arrivals <= time_s) & (starts > time_s)))


@settings(max_examples=300, deadline=None)
@given(queue_inputs())
def test_recursion_conserves_events(inputs: tuple[list[float], list[float], int, int]) -> None:
    arrivals, services, pool_size, queue_max = inputs

    trace = run_fifo_queue(arrivals, services, pool_size, queue_max)

    admitted = trace.admitted
    assert int(admitted.sum()) + int(trace.dropped.sum()) == len(arrivals)
    assert np.all(np.isnan(trace.start_s[trace.dropped]))
    assert np.all(np.isnan(trace.end_s[trace.dropped]))
    assert np.allclose(trace.end_s[admitted] - trace.start_s[admitted], trace.service_s[admitted])


@settings(max_examples=300, deadline=None)
@given(queue_inputs())
def test_recursion_starts_fifo_after_arrival(
    inputs: tuple[list[float], list[float], int, int],
) -> None:
    arrivals, services, pool_size, queue_max = inputs

    trace = run_fifo_queue(arrivals, services, pool_size, queue_max)

    starts = trace.start_s[trace.admitted]
    assert np.all(starts >= trace.arrival_s[trace.admitted])
    assert np.all(np.diff(starts) >= 0)


@settings(max_examples=300, deadline=None)
@given(queue_inputs())
def test_recursion_respects_pool_and_capacity(
    inputs: tuple[list[float], list[float], int, int],
) -> None:
    arrivals, services, pool_size, queue_max = inputs

    trace = run_fifo_queue(arrivals, services, pool_size, queue_max)

    moments = np.concatenate([trace.arrival_s, trace.start_s[trace.admitted]])
    everyone = len(arrivals)
    for moment in moments:
        assert in_service_at(trace, moment, everyone) <= pool_size
        assert waiting_at(trace, moment, everyone) <= queue_max


@settings(max_examples=300, deadline=None)
@given(queue_inputs())
def test_recursion_is_work_conserving(inputs: tuple[list[float], list[float], int, int]) -> None:
    arrivals, services, pool_size, queue_max = inputs

    trace = run_fifo_queue(arrivals, services, pool_size, queue_max)

    ends = trace.end_s[trace.admitted]
    for i, arrival in enumerate(trace.arrival_s):
        busy = in_service_at(trace, arrival, i)
        waiting = waiting_at(trace, arrival, i)
        if trace.dropped[i]:
            # Dropped only when every worker is busy and every waiting place is taken.
            assert busy == pool_size
            assert waiting == queue_max
        elif trace.start_s[i] > arrival:
            # A waiting event found every worker busy and starts when one of them frees.
            assert busy == pool_size
            assert np.any(np.isclose(ends, trace.start_s[i], rtol=0.0, atol=1e-12))
        else:
            assert busy < pool_size
            assert waiting == 0


@settings(max_examples=200, deadline=None)
@given(queue_inputs())
def test_depth_steps_match_direct_count(inputs: tuple[list[float], list[float], int, int]) -> None:
    arrivals, services, pool_size, queue_max = inputs
    trace = run_fifo_queue(arrivals, services, pool_size, queue_max)

    times, depths = queue_depth_steps(trace)

    everyone = len(arrivals)
    for time_s in np.unique(times):
        last = np.searchsorted(times, time_s, side="right") - 1
        assert depths[last] == waiting_at(trace, time_s, everyone)
    assert np.all(depths >= 0)
    assert np.all(depths <= queue_max)


def test_known_small_case_with_ties() -> None:
    # One worker, one waiting place, service 2 s, arrivals at 0, 0, 0, 2, 2.
    trace = run_fifo_queue([0.0, 0.0, 0.0, 2.0, 2.0], [2.0] * 5, pool_size=1, queue_max=1)

    # Event 0 serves [0, 2); event 1 waits; event 2 finds the place taken. At t=2 event 1
    # takes the freed worker first, so event 3 finds the place free and event 4 does not.
    assert trace.dropped.tolist() == [False, False, True, False, True]
    assert trace.start_s[[0, 1, 3]].tolist() == [0.0, 2.0, 4.0]
    assert trace.end_s[[0, 1, 3]].tolist() == [2.0, 4.0, 6.0]


def test_arrival_at_completion_starts_at_once() -> None:
    trace = run_fifo_queue([0.0, 1.0], [1.0, 1.0], pool_size=1, queue_max=0)

    assert trace.dropped.tolist() == [False, False]
    assert trace.start_s.tolist() == [0.0, 1.0]


def test_depth_measures_on_small_case() -> None:
    trace = run_fifo_queue([0.0, 0.0, 1.0], [4.0, 1.0, 1.0], pool_size=1, queue_max=5)

    # Event 1 waits over [0, 4), event 2 over [1, 5): depth 1, 2, 2, 2, 1 in each second.
    assert time_weighted_queue_depth(trace, 0.0, 5.0) == pytest.approx(8.0 / 5.0)
    assert time_weighted_queue_depth(trace, 1.0, 3.0) == pytest.approx(2.0)
    assert max_queue_depth(trace, 0.0, 5.0) == 2
    assert max_queue_depth(trace, 4.5, 10.0) == 1
    assert busy_worker_seconds(trace, 0.0, 6.0) == pytest.approx(6.0)
    assert busy_worker_seconds(trace, 3.0, 5.0) == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("arrivals", "services", "pool_size", "queue_max", "fragment"),
    [
        ([1.0, 0.5], [1.0, 1.0], 1, 1, "must be sorted"),
        ([0.0], [1.0, 2.0], 1, 1, "equal length"),
        ([0.0], [-1.0], 1, 1, "0 or more seconds"),
        ([0.0], [math.nan], 1, 1, "finite"),
        ([0.0], [1.0], 0, 1, "pool_size=0"),
        ([0.0], [1.0], 1, -1, "queue_max=-1"),
    ],
)
def test_invalid_inputs_are_rejected(
    arrivals: list[float], services: list[float], pool_size: int, queue_max: int, fragment: str
) -> None:
    with pytest.raises(RecursionInputError, match=fragment):
        run_fifo_queue(arrivals, services, pool_size, queue_max)


# Cross-check against the SimPy model on identical inputs.

LOGNORMAL = ExecutionConfig(latency="lognormal", latency_median_ms=60.0, latency_sigma=0.8)
DETERMINISTIC = ExecutionConfig(latency="deterministic", latency_mean_ms=70.0)


def assert_same_events(config: ModelConfig, replication: int = 0) -> None:
    expected = run_replication(config, replication).events
    actual = run_config(config, replication).events

    assert actual.arrival_s.size == expected.arrival_s.size
    assert np.array_equal(actual.dropped, expected.dropped)
    assert np.array_equal(np.isnan(actual.start_s), np.isnan(expected.start_s))
    assert np.array_equal(np.isnan(actual.end_s), np.isnan(expected.end_s))
    assert np.allclose(actual.start_s, expected.start_s, rtol=0.0, atol=1e-9, equal_nan=True)
    assert np.allclose(actual.end_s, expected.end_s, rtol=0.0, atol=1e-9, equal_nan=True)


@pytest.mark.parametrize("execution", [LOGNORMAL, DETERMINISTIC], ids=["lognormal", "fixed"])
@pytest.mark.parametrize(
    ("pool_size", "queue_max", "rate_per_s"),
    [(1, 0, 10.0), (2, 3, 25.0), (4, 10, 50.0), (8, 40, 100.0), (4, 5, 120.0), (8, 0, 200.0)],
    ids=["c1-k0", "c2-k3", "c4-k10", "c8-k40", "c4-k5-overload", "c8-k0-overload"],
)
def test_recursion_matches_model_per_event(
    execution: ExecutionConfig, pool_size: int, queue_max: int, rate_per_s: float
) -> None:
    config = ModelConfig(
        arrivals=ArrivalConfig(rate_per_s=rate_per_s),
        execution=execution,
        pool_size=pool_size,
        queue_max=queue_max,
        duration_s=60.0,
        seed=11,
    )

    assert_same_events(config, replication=0)
    assert_same_events(config, replication=3)


def test_recursion_matches_model_on_trace_with_extras() -> None:
    # Continuous trace times, duplicates, channel fan-out and retried errors: service times are
    # still fixed before the run, so the recursion applies.
    rng = np.random.default_rng(5)
    trace_s = np.sort(rng.uniform(0.0, 30.0, size=1500))
    config = ModelConfig(
        arrivals=ArrivalConfig(kind="trace", trace_times_s=tuple(trace_s.tolist())),
        fanout=FanoutConfig(kind="channels", channel_config_counts=(4, 2, 1, 0)),
        execution=ExecutionConfig(
            latency="lognormal", latency_median_ms=20.0, error_probability=0.1, timeout_ms=80.0
        ),
        duplicate_ratio=0.2,
        pool_size=3,
        queue_max=6,
        duration_s=30.0,
        seed=2,
    )

    assert_same_events(config)


def test_recursion_summary_matches_model_summary() -> None:
    from simulation.model import run_model_summary

    config = ModelConfig(
        arrivals=ArrivalConfig(rate_per_s=90.0),
        execution=LOGNORMAL,
        pool_size=6,
        queue_max=20,
        duration_s=120.0,
        seed=4,
    )

    expected = run_model_summary(config, 1)
    actual = summarize_config_run(config, 1)

    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert actual[key] == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), key


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(cpu=CpuConfig(worker_cost_ms=1.0)),
        ModelConfig(execution=ExecutionConfig(capacity_concurrent=4)),
    ],
    ids=["cpu-cost", "execution-capacity"],
)
def test_recursion_rejects_model_extras(config: ModelConfig) -> None:
    with pytest.raises(RecursionInputError, match="SimPy model"):
        check_config_supported(config)


# Exact M/M/c/K values.


@pytest.mark.parametrize(
    ("rate_per_s", "pool_size", "queue_max"),
    [(100.0, 8, 40), (150.0, 8, 10), (30.0, 2, 3)],
    ids=["rho-0.9", "overload", "small"],
)
def test_recursion_agrees_with_mmck(rate_per_s: float, pool_size: int, queue_max: int) -> None:
    mean_service_ms = 72.0
    config = ModelConfig(
        arrivals=ArrivalConfig(rate_per_s=rate_per_s),
        execution=ExecutionConfig(latency="exponential", latency_mean_ms=mean_service_ms),
        pool_size=pool_size,
        queue_max=queue_max,
        duration_s=400.0,
        warmup_s=20.0,
        seed=8,
    )
    exact = mmck(rate_per_s, 1000.0 / mean_service_ms, pool_size, queue_max)

    summaries = [summarize_run(run_config(config, r), config.warmup_s) for r in range(12)]
    estimate = combine_replications(summaries)

    # Two 95% half-widths: about four standard errors, so a correct engine passes.
    checks = {
        "drop_rate": exact.drop_probability,
        "mean_queue_depth": exact.mean_queue_length,
        "mean_lag_s": exact.mean_wait_s,
        "utilization": exact.utilization,
    }
    for key, value in checks.items():
        tolerance = 2.0 * estimate[f"{key}_ci95"] + 1e-9
        assert abs(estimate[key] - value) <= tolerance, (key, estimate[key], value, tolerance)
