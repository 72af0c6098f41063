"""Service of one event: its fan-out of execution calls, with latency, timeouts, errors, retries.

An event on a channel becomes one execution call per cached config of that channel. The worker
runs the calls of one event concurrently and finishes the event when the last call finishes, so
the event's service time is the maximum of its calls' times. A call makes up to `max_attempts`
attempts; a timed-out, 429 or 5xx attempt is retried after a full-jitter backoff, and the call
fails when its last attempt fails. An event with a failed call counts as failed.

Every random value is drawn here, up front, per arrival, in arrival order: the fan-out from the
`channels` stream, and for each call and each possible attempt a base latency (`latency`), an
error draw (`errors`) and a jitter draw (`jitter`). Draw counts depend only on the arrivals and
their channels, never on the pool size, so pool sizes are compared on common random numbers.

When the execution service has no capacity limit, a call's time does not depend on other calls,
and `resolve_calls` computes every call's outcome in numpy. With a capacity limit, latency
depends on the calls in progress, so the SimPy model plays the attempts out from the same draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from simulation.config import ExecutionConfig, FanoutConfig

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


def channel_weights(fanout: FanoutConfig) -> FloatArray:
    """Return the Zipf-like popularity of each channel, normalised to sum to 1."""
    ranks = np.arange(1, len(fanout.channel_config_counts) + 1, dtype=np.float64)
    weights = ranks ** (-fanout.zipf_exponent)
    normalised: FloatArray = weights / weights.sum()
    return normalised


def draw_fanouts(fanout: FanoutConfig, count: int, rng: np.random.Generator) -> IntArray:
    """Return the number of execution calls of each of `count` events."""
    if fanout.kind == "fixed":
        return np.full(count, fanout.fixed_count, dtype=np.int64)
    channels = rng.choice(len(fanout.channel_config_counts), size=count, p=channel_weights(fanout))
    counts = np.asarray(fanout.channel_config_counts, dtype=np.int64)
    result: IntArray = counts[channels]
    return result


def draw_base_latencies_s(
    execution: ExecutionConfig, shape: tuple[int, ...], rng: np.random.Generator
) -> FloatArray:
    """Draw attempt latencies in seconds, before any capacity slowdown."""
    if execution.latency == "exponential":
        return rng.exponential(execution.latency_mean_ms / 1000.0, size=shape)
    if execution.latency == "lognormal":
        median_s = execution.latency_median_ms / 1000.0
        if median_s == 0:
            return np.zeros(shape)
        return rng.lognormal(np.log(median_s), execution.latency_sigma, size=shape)
    if execution.latency == "deterministic":
        return np.full(shape, execution.latency_mean_ms / 1000.0)
    samples_s = np.asarray(execution.latency_samples_ms, dtype=np.float64) / 1000.0
    return rng.choice(samples_s, size=shape)


def mean_base_latency_s(execution: ExecutionConfig) -> float:
    """Return the mean attempt latency in seconds of the configured distribution."""
    if execution.latency in ("exponential", "deterministic"):
        return execution.latency_mean_ms / 1000.0
    if execution.latency == "lognormal":
        return float(execution.latency_median_ms / 1000.0 * np.exp(execution.latency_sigma**2 / 2))
    return float(np.mean(execution.latency_samples_ms) / 1000.0)


@dataclass(frozen=True)
class CallDraws:
    """Random inputs of every execution call of a run, one row per call, one column per attempt.

    The calls of event `i` are rows `call_offsets[i]` to `call_offsets[i + 1] - 1`.
    """

    base_latency_s: FloatArray
    error_draw: FloatArray
    jitter_draw: FloatArray
    call_offsets: IntArray

    @property
    def call_count(self) -> int:
        """Number of calls over all events."""
        return int(self.base_latency_s.shape[0])


def draw_calls(
    execution: ExecutionConfig,
    fanouts: IntArray,
    latency_rng: np.random.Generator,
    error_rng: np.random.Generator,
    jitter_rng: np.random.Generator,
) -> CallDraws:
    """Draw latency, error and jitter values for every call and possible attempt."""
    offsets = np.concatenate(([0], np.cumsum(fanouts))).astype(np.int64)
    shape = (int(offsets[-1]), execution.max_attempts)
    return CallDraws(
        base_latency_s=draw_base_latencies_s(execution, shape, latency_rng),
        error_draw=error_rng.random(shape),
        jitter_draw=jitter_rng.random(shape),
        call_offsets=offsets,
    )


def backoff_s(execution: ExecutionConfig, attempt: int, jitter_draw: float | FloatArray) -> float:
    """Return the wait after failed attempt `attempt` (counting from 1), with full jitter."""
    return float(execution.backoff_base_ms / 1000.0 * 2 ** (attempt - 1) * jitter_draw)


@dataclass(frozen=True)
class CallOutcomes:
    """Result of every call: total time with retries, success, attempts made, final timeout."""

    duration_s: FloatArray
    succeeded: BoolArray
    attempts: IntArray
    timed_out: BoolArray


def resolve_calls(execution: ExecutionConfig, draws: CallDraws) -> CallOutcomes:
    """Play out every call's attempts in numpy, for an execution service without capacity limit."""
    attempts_max = execution.max_attempts
    timeout_s = np.inf if execution.timeout_ms is None else execution.timeout_ms / 1000.0

    timed_out = draws.base_latency_s > timeout_s
    errored = ~timed_out & (draws.error_draw < execution.error_probability)
    attempt_ok = ~(timed_out | errored)
    attempt_time_s = np.where(timed_out, timeout_s, draws.base_latency_s)

    succeeded: BoolArray = np.asarray(attempt_ok.any(axis=1))
    attempts = np.where(succeeded, attempt_ok.argmax(axis=1) + 1, attempts_max)

    column = np.arange(attempts_max)
    made = column[None, :] < attempts[:, None]
    waited = column[None, :] < (attempts - 1)[:, None]
    scale_s = execution.backoff_base_ms / 1000.0 * 2.0**column
    backoffs_s = draws.jitter_draw * scale_s[None, :]
    duration_s = (attempt_time_s * made).sum(axis=1) + (backoffs_s * waited).sum(axis=1)

    last = attempts - 1
    rows = np.arange(draws.call_count)
    final_timed_out = ~succeeded & timed_out[rows, last]
    return CallOutcomes(
        duration_s=duration_s,
        succeeded=succeeded,
        attempts=attempts.astype(np.int64),
        timed_out=final_timed_out,
    )


