"""Event accounting and the Prometheus metrics of one supervisor instance.

`Metrics` is the one place that counts what happens to events. Every transition (rejected,
not owned, duplicate, dropped on arrival, enqueued, dropped from the queue, finished) is one
synchronous method that updates all the affected counters together. Because the event loop
runs one callback at a time, no snapshot, whether `/metrics` or `/stats`, can see an event
counted as received but not yet in an outcome or in flight:

    received == processed + failed + dropped + duplicate + not_owned + rejected + in_flight

An event is counted as received when its first state is decided. An event whose dedup claim
is still on its way to Redis is therefore in neither side of the identity yet.

Counters and gauges are plain integers exposed by a custom collector at scrape time, which
keeps the hot path free of label lookups and locks. Histograms are prometheus_client
histograms with buckets from 0.5 ms to 60 s. Each `Metrics` has its own registry, so tests
can build several apps in one process.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Literal

import psutil
from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from supervisor.clock import Clock

EventOutcome = Literal["processed", "failed", "dropped", "duplicate", "not_owned", "rejected"]
ExecutionOutcome = Literal["success", "error", "timeout", "rejected"]
RefreshKind = Literal["incremental", "full"]
RefreshResult = Literal["success", "error"]

EVENT_OUTCOMES: tuple[EventOutcome, ...] = (
    "processed",
    "failed",
    "dropped",
    "duplicate",
    "not_owned",
    "rejected",
)
EXECUTION_OUTCOMES: tuple[ExecutionOutcome, ...] = ("success", "error", "timeout", "rejected")
REFRESH_KINDS: tuple[RefreshKind, ...] = ("incremental", "full")

LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
)  # fmt: skip

WINDOW_MAX_SAMPLES = 50_000
"""Recent (time, lag, end-to-end latency) samples kept for the `/stats` window percentiles."""



class RefreshStats:
    """Counts and last figures of one refresh kind."""

    __slots__ = ("error", "last_duration_s", "last_rows", "last_success_unix_s", "success")

    def __init__(self) -> None:
        self.success = 0
        self.error = 0
        self.last_success_unix_s: float | None = None
        self.last_duration_s: float | None = None
        self.last_rows: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "error": self.error,
            "last_success_unix_s": self.last_success_unix_s,
            "last_duration_s": self.last_duration_s,
            "last_rows": self.last_rows,
        }


def _zero() -> float:
    return 0.0


class Metrics:
    """Event accounting, execution and dedup counts, and the registry that exposes them."""

    def __init__(self, clock: Clock, *, pool_size: int, queue_capacity: int) -> None:
        self._clock = clock
        self.pool_size = pool_size
        self.queue_capacity = queue_capacity

        self.received = 0
        self.outcomes: dict[EventOutcome, int] = dict.fromkeys(EVENT_OUTCOMES, 0)
        self.in_flight = 0
        self.dedup: dict[str, int] = {"hit": 0, "miss": 0, "error": 0}
        self.executions: dict[ExecutionOutcome, int] = dict.fromkeys(EXECUTION_OUTCOMES, 0)
        self.execution_attempts = 0
        self.refresh: dict[RefreshKind, RefreshStats] = {k: RefreshStats() for k in REFRESH_KINDS}
        self.lag_sum_s = 0.0
        self.lag_count = 0
        self.e2e_sum_s = 0.0
        self.e2e_count = 0
        self._window: deque[tuple[float, float, float]] = deque(maxlen=WINDOW_MAX_SAMPLES)

        self.queue_depth: Callable[[], int] = lambda: 0
        self.queue_oldest_age_s: Callable[[], float] = _zero
        self.workers_busy: Callable[[], int] = lambda: 0
        self.configs_cached: Callable[[], int] = lambda: 0

        self.registry = CollectorRegistry()
        self._lag = Histogram(
            "supervisor_queue_lag_seconds",
            "Time from enqueue until a worker takes the event.",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._e2e = Histogram(
            "supervisor_end_to_end_latency_seconds",
            "Time from receipt until the last copy trade of the event is acknowledged.",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._event_age = Histogram(
            "supervisor_event_age_seconds",
            "Time from the source's emitted_at until receipt, for events that carry emitted_at.",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.registry.register(_LedgerCollector(self))
        ProcessCollector(registry=self.registry)

    # Accounting transitions. Each one keeps the identity in the module docstring.

    def count_rejected(self, count: int = 1) -> None:
        """Count events that failed validation."""
        self.received += count
        self.outcomes["rejected"] += count

    def count_not_owned(self, count: int = 1) -> None:
        """Count events whose channel another shard owns."""
        self.received += count
        self.outcomes["not_owned"] += count

    def count_duplicate(self, count: int = 1) -> None:
        """Count events whose id was already claimed (a dedup hit)."""
        self.received += count
        self.outcomes["duplicate"] += count

    def count_dropped_on_arrival(self, count: int = 1) -> None:
        """Count events refused before queueing: queue full, draining or dedup unavailable."""
        self.received += count
        self.outcomes["dropped"] += count

    def count_enqueued(self, count: int = 1) -> None:
        """Count events accepted into the queue; they stay in flight until they finish."""
        self.received += count
        self.in_flight += count

    def count_dropped_in_flight(self, count: int = 1) -> None:
        """Count queued or held events given up at shutdown."""
        self.in_flight -= count
        self.outcomes["dropped"] += count

    def count_finished(self, processed: bool, e2e_s: float, lag_s: float) -> None:
        """Count an event a worker finished, and record its end-to-end latency."""
        self.in_flight -= 1
        self.outcomes["processed" if processed else "failed"] += 1
        self.e2e_sum_s += e2e_s
        self.e2e_count += 1
        self._e2e.observe(e2e_s)
        self._window.append((self._clock.monotonic(), lag_s, e2e_s))

    def observe_lag(self, lag_s: float) -> None:
        """Record the time an event waited in the queue, when a worker takes it."""
        self.lag_sum_s += lag_s
        self.lag_count += 1
        self._lag.observe(lag_s)

    def observe_event_age(self, age_s: float) -> None:
        """Record source-to-receipt age; negative ages (clock skew) are recorded as zero."""
        self._event_age.observe(max(0.0, age_s))

    def count_dedup(self, *, hit: int = 0, miss: int = 0, error: int = 0) -> None:
        """Count dedup claim results."""
        self.dedup["hit"] += hit
        self.dedup["miss"] += miss
        self.dedup["error"] += error

    def count_execution(self, outcome: ExecutionOutcome, attempts: int) -> None:
        """Count one copy trade's final outcome and the HTTP attempts it took."""
        self.executions[outcome] += 1
        self.execution_attempts += attempts

    def on_refresh(
        self,
        kind: RefreshKind,
        result: RefreshResult,
        rows: int,
        duration_s: float,
        finished_unix_s: float,
    ) -> None:
        """Count one config refresh; the refresh loop calls this as its observer."""
        stats = self.refresh[kind]
        if result == "success":
            stats.success += 1
            stats.last_success_unix_s = finished_unix_s
            stats.last_rows = rows
        else:
            stats.error += 1
        stats.last_duration_s = duration_s

    # Snapshots.

    def events_snapshot(self) -> dict[str, int]:
        """Return the event counters as `/stats` shows them under `events`."""
        snapshot: dict[str, int] = {"received": self.received}
        for outcome, count in self.outcomes.items():
            snapshot[outcome] = count
        snapshot["in_flight"] = self.in_flight
        return snapshot

    def window(self, window_s: float) -> dict[str, Any]:
        """Return lag and end-to-end latency figures over events finished in the last window."""
        since = self._clock.monotonic() - window_s
        lags: list[float] = []
        e2es: list[float] = []
        for finished_at, lag_s, e2e_s in reversed(self._window):
            if finished_at < since:
                break
            lags.append(lag_s)
            e2es.append(e2e_s)
        lags.sort()
        e2es.sort()
        return {
            "window_s": window_s,
            "lag_mean_s": _mean(lags),
            "lag_p95_s": percentile(lags, 0.95),
            "e2e_mean_s": _mean(e2es),
            "e2e_p95_s": percentile(e2es, 0.95),
            "e2e_p99_s": percentile(e2es, 0.99),
            "events": len(e2es),
        }

    def stats(self, window_s: float) -> dict[str, Any]:
        """Return the `/stats` snapshot without its `instance` part."""
        return {
            "events": self.events_snapshot(),
            "queue": {
                "depth": self.queue_depth(),
                "capacity": self.queue_capacity,
                "oldest_age_s": self.queue_oldest_age_s(),
            },
            "workers": {"pool_size": self.pool_size, "busy": self.workers_busy()},
            "lag_s": {"count": self.lag_count, "sum": self.lag_sum_s},
            "end_to_end_latency_s": {"count": self.e2e_count, "sum": self.e2e_sum_s},
            "window": self.window(window_s),
            "dedup": dict(self.dedup),
            "executions": {**self.executions, "attempts": self.execution_attempts},
            "configs": {"cached": self.configs_cached()},
            "refresh": {kind: stats.as_dict() for kind, stats in self.refresh.items()},
            "process": process_usage(),
        }


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Return the nearest-rank percentile of sorted values, 0.0 for none."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


