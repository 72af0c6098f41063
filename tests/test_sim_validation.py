"""The model with every extra switched off against the exact M/M/c and M/M/c/K results.

Each check runs independent replications and checks two things: the 95% confidence interval
covers the exact value, and its half-width is within 2% of that value, so a pass means the
model is right to about 2%, not that the interval was wide. The seed is fixed, so the outcome
is reproducible; each interval still misses with about 5% chance for an arbitrary seed.
Warm-up is removed by MSER-5, as in normal use. Every run also obeys conservation of events
and Little's law on the queue.
"""

from __future__ import annotations

import numpy as np
import pytest

from simulation.analysis import ratio_estimate
from simulation.config import ArrivalConfig, ExecutionConfig, ModelConfig
from simulation.model import SimulationResult, simulate
from simulation.monitor import RunRecords, time_weighted_depth
from simulation.theory import erlang_c, mmc_mean_wait_s, mmck

SERVICE_MEAN_S = 1.0
REPLICATIONS = 10
RELATIVE_HALF_WIDTH = 0.02
LAG_THRESHOLD_S = 1.0


def _queue_config(
    rho: float, pool_size: int, queue_max: int, events: int, seed: int
) -> ModelConfig:
    arrival_rate = rho * pool_size / SERVICE_MEAN_S
    return ModelConfig(
        arrivals=ArrivalConfig(rate_per_s=arrival_rate),
        execution=ExecutionConfig(latency="exponential", latency_mean_ms=SERVICE_MEAN_S * 1000),
        pool_size=pool_size,
        queue_max=queue_max,
        duration_s=events / arrival_rate / REPLICATIONS,
        replications=REPLICATIONS,
        seed=seed,
    )


def _assert_covers(name: str, value: float, half_width: float, exact: float) -> None:
    assert abs(value - exact) <= half_width, (
        f"{name}: exact {exact:.5g} outside {value:.5g} ± {half_width:.3g}"
    )
    assert half_width <= RELATIVE_HALF_WIDTH * exact, (
        f"{name}: half-width {half_width:.3g} is above 2% of {exact:.5g}; lengthen the runs"
    )


def _lag_fraction(result: SimulationResult, predicate: str) -> tuple[float, float]:
    """Ratio estimate of the fraction of admitted events with lag > 0 or > the threshold."""
    hits, counts = [], []
    for run, summary in zip(result.runs, result.replications, strict=True):
        events = run.events
        kept = events.started & (events.start_s >= summary.warmup_s)
        lags = events.lag_s[kept]
        threshold = 0.0 if predicate == "waits" else LAG_THRESHOLD_S
        hits.append(float((lags > threshold).sum()))
        counts.append(float(lags.size))
    return ratio_estimate(hits, counts)


def _assert_conservation(run: RunRecords) -> None:
    events = run.events
    arrivals = events.arrival_s.size
    admitted = int(events.admitted.sum())
    dropped = int(events.dropped.sum())
    in_system = int((events.admitted & ~events.completed).sum())
    assert arrivals == admitted + dropped + int(events.duplicate.sum())
    assert int(events.completed.sum()) + in_system == admitted
    assert not np.any(events.completed & ~events.admitted)


def _assert_littles_law(run: RunRecords, warmup_s: float) -> None:
    """Queue depth L equals admitted rate λ times mean lag W, up to edge effects at the cuts."""
    events = run.events
    window_s = run.duration_s - warmup_s
    depth = time_weighted_depth(events, warmup_s, run.duration_s)
    started = events.started & (events.start_s >= warmup_s)
    admitted_rate = started.sum() / window_s
    mean_lag_s = float(events.lag_s[started].mean())
    assert depth == pytest.approx(admitted_rate * mean_lag_s, rel=0.02)


@pytest.mark.parametrize(
    ("rho", "events"),
    [(0.5, 1_200_000), (0.9, 400_000), (1.2, 400_000)],
)
def test_mmck_matches_exact_values(rho: float, events: int) -> None:
    pool_size, queue_max = 2, 2
    config = _queue_config(rho, pool_size, queue_max, events, seed=11)
    exact = mmck(config.arrivals.rate_per_s, 1 / SERVICE_MEAN_S, pool_size, queue_max)

    result = simulate(config)
    summary = result.summary

    _assert_covers(
        "drop probability",
        summary["drop_rate"],
        summary["drop_rate_ci95"],
        exact.drop_probability,
    )
    _assert_covers(
        "mean lag of admitted events",
        summary["mean_lag_s"],
        summary["mean_lag_s_ci95"],
        exact.mean_wait_s,
    )
    _assert_covers(
        "mean queue length",
        summary["mean_queue_depth"],
        summary["mean_queue_depth_ci95"],
        exact.mean_queue_length,
    )
    tail, tail_half_width = _lag_fraction(result, "exceeds")
    _assert_covers(
        f"P(lag > {LAG_THRESHOLD_S} s)",
        tail,
        tail_half_width,
        exact.wait_exceeds_probability(LAG_THRESHOLD_S),
    )
    for run, replication in zip(result.runs, result.replications, strict=True):
        _assert_conservation(run)
        _assert_littles_law(run, replication.warmup_s)


def test_mmc_wait_matches_erlang_c() -> None:
    pool_size, rho = 2, 0.5
    config = _queue_config(rho, pool_size, queue_max=10_000, events=1_000_000, seed=12)
    arrival_rate = config.arrivals.rate_per_s

    result = simulate(config)
    waits, waits_half_width = _lag_fraction(result, "waits")

    _assert_covers(
        "probability of waiting",
        waits,
        waits_half_width,
        erlang_c(pool_size, arrival_rate * SERVICE_MEAN_S),
    )
    _assert_covers(
        "mean wait",
        result.summary["mean_lag_s"],
        result.summary["mean_lag_s_ci95"],
        mmc_mean_wait_s(arrival_rate, 1 / SERVICE_MEAN_S, pool_size),
    )
    assert result.summary["drop_rate"] == 0.0
    for run, replication in zip(result.runs, result.replications, strict=True):
        _assert_conservation(run)
        _assert_littles_law(run, replication.warmup_s)
