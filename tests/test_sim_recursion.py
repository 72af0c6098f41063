"""Tests of the exact G/G/c/K recursion: queueing laws, the SimPy model and M/M/c/K theory."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulation.recursion import (
    QueueTrace,
    RecursionInputError,
    busy_worker_seconds,
    max_queue_depth,
    queue_depth_steps,
    run_fifo_queue,
    time_weighted_queue_depth,
)

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