@dataclass(frozen=True)
class EventService:
    """Per-event service summary built from its calls."""

    service_s: FloatArray
    failed: BoolArray
    executions: IntArray
    execution_errors: IntArray
    execution_attempts: IntArray


def event_service(call_offsets: IntArray, outcomes: CallOutcomes) -> EventService:
    """Combine call outcomes per event: service is the slowest call, failed if any call failed."""
    fanouts = np.diff(call_offsets)
    has_calls = fanouts > 0
    starts = call_offsets[:-1][has_calls]

    service_s = np.zeros(fanouts.size)
    errors = np.zeros(fanouts.size, dtype=np.int64)
    attempts = np.zeros(fanouts.size, dtype=np.int64)
    if starts.size:
        # reduceat over non-empty segments only: an empty segment would return a neighbour.
        service_s[has_calls] = np.maximum.reduceat(outcomes.duration_s, starts)
        failures = (~outcomes.succeeded).astype(np.int64)
        errors[has_calls] = np.add.reduceat(failures, starts)
        attempts[has_calls] = np.add.reduceat(outcomes.attempts, starts)
    return EventService(
        service_s=service_s,
        failed=errors > 0,
        executions=fanouts.astype(np.int64),
        execution_errors=errors,
        execution_attempts=attempts,
    )
