"""Exact M/M/c and M/M/c/K formulas against textbook values and queueing identities."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from simulation.theory import (
    TheoryError,
    erlang_b,
    erlang_c,
    mmc_mean_wait_s,
    mmc_wait_exceeds_probability,
    mmck,
)


def test_erlang_b_textbook_values() -> None:
    assert erlang_b(1, 1.0) == pytest.approx(0.5)
    assert erlang_b(2, 1.0) == pytest.approx(0.2)
    assert erlang_b(3, 2.0) == pytest.approx(4 / 19)


def test_mm1_wait_matches_closed_form() -> None:
    arrival_rate, service_rate = 0.6, 1.0
    rho = arrival_rate / service_rate

    assert erlang_c(1, rho) == pytest.approx(rho)
    assert mmc_mean_wait_s(arrival_rate, service_rate, 1) == pytest.approx(
        rho / (service_rate - arrival_rate)
    )


def test_mm2_wait_textbook_value() -> None:
    # M/M/2 with λ = μ = 1: an arrival waits with probability 1/3, for 1/3 s on average.
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)
    assert mmc_mean_wait_s(1.0, 1.0, 2) == pytest.approx(1 / 3)


def test_mm1k_matches_geometric_distribution() -> None:
    rho, queue_max = 0.8, 5
    capacity = queue_max + 1
    expected = (1 - rho) * rho ** np.arange(capacity + 1) / (1 - rho ** (capacity + 1))

    queue = mmck(0.8, 1.0, 1, queue_max)

    np.testing.assert_allclose(queue.state_probabilities, expected, rtol=1e-12)
    assert queue.drop_probability == pytest.approx(expected[-1])


@pytest.mark.parametrize("servers", [1, 4, 16])
def test_mmck_large_capacity_converges_to_erlang_c(servers: int) -> None:
    arrival_rate = 0.9 * servers

    queue = mmck(arrival_rate, 1.0, servers, queue_max=5000)

    assert queue.drop_probability < 1e-12
    assert queue.wait_probability == pytest.approx(erlang_c(servers, arrival_rate), rel=1e-9)
    assert queue.mean_wait_s == pytest.approx(mmc_mean_wait_s(arrival_rate, 1.0, servers), rel=1e-9)
    assert queue.wait_exceeds_probability(0.5) == pytest.approx(
        mmc_wait_exceeds_probability(arrival_rate, 1.0, servers, 0.5), rel=1e-9
    )


@pytest.mark.parametrize("rho", [0.5, 0.9, 1.2, 3.0])
def test_mmck_identities_hold_at_any_load(rho: float) -> None:
    servers, queue_max, service_rate = 3, 7, 2.0
    queue = mmck(rho * servers * service_rate, service_rate, servers, queue_max)
    probabilities = queue.state_probabilities
    states = np.arange(probabilities.size)

    assert probabilities.sum() == pytest.approx(1.0)
    # Throughput in equals throughput out: λ (1 - P_drop) = μ E[busy workers].
    busy = np.dot(np.minimum(states, servers), probabilities)
    assert queue.admitted_rate_per_s == pytest.approx(service_rate * busy)
    # Little's law on the whole system: L = λ_admitted (W + 1/μ).
    assert queue.mean_in_system == pytest.approx(
        queue.admitted_rate_per_s * (queue.mean_wait_s + 1 / service_rate)
    )
    assert queue.wait_exceeds_probability(0.0) == pytest.approx(queue.wait_probability)


def test_wait_tail_decreases_to_zero() -> None:
    queue = mmck(5.0, 1.0, 4, 20)

    tails = [queue.wait_exceeds_probability(t) for t in (0.0, 0.5, 1.0, 5.0, 50.0)]

    assert all(later < earlier for earlier, later in itertools.pairwise(tails))
    assert tails[-1] < 1e-6
    assert queue.wait_exceeds_probability(-1.0) == 1.0


def test_wait_tail_integrates_to_mean_wait() -> None:
    queue = mmck(3.5, 1.0, 4, 10)
    grid_s = np.linspace(0.0, 60.0, 60001)

    tail = np.array([queue.wait_exceeds_probability(t) for t in grid_s[::10]])

    assert np.trapezoid(tail, grid_s[::10]) == pytest.approx(queue.mean_wait_s, rel=1e-4)


def test_large_pool_is_finite_and_consistent() -> None:
    servers = 200
    arrival_rate = 190.0

    queue = mmck(arrival_rate, 1.0, servers, queue_max=4000)
    waiting = erlang_c(servers, arrival_rate)

    assert np.all(np.isfinite(queue.state_probabilities))
    assert 0.0 < waiting < 1.0
    assert queue.wait_probability == pytest.approx(waiting, rel=1e-9)
    assert math.isfinite(mmck(400.0, 1.0, servers, 50).mean_wait_s)


def test_unstable_mmc_is_rejected() -> None:
    with pytest.raises(TheoryError, match="no steady state"):
        erlang_c(2, 2.0)
    with pytest.raises(TheoryError, match="rates must be > 0"):
        mmck(0.0, 1.0, 1, 1)