_PROCESS = psutil.Process()


def process_usage() -> dict[str, Any]:
    """Return this process's CPU seconds (user plus system) and resident memory in bytes."""
    cpu = _PROCESS.cpu_times()
    return {"cpu_seconds": cpu.user + cpu.system, "rss_bytes": _PROCESS.memory_info().rss}


class _LedgerCollector(Collector):
    """Exposes the plain counters and gauges of a `Metrics` at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._m
        yield _counter("supervisor_events_received_total", "Events received.", m.received)
        yield _labelled_counter(
            "supervisor_events_total", "Events by final outcome.", "outcome", m.outcomes
        )
        yield _gauge("supervisor_events_in_flight", "Events queued or held by a worker.",
                     m.in_flight)  # fmt: skip
        yield _gauge("supervisor_queue_depth", "Events waiting in the queue.", m.queue_depth())
        yield _gauge("supervisor_queue_capacity", "Queue capacity.", m.queue_capacity)
        yield _gauge(
            "supervisor_queue_oldest_age_seconds",
            "Age of the oldest waiting event.",
            m.queue_oldest_age_s(),
        )
        yield _labelled_counter(
            "supervisor_dedup_total", "Dedup claim results.", "result", m.dedup
        )
        yield _labelled_counter(
            "supervisor_executions_total",
            "Copy trades by final outcome.",
            "outcome",
            m.executions,
        )
        yield _counter(
            "supervisor_execution_attempts_total",
            "HTTP calls to the execution service, retries included.",
            m.execution_attempts,
        )
        yield _gauge("supervisor_worker_pool_size", "Number of workers.", m.pool_size)
        yield _gauge("supervisor_workers_busy", "Workers holding an event.", m.workers_busy())
        yield _gauge("supervisor_configs_cached", "Configs in the cache.", m.configs_cached())
        yield from self._refresh_metrics()

    def _refresh_metrics(self) -> Iterator[Metric]:
        total = CounterMetricFamily(
            "supervisor_config_refresh_total", "Config refreshes.", labels=["kind", "result"]
        )
        last = GaugeMetricFamily(
            "supervisor_config_refresh_last_success_timestamp_seconds",
            "Unix time of the last successful refresh of each kind.",
            labels=["kind"],
        )
        for kind, stats in self._m.refresh.items():
            total.add_metric([kind, "success"], stats.success)
            total.add_metric([kind, "error"], stats.error)
            if stats.last_success_unix_s is not None:
                last.add_metric([kind], stats.last_success_unix_s)
        yield total
        if last.samples:
            yield last


def _counter(name: str, documentation: str, value: float) -> Metric:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> Metric:
    return GaugeMetricFamily(name, documentation, value=value)


def _labelled_counter(
    name: str, documentation: str, label: str, values: dict[Any, int]
) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for label_value, count in values.items():
        family.add_metric([label_value], count)
    return family
