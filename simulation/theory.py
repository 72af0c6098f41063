"""Exact results for the M/M/c and M/M/c/K queues, to validate the model against.

Notation: arrival rate `λ` (`arrival_rate_per_s`), service rate per worker `μ`
(`service_rate_per_s`), `c` workers, offered load `a = λ/μ`, utilisation `ρ = a/c`. For
M/M/c/K, `K` is the number of waiting places (the queue capacity), so at most `c + K` events are
in the system and an arrival that finds `c + K` is dropped. Lag is the wait in the queue.

Stability for large `c`: Erlang B is computed by its recursion, and the M/M/c/K state
probabilities in log space with `logsumexp`, so nothing overflows for `c` in the hundreds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import special, stats

FloatArray = npt.NDArray[np.float64]


class TheoryError(ValueError):
    """The queue parameters have no steady state or are out of range."""


def _check_rates(arrival_rate_per_s: float, service_rate_per_s: float, servers: int) -> None:
    if arrival_rate_per_s <= 0 or service_rate_per_s <= 0:
        raise TheoryError(
            f"rates must be > 0: arrival_rate_per_s={arrival_rate_per_s}, "
            f"service_rate_per_s={service_rate_per_s}"
        )
    if servers < 1:
        raise TheoryError(f"servers={servers} is invalid: use at least 1")


def erlang_b(servers: int, offered_load: float) -> float:
    """Return the Erlang B blocking probability of M/M/c/c with load `a = λ/μ`."""
    blocking = 1.0
    for k in range(1, servers + 1):
        blocking = offered_load * blocking / (k + offered_load * blocking)
    return blocking


def erlang_c(servers: int, offered_load: float) -> float:
    """Return the Erlang C probability that an arrival waits in a stable M/M/c queue."""
    if offered_load >= servers:
        raise TheoryError(
            f"offered load {offered_load} >= servers {servers}: M/M/c has no steady state"
        )
    blocking = erlang_b(servers, offered_load)
    return servers * blocking / (servers - offered_load * (1.0 - blocking))


def mmc_mean_wait_s(arrival_rate_per_s: float, service_rate_per_s: float, servers: int) -> float:
    """Return the mean wait in the queue of a stable M/M/c queue, `C / (cμ - λ)`."""
    _check_rates(arrival_rate_per_s, service_rate_per_s, servers)
    waiting = erlang_c(servers, arrival_rate_per_s / service_rate_per_s)
    return waiting / (servers * service_rate_per_s - arrival_rate_per_s)


def mmc_wait_exceeds_probability(
    arrival_rate_per_s: float, service_rate_per_s: float, servers: int, wait_s: float
) -> float:
    """Return `P(W > t)` in a stable M/M/c queue: `C · exp(-(cμ - λ) t)`."""
    _check_rates(arrival_rate_per_s, service_rate_per_s, servers)
    waiting = erlang_c(servers, arrival_rate_per_s / service_rate_per_s)
    return waiting * math.exp(-(servers * service_rate_per_s - arrival_rate_per_s) * wait_s)


@dataclass(frozen=True)
class MMcK:
    """Steady state of an M/M/c/K queue with `K` waiting places.

    `state_probabilities[n]` is the probability of `n` events in the system, `n = 0 .. c + K`.
    By PASTA an arrival sees these probabilities, so the drop probability is the last one.
    """

    arrival_rate_per_s: float
    service_rate_per_s: float
    servers: int
    queue_max: int
    state_probabilities: FloatArray

    @property
    def drop_probability(self) -> float:
        """Probability that an arrival finds the system full and is dropped."""
        return float(self.state_probabilities[-1])

    @property
    def admitted_rate_per_s(self) -> float:
        """Rate of arrivals that enter the system, `λ (1 - P_drop)`."""
        return self.arrival_rate_per_s * (1.0 - self.drop_probability)

    @property
    def mean_queue_length(self) -> float:
        """Time-average number waiting (the queue depth)."""
        waiting = np.clip(np.arange(self.state_probabilities.size) - self.servers, 0, None)
        return float(np.dot(waiting, self.state_probabilities))

    @property
    def mean_in_system(self) -> float:
        """Time-average number in the system, waiting or in service."""
        return float(np.dot(np.arange(self.state_probabilities.size), self.state_probabilities))

    @property
    def utilization(self) -> float:
        """Mean fraction of busy workers, `λ_admitted / (c μ)`."""
        return self.admitted_rate_per_s / (self.servers * self.service_rate_per_s)

    @property
    def mean_wait_s(self) -> float:
        """Mean lag of admitted events, from Little's law on the queue."""
        return self.mean_queue_length / self.admitted_rate_per_s

    @property
    def wait_probability(self) -> float:
        """Probability that an admitted event waits at all."""
        admitted = self.state_probabilities[:-1]
        return float(admitted[self.servers :].sum() / admitted.sum())

    def wait_exceeds_probability(self, wait_s: float) -> float:
        """Return `P(lag > t)` for an admitted event.

        An admitted arrival that finds `n >= c` in the system waits for `n - c + 1` departures
        at rate `cμ`, an Erlang time whose tail is a Poisson CDF.
        """
        if wait_s < 0:
            return 1.0
        admitted = self.state_probabilities[:-1]
        found = np.arange(self.servers, admitted.size)
        departures_needed = found - self.servers + 1
        rate_s = self.servers * self.service_rate_per_s * wait_s
        tails = stats.poisson.cdf(departures_needed - 1, rate_s)
        return float(np.dot(admitted[self.servers :], tails) / admitted.sum())


def mmck(
    arrival_rate_per_s: float, service_rate_per_s: float, servers: int, queue_max: int
) -> MMcK:
    """Solve the M/M/c/K birth-death chain exactly; any load, overload included."""
    _check_rates(arrival_rate_per_s, service_rate_per_s, servers)
    if queue_max < 0:
        raise TheoryError(f"queue_max={queue_max} is invalid: use 0 or more waiting places")
    offered_load = arrival_rate_per_s / service_rate_per_s
    states = np.arange(servers + queue_max + 1)
    busy = np.minimum(states, servers)
    waiting = states - busy
    # log p_n = n log a - log(min(n, c)!) - (n - c)^+ log c, up to the normalising constant.
    log_weights = (
        states * math.log(offered_load) - special.gammaln(busy + 1) - waiting * math.log(servers)
    )
    probabilities = np.exp(log_weights - special.logsumexp(log_weights))
    return MMcK(
        arrival_rate_per_s=arrival_rate_per_s,
        service_rate_per_s=service_rate_per_s,
        servers=servers,
        queue_max=queue_max,
        state_probabilities=probabilities,
    )
