"""Rows of the sampled series built from `/stats` snapshots, as the run bundle stores them.

`supervisor_row` turns one supervisor `/stats` snapshot (and the previous one of the same
target) into a `supervisor_series.csv` row. Cumulative columns are copied; the interval means
are the change of a histogram's sum over the change of its count since the previous scrape, as
Prometheus' `rate(x_sum) / rate(x_count)` would give. The interval p95s come from the
snapshot's `window`, which the scraper requests with `window_s` equal to the scrape interval.
A column with no events in its interval is left empty, not 0, so a mean is never invented.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from simulation.monitor import SERIES_COLUMNS

# The column set is one contract shared with the model's series (docs/interfaces.md).
SUPERVISOR_COLUMNS = SERIES_COLUMNS

STUB_COLUMNS = (
    "timestamp",
    "t_s",
    "stub_url",
    "executions_total",
    "unique_keys",
    "duplicate_keys",
    "in_flight",
    "max_in_flight",
    "rejected_429",
    "errors_500",
    "cpu_seconds",
)

EXECUTION_OUTCOMES = ("success", "error", "timeout", "rejected")

Snapshot = Mapping[str, Any]
Row = dict[str, object]


def _section(snapshot: Snapshot, name: str) -> Mapping[str, Any]:
    value = snapshot.get(name)
    return value if isinstance(value, Mapping) else {}


def interval_mean(
    previous_sum: float | None, previous_count: int | None, current_sum: float, current_count: int
) -> float | None:
    """Return Δsum / Δcount since the previous scrape, or None when no event finished.

    Without a previous scrape, the interval starts at the counters' zero.
    """
    delta_count = current_count - (previous_count or 0)
    if delta_count <= 0:
        return None
    return (current_sum - (previous_sum or 0.0)) / delta_count


def executions_total(snapshot: Snapshot) -> tuple[int, int]:
    """Return (all execution outcomes, outcomes other than success) from a snapshot."""
    executions = _section(snapshot, "executions")
    total = sum(int(executions.get(outcome, 0)) for outcome in EXECUTION_OUTCOMES)
    return total, total - int(executions.get("success", 0))


def _histogram(snapshot: Snapshot, name: str) -> tuple[float, int]:
    section = _section(snapshot, name)
    return float(section.get("sum", 0.0)), int(section.get("count", 0))


def _window_value(snapshot: Snapshot, key: str) -> float | None:
    window = _section(snapshot, "window")
    if int(window.get("events", 0)) <= 0 or window.get(key) is None:
        return None
    return float(window[key])


def _last_success(snapshot: Snapshot, kind: str) -> object:
    return _refresh_value(snapshot, kind, "last_success_unix_s")


def _refresh_value(snapshot: Snapshot, kind: str, key: str) -> object:
    refresh = _section(snapshot, "refresh")
    section = refresh.get(kind)
    if not isinstance(section, Mapping):
        return None
    return section.get(key)


def supervisor_row(
    *,
    timestamp: float,
    t_s: float,
    target: str,
    snapshot: Snapshot,
    previous: Snapshot | None,
) -> Row:
    """Build one `supervisor_series.csv` row; `previous` is the same target's last snapshot."""
    events = _section(snapshot, "events")
    queue = _section(snapshot, "queue")
    workers = _section(snapshot, "workers")
    dedup = _section(snapshot, "dedup")
    lag_sum, lag_count = _histogram(snapshot, "lag_s")
    e2e_sum, e2e_count = _histogram(snapshot, "end_to_end_latency_s")
    previous_lag = _histogram(previous, "lag_s") if previous is not None else (None, None)
    previous_e2e = (
        _histogram(previous, "end_to_end_latency_s") if previous is not None else (None, None)
    )
    execution_count, execution_errors = executions_total(snapshot)

    return {
        "timestamp": round(timestamp, 3),
        "t_s": round(t_s, 3),
        "target": target,
        "queue_depth": queue.get("depth"),
        "queue_capacity": queue.get("capacity"),
        "workers_busy": workers.get("busy"),
        "pool_size": workers.get("pool_size"),
        "received_total": events.get("received"),
        "processed_total": events.get("processed"),
        "failed_total": events.get("failed"),
        "dropped_total": events.get("dropped"),
        "duplicate_total": events.get("duplicate"),
        "not_owned_total": events.get("not_owned"),
        "rejected_total": events.get("rejected"),
        "in_flight": events.get("in_flight"),
        "lag_sum_s": lag_sum,
        "lag_count": lag_count,
        "e2e_sum_s": e2e_sum,
        "e2e_count": e2e_count,
        "lag_mean_s": interval_mean(previous_lag[0], previous_lag[1], lag_sum, lag_count),
        "lag_p95_s": _window_value(snapshot, "lag_p95_s"),
        "e2e_mean_s": interval_mean(previous_e2e[0], previous_e2e[1], e2e_sum, e2e_count),
        "e2e_p95_s": _window_value(snapshot, "e2e_p95_s"),
        "dedup_hit_total": dedup.get("hit"),
        "dedup_miss_total": dedup.get("miss"),
        "dedup_error_total": dedup.get("error"),
        "executions_total": execution_count,
        "execution_errors_total": execution_errors,
        "full_refresh_last_success_unix_s": _last_success(snapshot, "full"),
        "incremental_refresh_last_success_unix_s": _last_success(snapshot, "incremental"),
        "full_refresh_last_duration_s": _refresh_value(snapshot, "full", "last_duration_s"),
        "incremental_refresh_last_duration_s": _refresh_value(
            snapshot, "incremental", "last_duration_s"
        ),
        "cpu_seconds": _section(snapshot, "process").get("cpu_seconds"),
    }


def stub_row(*, timestamp: float, t_s: float, stub_url: str, snapshot: Snapshot) -> Row:
    """Build one `stub_series.csv` row from the execution stub's `/stats`."""
    row: Row = {"timestamp": round(timestamp, 3), "t_s": round(t_s, 3), "stub_url": stub_url}
    for column in STUB_COLUMNS[3:]:
        row[column] = snapshot.get(column)
    return row


def counter_delta(first: Snapshot, last: Snapshot, section: str, key: str) -> int:
    """Return how much a `/stats` counter grew between two snapshots of one target."""
    before = int(_section(first, section).get(key, 0) or 0)
    after = int(_section(last, section).get(key, 0) or 0)
    return after - before
