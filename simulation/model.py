"""SimPy model of one supervisor instance: ingest, bounded FIFO queue, worker pool, refreshes.

Components and what they mirror:

- one arrival process replays the arrival times drawn up front (`simulation.arrivals`);
- ingest: duplicates stop after ingest; other events meet the queue, which hands them to an
  idle worker, keeps them while fewer than `queue_max` wait, or drops them (never blocks);
- `pool_size` worker processes take events in FIFO order; a worker holds one event until the
  last of its execution calls finishes (`simulation.service`);
- when any CPU cost or refresh stall is set, a `simpy.Resource` of capacity 1 stands for the one
  event-loop core: ingest, the worker's per-event cost and refresh stalls queue for it in FIFO
  order, which caps throughput whatever the pool size;
- two refresh processes (incremental, full) wait for the database and then stall the loop.

All random values are drawn before the run (`draw_inputs`), so the same seed and replication
give the same arrivals and per-event draws for every pool size and queue capacity.

Ties at equal times follow SimPy's scheduling order. With continuous distributions they do not
happen; with deterministic latency or a trace they may differ from the rule "a completion frees
its worker before an arrival at the same time meets the queue".
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import simpy

from simulation.analysis import ReplicationSummary, combine_replications, summarize_run
from simulation.arrivals import draw_arrival_times, draw_duplicate_flags
from simulation.config import ModelConfig
from simulation.monitor import EventRecords, RunRecords, scrape_series
from simulation.service import (
    CallDraws,
    CallOutcomes,
    EventService,
    FloatArray,
    backoff_s,
    draw_calls,
    draw_fanouts,
    event_service,
    resolve_calls,
)
from simulation.streams import replication_streams

logger = logging.getLogger(__name__)

ProcessGenerator = Generator[simpy.Event, Any, None]


@dataclass(frozen=True)
class ModelInputs:
    """Random inputs of one replication, drawn before the run in arrival order.

    `service` contains the per-event service times when they do not depend on the state of the run
    (no execution capacity limit); otherwise it is None and the model plays the calls out.
    """

    arrival_s: FloatArray
    duplicate: np.ndarray[Any, np.dtype[np.bool_]]
    calls: CallDraws
    service: EventService | None


def draw_inputs(config: ModelConfig, replication: int) -> ModelInputs:
    """Draw every random input of replication `replication` from its own streams."""
    streams = replication_streams(config.seed, replication)
    arrival_s = draw_arrival_times(config.arrivals, config.duration_s, streams.arrivals)
    count = arrival_s.size
    duplicate = draw_duplicate_flags(count, config.duplicate_ratio, streams.duplicates)
    fanouts = draw_fanouts(config.fanout, count, streams.channels)
    calls = draw_calls(config.execution, fanouts, streams.latency, streams.errors, streams.jitter)
    service = None
    if not config.execution.capacity_limited:
        service = event_service(calls.call_offsets, resolve_calls(config.execution, calls))
    return ModelInputs(arrival_s=arrival_s, duplicate=duplicate, calls=calls, service=service)


class SupervisorModel:
    """One replication of the model; build it, call `run()` once, read the records."""

    def __init__(self, config: ModelConfig, inputs: ModelInputs) -> None:
        self.config = config
        self.inputs = inputs
        self.env = simpy.Environment()
        self.cpu: simpy.Resource | None = simpy.Resource(self.env, 1) if config.uses_cpu else None

        count = inputs.arrival_s.size
        self._arrival_s: list[float] = inputs.arrival_s.tolist()
        self._duplicate: list[bool] = inputs.duplicate.tolist()
        # NOTE: per-event results go into Python lists, which take item writes faster than numpy.
        self._enqueue_s: list[float] = [np.nan] * count
        self._start_s: list[float] = [np.nan] * count
        self._end_s: list[float] = [np.nan] * count
        self._dropped: list[bool] = [False] * count

        self._queue: deque[int] = deque()
        self._idle_workers: list[simpy.Event] = []
        self._exec_in_flight = 0
        calls = inputs.calls.call_count
        self._call_duration_s = np.zeros(calls)
        self._call_succeeded = np.zeros(calls, dtype=np.bool_)
        self._call_attempts = np.zeros(calls, dtype=np.int64)
        self._call_timed_out = np.zeros(calls, dtype=np.bool_)
        self._refresh_done_s: dict[str, list[float]] = {"incremental": [], "full": []}

    def run(self) -> RunRecords:
        """Run the replication for `duration_s` of simulated time and return its records."""
        config = self.config
        self.env.process(self._arrivals())
        for _ in range(config.pool_size):
            self.env.process(self._worker())
        refresh = config.refresh
        self.env.process(
            self._refresh(
                "incremental",
                refresh.refresh_interval_ms,
                refresh.incremental_db_time_ms,
                refresh.incremental_stall_ms,
            )
        )
        self.env.process(
            self._refresh(
                "full",
                refresh.full_refresh_interval_ms,
                refresh.full_db_time_ms,
                refresh.full_stall_ms,
            )
        )
        self.env.run(until=config.duration_s)
        return self._records()

    def _arrivals(self) -> ProcessGenerator:
        env = self.env
        timeout = env.timeout
        ingest = self._ingest if self.cpu is not None else None
        enqueue = self._enqueue
        for index, arrival_s in enumerate(self._arrival_s):
            yield timeout(arrival_s - env.now)
            if ingest is None:
                enqueue(index)
            else:
                # NOTE: a process per arrival only when the loop core is modelled; ingest must
                # wait for the core without holding up later arrivals.
                env.process(ingest(index))

    def _ingest(self, index: int) -> ProcessGenerator:
        assert self.cpu is not None
        request = self.cpu.request()
        yield request
        cost_s = self.config.cpu.ingest_cost_ms / 1000.0
        if cost_s > 0:
            yield self.env.timeout(cost_s)
        self.cpu.release(request)
        self._enqueue(index)

    def _enqueue(self, index: int) -> None:
        self._enqueue_s[index] = self.env.now
        if self._duplicate[index]:
            return
        if self._idle_workers:
            self._idle_workers.pop().succeed(index)
        elif len(self._queue) < self.config.queue_max:
            self._queue.append(index)
        else:
            self._dropped[index] = True

    def _worker(self) -> ProcessGenerator:
        env = self.env
        queue = self._queue
        idle_workers = self._idle_workers
        start_s = self._start_s
        end_s = self._end_s
        service = self.inputs.service
        service_s: list[float] | None = None if service is None else service.service_s.tolist()
        worker_cost_s = self.config.cpu.worker_cost_ms / 1000.0
        cpu = self.cpu

        while True:
            if queue:
                index = queue.popleft()
            else:
                wake = env.event()
                idle_workers.append(wake)
                index = yield wake
            start_s[index] = env.now

            if cpu is not None:
                request = cpu.request()
                yield request
                if worker_cost_s > 0:
                    yield env.timeout(worker_cost_s)
                cpu.release(request)

            if service_s is not None:
                yield env.timeout(service_s[index])
            else:
                yield from self._serve_calls(index)
            end_s[index] = env.now

    def _serve_calls(self, index: int) -> ProcessGenerator:
        offsets = self.inputs.calls.call_offsets
        first, stop = int(offsets[index]), int(offsets[index + 1])
        if stop - first == 1:
            yield from self._call(first)
        elif stop > first:
            calls = [self.env.process(self._call(call)) for call in range(first, stop)]
            yield self.env.all_of(calls)

    def _call(self, call: int) -> ProcessGenerator:
        """Play out one call's attempts against the capacity-limited execution service."""
        env = self.env
        execution = self.config.execution
        draws = self.inputs.calls
        timeout_s = np.inf if execution.timeout_ms is None else execution.timeout_ms / 1000.0
        limited = execution.capacity_limited
        capacity = max(execution.capacity_concurrent, 1)
        limit = execution.effective_limit_concurrent if limited else np.inf
        began_s = env.now

        for attempt in range(1, execution.max_attempts + 1):
            column = attempt - 1
            in_progress = self._exec_in_flight + 1
            timed_out = False
            if in_progress > limit:
                succeeded = False  # 429 at once, retried like a 5xx
            else:
                latency_s = draws.base_latency_s[call, column]
                if limited:
                    latency_s *= max(1.0, in_progress / capacity)
                self._exec_in_flight += 1
                if latency_s > timeout_s:
                    timed_out = True
                    yield env.timeout(timeout_s)
                    # The service keeps working on a call the client gave up on.
                    env.process(self._finish_abandoned_call(latency_s - timeout_s))
                    succeeded = False
                else:
                    yield env.timeout(latency_s)
                    self._exec_in_flight -= 1
                    succeeded = draws.error_draw[call, column] >= execution.error_probability
            if succeeded or attempt == execution.max_attempts:
                break
            yield env.timeout(backoff_s(execution, attempt, draws.jitter_draw[call, column]))

        self._call_duration_s[call] = env.now - began_s
        self._call_succeeded[call] = succeeded
        self._call_attempts[call] = attempt
        self._call_timed_out[call] = timed_out and not succeeded

    def _finish_abandoned_call(self, remaining_s: float) -> ProcessGenerator:
        yield self.env.timeout(remaining_s)
        self._exec_in_flight -= 1

    def _refresh(
        self, kind: str, interval_ms: float, db_time_ms: float, stall_ms: float
    ) -> ProcessGenerator:
        """Refresh every `interval_ms` after the previous one finished, as a sleeping loop does."""
        env = self.env
        done_s = self._refresh_done_s[kind]
        while True:
            yield env.timeout(interval_ms / 1000.0)
            if db_time_ms > 0:
                yield env.timeout(db_time_ms / 1000.0)
            if stall_ms > 0 and self.cpu is not None:
                request = self.cpu.request()
                yield request
                yield env.timeout(stall_ms / 1000.0)
                self.cpu.release(request)
            done_s.append(env.now)

    def _event_service(self) -> EventService:
        if self.inputs.service is not None:
            return self.inputs.service
        outcomes = CallOutcomes(
            duration_s=self._call_duration_s,
            succeeded=self._call_succeeded,
            attempts=self._call_attempts,
            timed_out=self._call_timed_out,
        )
        return event_service(self.inputs.calls.call_offsets, outcomes)

    def _records(self) -> RunRecords:
        config = self.config
        service = self._event_service()
        end_s = np.array(self._end_s)
        # Calls of events that never finished have no outcome yet; only finished events count.
        events = EventRecords(
            arrival_s=self.inputs.arrival_s,
            enqueue_s=np.array(self._enqueue_s),
            start_s=np.array(self._start_s),
            end_s=end_s,
            dropped=np.array(self._dropped, dtype=np.bool_),
            duplicate=self.inputs.duplicate,
            failed=service.failed & ~np.isnan(end_s),
            executions=service.executions,
            execution_errors=service.execution_errors,
            execution_attempts=service.execution_attempts,
        )
        return RunRecords(
            events=events,
            pool_size=config.pool_size,
            queue_max=config.queue_max,
            duration_s=config.duration_s,
            start_unix_s=config.start_unix_s,
            incremental_refresh_done_s=np.array(self._refresh_done_s["incremental"]),
            full_refresh_done_s=np.array(self._refresh_done_s["full"]),
            ingest_cost_s=config.cpu.ingest_cost_ms / 1000.0,
            worker_cost_s=config.cpu.worker_cost_ms / 1000.0,
            incremental_stall_s=config.refresh.incremental_stall_ms / 1000.0,
            full_stall_s=config.refresh.full_stall_ms / 1000.0,
        )


