"""Exact event-by-event recursion for the FIFO G/G/c/K queue, independent of SimPy.

Given the arrival times and service times of every event, a FIFO queue served by `c` workers with
`K` waiting places (events in service are not counted) is fully determined. Event `i` is dropped
when all `c` workers are busy and `K` admitted events wait at its arrival. Otherwise it starts at
`max(arrival_i, earliest time a worker is free)`, because FIFO hands the next free worker to the
oldest waiting event. The recursion keeps a heap of the `c` worker-free times and a FIFO of the
start times of the events still waiting, so the whole run costs `O(n log c)` with no event list.

Ties at equal times follow one rule: a service completion at time `t` frees its worker, and a
waiting event takes that worker, before an arrival at `t` is checked against the queue capacity.
So an event arriving exactly when a worker frees starts at once with zero lag, and an event that
starts at its arrival time never counts as waiting. Events that arrive at the same time are
handled in index order. The SimPy model handles equal times in SimPy's scheduling order instead,
so the two engines agree exactly only when no arrival falls on a completion time, which is true
with probability 1 for Poisson arrivals or continuous trace times.

Invariants the tests check: every admitted event starts no earlier than it arrives, admitted
events start in arrival order, at most `c` are in service and at most `K` wait at any time, and
no worker is idle while an event waits.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from simulation.config import ModelConfig
    from simulation.monitor import RunRecords

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


class RecursionInputError(ValueError):
    """The arrival or service arrays, pool size or queue capacity cannot describe a queue."""


@dataclass(frozen=True)
class QueueTrace:
    """Per-event outcome of one run of the recursion.

    `start_s` and `end_s` are NaN for dropped events. Arrays are indexed like the inputs.
    """

    arrival_s: FloatArray
    service_s: FloatArray
    start_s: FloatArray
    end_s: FloatArray
    dropped: BoolArray
    pool_size: int
    queue_max: int

    @property
    def admitted(self) -> BoolArray:
        """Mask of the events that entered the queue (or went straight to a worker)."""
        return ~self.dropped

    @property
    def lag_s(self) -> FloatArray:
        """Time each event waited for a worker; NaN for dropped events."""
        return self.start_s - self.arrival_s


def _validated_inputs(
    arrival_times_s: npt.ArrayLike,
    service_times_s: npt.ArrayLike,
    pool_size: int,
    queue_max: int,
) -> tuple[FloatArray, FloatArray]:
    arrivals = np.asarray(arrival_times_s, dtype=np.float64)
    services = np.asarray(service_times_s, dtype=np.float64)
    if arrivals.ndim != 1 or arrivals.shape != services.shape:
        raise RecursionInputError(
            f"arrival and service times must be 1-D arrays of equal length, got shapes "
            f"{arrivals.shape} and {services.shape}"
        )
    if pool_size < 1:
        raise RecursionInputError(f"pool_size={pool_size} is invalid: use at least 1 worker")
    if queue_max < 0:
        raise RecursionInputError(f"queue_max={queue_max} is invalid: use 0 or more places")
    if not (np.all(np.isfinite(arrivals)) and np.all(np.isfinite(services))):
        raise RecursionInputError("arrival and service times must be finite numbers")
    if arrivals.size and np.any(np.diff(arrivals) < 0):
        first = int(np.argmax(np.diff(arrivals) < 0)) + 1
        raise RecursionInputError(
            f"arrival times must be sorted: arrival {first} at {arrivals[first]!r} s comes "
            f"before arrival {first - 1} at {arrivals[first - 1]!r} s; sort them first"
        )
    if np.any(services < 0):
        raise RecursionInputError("service times must be 0 or more seconds")
    return arrivals, services


def run_fifo_queue(
    arrival_times_s: npt.ArrayLike,
    service_times_s: npt.ArrayLike,
    pool_size: int,
    queue_max: int,
) -> QueueTrace:
    """Run the FIFO G/G/c/K recursion on sorted arrival times and their service times.

    Raises `RecursionInputError` for unsorted or non-finite times, negative service times, a
    pool size below 1 or a negative queue capacity.
    """
    arrivals, services = _validated_inputs(arrival_times_s, service_times_s, pool_size, queue_max)
    starts, ends = _recur(arrivals.tolist(), services.tolist(), pool_size, queue_max)
    start_s = np.asarray(starts, dtype=np.float64)
    return QueueTrace(
        arrival_s=arrivals,
        service_s=services,
        start_s=start_s,
        end_s=np.asarray(ends, dtype=np.float64),
        dropped=np.isnan(start_s),
        pool_size=pool_size,
        queue_max=queue_max,
    )


def _recur(
    arrivals: list[float], services: list[float], pool_size: int, queue_max: int
) -> tuple[list[float], list[float]]:
    # NOTE: this loop is the engine's whole cost, so it runs over Python floats with local
    # aliases, which is several times faster than indexing numpy arrays element by element.
    nan = math.nan
    free_at = [-math.inf] * pool_size  # a valid heap: all workers free from the start
    # Start times of admitted events that had to wait. FIFO start times never decrease, so a
    # deque ordered by start time replaces a heap here.
    waiting_starts: deque[float] = deque()
    starts: list[float] = []
    ends: list[float] = []
    heapreplace = heapq.heapreplace
    popleft = waiting_starts.popleft
    push_waiting = waiting_starts.append
    add_start = starts.append
    add_end = ends.append

    for arrival, service in zip(arrivals, services, strict=True):
        while waiting_starts and waiting_starts[0] <= arrival:
            popleft()
        earliest_free = free_at[0]
        if earliest_free > arrival and len(waiting_starts) >= queue_max:
            add_start(nan)
            add_end(nan)
            continue
        if earliest_free > arrival:
            start = earliest_free
            push_waiting(start)
        else:
            start = arrival
        end = start + service
        heapreplace(free_at, end)
        add_start(start)
        add_end(end)
    return starts, ends


def queue_depth_steps(trace: QueueTrace) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """Return the times at which the queue depth changes and the depth just after each change.

    An event adds one to the depth at its arrival and removes one at its start, only when it
    had to wait. At equal times removals come first, as in the tie rule of the recursion.
    """
    waited = trace.admitted & (trace.start_s > trace.arrival_s)
    times = np.concatenate([trace.arrival_s[waited], trace.start_s[waited]])
    changes = np.concatenate(
        [np.ones(int(waited.sum()), dtype=np.int64), -np.ones(int(waited.sum()), dtype=np.int64)]
    )
    order = np.lexsort((changes, times))
    return times[order], np.cumsum(changes[order])


def time_weighted_queue_depth(trace: QueueTrace, start_s: float, end_s: float) -> float:
    """Return the mean queue depth over `[start_s, end_s)`, weighted by time."""
    if end_s <= start_s:
        raise RecursionInputError(
            f"window [{start_s!r}, {end_s!r}) s is empty; end_s must be after start_s"
        )
    waited = trace.admitted & (trace.start_s > trace.arrival_s)
    entered = np.clip(trace.arrival_s[waited], start_s, end_s)
    left = np.clip(trace.start_s[waited], start_s, end_s)
    return float(np.sum(left - entered) / (end_s - start_s))


def max_queue_depth(trace: QueueTrace, start_s: float, end_s: float) -> int:
    """Return the largest queue depth reached in `[start_s, end_s)`."""
    times, depths = queue_depth_steps(trace)
    before = np.searchsorted(times, start_s, side="right")
    depth_at_start = int(depths[before - 1]) if before > 0 else 0
    inside = (times >= start_s) & (times < end_s)
    if not np.any(inside):
        return depth_at_start
    return max(depth_at_start, int(depths[inside].max()))


def busy_worker_seconds(trace: QueueTrace, start_s: float, end_s: float) -> float:
    """Return the worker time spent in service inside `[start_s, end_s)`, summed over workers."""
    admitted = trace.admitted
    began = np.clip(trace.start_s[admitted], start_s, end_s)
    finished = np.clip(trace.end_s[admitted], start_s, end_s)
    return float(np.sum(finished - began))


# Runs of a `ModelConfig`: the same inputs as the SimPy model, the same records and summary.


def check_config_supported(config: ModelConfig) -> None:
    """Raise `RecursionInputError` unless `config` is a plain FIFO queue the recursion can run.

    Supported: any arrivals, duplicates (they never reach the queue), and any fan-out, latency,
    timeout, error and retry settings, because then each event's service time is fixed before
    the run. Not supported: CPU costs or refresh stalls (they share the event-loop core with
    the workers) and an execution capacity limit (latency then depends on the calls in progress).
    """
    if config.uses_cpu:
        raise RecursionInputError(
            "the recursion cannot model the event-loop core: set cpu.ingest_cost_ms, "
            "cpu.worker_cost_ms, refresh.incremental_stall_ms and refresh.full_stall_ms to 0, "
            "or use the SimPy model"
        )
    if config.execution.capacity_limited:
        raise RecursionInputError(
            f"the recursion cannot model execution.capacity_concurrent="
            f"{config.execution.capacity_concurrent}: set it to 0 (unlimited), or use the SimPy "
            "model"
        )


def run_config(config: ModelConfig, replication: int) -> RunRecords:
    """Run replication `replication` of `config` through the recursion, as the model would.

    The inputs come from `simulation.model.draw_inputs`, so they are the SimPy model's own
    draws for the same seed and replication. As in the model, the run stops at `duration_s`:
    an event that has not started by then has NaN `start_s`, one not finished has NaN `end_s`.
    """
    # Imported here so that the recursion itself needs neither SimPy nor the model.
    from simulation.model import draw_inputs
    from simulation.monitor import EventRecords, RunRecords

    check_config_supported(config)
    inputs = draw_inputs(config, replication)
    service = inputs.service
    if service is None:
        raise RecursionInputError("the model drew no fixed service times for this config")

    queued = ~inputs.duplicate
    trace = run_fifo_queue(
        inputs.arrival_s[queued], service.service_s[queued], config.pool_size, config.queue_max
    )
    count = inputs.arrival_s.size
    start_s = np.full(count, np.nan)
    end_s = np.full(count, np.nan)
    dropped = np.zeros(count, dtype=np.bool_)
    # SimPy's run(until=T) stops before it handles anything scheduled at T itself.
    start_s[queued] = np.where(trace.start_s < config.duration_s, trace.start_s, np.nan)
    end_s[queued] = np.where(trace.end_s < config.duration_s, trace.end_s, np.nan)
    dropped[queued] = trace.dropped

    # The per-event service fields (executions, errors, attempts, ...) are copied by name from
    # the model's EventService, as the model does, so the records keep up with both.
    service_fields = {
        item.name: getattr(service, item.name)
        for item in dataclasses.fields(EventRecords)
        if hasattr(service, item.name)
    }
    service_fields["failed"] = service.failed & ~np.isnan(end_s)
    events = EventRecords(
        arrival_s=inputs.arrival_s,
        enqueue_s=inputs.arrival_s.copy(),
        start_s=start_s,
        end_s=end_s,
        dropped=dropped,
        duplicate=inputs.duplicate,
        **service_fields,
    )
    return RunRecords(
        events=events,
        pool_size=config.pool_size,
        queue_max=config.queue_max,
        duration_s=config.duration_s,
        start_unix_s=config.start_unix_s,
        incremental_refresh_done_s=_refresh_times_s(
            config.refresh.refresh_interval_ms, config.refresh.incremental_db_time_ms, config
        ),
        full_refresh_done_s=_refresh_times_s(
            config.refresh.full_refresh_interval_ms, config.refresh.full_db_time_ms, config
        ),
        ingest_cost_s=0.0,
        worker_cost_s=0.0,
        incremental_stall_s=0.0,
        full_stall_s=0.0,
    )


def _refresh_times_s(interval_ms: float, db_time_ms: float, config: ModelConfig) -> FloatArray:
    """Return when each refresh finishes: every interval plus database time, back to back."""
    period_s = (interval_ms + db_time_ms) / 1000.0
    count = math.ceil(config.duration_s / period_s) + 1
    done_s: FloatArray = np.arange(1, count + 1, dtype=np.float64) * period_s
    finished: FloatArray = done_s[done_s < config.duration_s]
    return finished


def summarize_config_run(config: ModelConfig, replication: int) -> dict[str, float]:
    """Run one replication through the recursion and return the row the model's would give.

    The keys are those of `simulation.model.run_model_summary`: the summary keys, `warmup_s`
    and the totals of the ratio estimators, all measured by `simulation.analysis`.
    """
    from simulation.analysis import summarize_run

    summary = summarize_run(run_config(config, replication), config.warmup_s)
    row = dict(summary.metrics)
    row["warmup_s"] = summary.warmup_s
    for name in ("offered", "dropped", "lag_sum_s", "lag_count", "e2e_sum_s", "e2e_count"):
        row[name] = float(summary.total(name))
    return row
