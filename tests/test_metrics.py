"""Event accounting and the Prometheus exposition of one instance."""

from __future__ import annotations

import random

from prometheus_client import generate_latest

from supervisor.clock import FakeClock
from supervisor.metrics import Metrics, percentile

FIXED_NAMES = (
    "supervisor_events_received_total",
    "supervisor_events_total",
    "supervisor_events_in_flight",
    "supervisor_queue_depth",
    "supervisor_queue_capacity",
    "supervisor_queue_oldest_age_seconds",
    "supervisor_queue_lag_seconds_bucket",
    "supervisor_end_to_end_latency_seconds_bucket",
    "supervisor_dedup_total",
    "supervisor_executions_total",
    "supervisor_worker_pool_size",
    "supervisor_workers_busy",
    "supervisor_configs_cached",
    "supervisor_config_refresh_total",
    "supervisor_event_age_seconds_bucket",
)


def identity_holds(metrics: Metrics) -> bool:
    events = metrics.events_snapshot()
    settled = sum(events[name] for name in metrics.outcomes)
    return events["received"] == settled + events["in_flight"]


def test_identity_holds_after_every_transition() -> None:
    metrics = Metrics(FakeClock(), pool_size=2, queue_capacity=10)
    rng = random.Random(7)
    transitions = [
        lambda: metrics.count_rejected(),
        lambda: metrics.count_not_owned(),
        lambda: metrics.count_duplicate(2),
        lambda: metrics.count_dropped_on_arrival(),
        lambda: metrics.count_enqueued(3),
    ]

    for _ in range(500):
        rng.choice(transitions)()
        if metrics.in_flight and rng.random() < 0.4:
            metrics.count_finished(rng.random() < 0.8, e2e_s=0.01, lag_s=0.001)
        if metrics.in_flight and rng.random() < 0.1:
            metrics.count_dropped_in_flight()
        assert identity_holds(metrics)


def test_outcomes_are_counted_by_name() -> None:
    metrics = Metrics(FakeClock(), pool_size=1, queue_capacity=1)

    metrics.count_enqueued(2)
    metrics.count_finished(True, e2e_s=0.02, lag_s=0.001)
    metrics.count_finished(False, e2e_s=0.04, lag_s=0.003)
    metrics.count_rejected()

    events = metrics.events_snapshot()
    assert events["received"] == 3
    assert events["processed"] == 1
    assert events["failed"] == 1
    assert events["rejected"] == 1
    assert events["in_flight"] == 0
    assert metrics.e2e_count == 2


def test_exposition_has_every_fixed_name() -> None:
    metrics = Metrics(FakeClock(), pool_size=4, queue_capacity=100)
    metrics.observe_event_age(0.2)

    text = generate_latest(metrics.registry).decode()

    for name in FIXED_NAMES:
        assert f"\n{name}" in text, name
    assert 'supervisor_events_total{outcome="not_owned"} 0.0' in text
    assert 'supervisor_executions_total{outcome="timeout"} 0.0' in text
    assert "supervisor_worker_pool_size 4.0" in text


def test_last_refresh_success_absent_until_first_success() -> None:
    metrics = Metrics(FakeClock(), pool_size=1, queue_capacity=1)
    name = "supervisor_config_refresh_last_success_timestamp_seconds"

    metrics.on_refresh("full", "error", 0, 0.5, 1000.0)
    assert name not in generate_latest(metrics.registry).decode()

    metrics.on_refresh("full", "success", 12, 0.2, 1001.0)
    text = generate_latest(metrics.registry).decode()
    assert f'{name}{{kind="full"}} 1001.0' in text
    assert f'{name}{{kind="incremental"}}' not in text
    assert 'supervisor_config_refresh_total{kind="full",result="error"} 1.0' in text
    assert metrics.refresh["full"].last_rows == 12


async def test_window_covers_only_recent_events() -> None:
    clock = FakeClock()
    metrics = Metrics(clock, pool_size=1, queue_capacity=10)
    metrics.count_enqueued(3)
    metrics.count_finished(True, e2e_s=5.0, lag_s=1.0)
    await clock.advance(20.0)

    metrics.count_finished(True, e2e_s=0.1, lag_s=0.01)
    metrics.count_finished(True, e2e_s=0.3, lag_s=0.03)
    window = metrics.window(10.0)

    assert window["events"] == 2
    assert window["e2e_mean_s"] == 0.2
    assert window["e2e_p99_s"] == 0.3
    assert window["lag_p95_s"] == 0.03


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]

    assert percentile(values, 0.95) == 95.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([], 0.5) == 0.0


def test_stats_has_interface_sections() -> None:
    metrics = Metrics(FakeClock(), pool_size=3, queue_capacity=9)

    stats = metrics.stats(10.0)

    assert set(stats) == {
        "events", "queue", "workers", "lag_s", "end_to_end_latency_s", "window", "dedup",
        "executions", "configs", "refresh", "process",
    }  # fmt: skip
    assert stats["workers"] == {"pool_size": 3, "busy": 0}
    assert stats["queue"]["capacity"] == 9
    assert set(stats["executions"]) == {"success", "error", "timeout", "rejected", "attempts"}
    assert stats["process"]["rss_bytes"] > 0