def run_replication(config: ModelConfig, replication: int) -> RunRecords:
    """Draw the inputs of one replication and run the model on them."""
    inputs = draw_inputs(config, replication)
    logger.debug(
        "Model replication %d: %d arrivals, pool size %d, queue capacity %d",
        replication,
        inputs.arrival_s.size,
        config.pool_size,
        config.queue_max,
    )
    return SupervisorModel(config, inputs).run()


@dataclass(frozen=True)
class SimulationResult:
    """Replications of one config: their records and summaries, and the combined summary."""

    config: ModelConfig
    runs: tuple[RunRecords, ...]
    replications: tuple[ReplicationSummary, ...]
    summary: dict[str, float]

    def series(self, replication: int = 0) -> pd.DataFrame:
        """Return the scrape series of one replication (see `simulation.monitor`)."""
        return scrape_series(self.runs[replication], self.config.scrape_interval_s)


def simulate(config: ModelConfig) -> SimulationResult:
    """Run `config.replications` independent replications and summarise them."""
    runs = tuple(run_replication(config, replication) for replication in range(config.replications))
    summaries = tuple(summarize_run(run, config.warmup_s) for run in runs)
    return SimulationResult(
        config=config,
        runs=runs,
        replications=summaries,
        summary=combine_replications(summaries),
    )


def run_model_summary(config: ModelConfig, replication: int) -> dict[str, float]:
    """Run one replication and return its summary keys, warm-up and ratio-estimator totals."""
    summary = summarize_run(run_replication(config, replication), config.warmup_s)
    row = dict(summary.metrics)
    row["warmup_s"] = summary.warmup_s
    for name in ("offered", "dropped", "lag_sum_s", "lag_count", "e2e_sum_s", "e2e_count"):
        row[name] = float(summary.total(name))
    return row
