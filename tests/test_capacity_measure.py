"""Per-step measurement on hand-made event times and a hand-made bundle with known answers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from capacity.bundle import RunBundle
from capacity.measure import (
    EventTimes,
    default_settle_s,
    mean_queue_depth,
    measure_steps,
    window_metrics,
)

NAN = math.nan


def _times(rows: list[tuple[float, float, float, float, bool]]) -> EventTimes:
    received, enqueued, started, finished, dropped = (np.array(column) for column in zip(*rows,
                                                                                       strict=True))
    count = len(rows)
    return EventTimes(
        received_s=received.astype(float),
        enqueued_s=enqueued.astype(float),
        started_s=started.astype(float),
        finished_s=finished.astype(float),
        dropped=dropped.astype(bool),
        executions=np.full(count, 2.0),
        execution_errors=np.array([1.0] + [0.0] * (count - 1)),
    )


def test_queue_depth_is_time_average() -> None:
    # Event A waits from 1 to 3, event B from 2 to 6; window [0, 4) holds 2 + 2 = 4 event-seconds.
    times = _times([(1, 1, 3, 4, False), (2, 2, 6, 7, False), (2, 2, NAN, NAN, True)])

    depth = mean_queue_depth(times, 0.0, 4.0)

    assert depth == pytest.approx(1.0)


def test_waiting_event_counts_until_window_end() -> None:
    times = _times([(1, 1, NAN, NAN, False)])

    assert mean_queue_depth(times, 0.0, 5.0) == pytest.approx(4.0 / 5.0)


def test_window_metrics_known_answers() -> None:
    times = _times([
        (0.0, 0.0, 0.1, 0.3, False),
        (1.0, 1.0, 1.3, 1.4, False),
        (2.0, 2.0, NAN, NAN, True),
        (3.0, 3.0, 3.5, 3.9, False),
        (5.0, 5.0, 5.0, 5.2, False),  # outside [0, 4)
    ])

    metrics = window_metrics(times, 0.0, 4.0)

    assert metrics["events"] == 4
    assert metrics["offered_rate_per_s"] == pytest.approx(1.0)
    assert metrics["drop_rate"] == pytest.approx(0.25)
    assert metrics["mean_lag_s"] == pytest.approx((0.1 + 0.3 + 0.5) / 3)
    assert metrics["p95_lag_s"] == pytest.approx(np.percentile([0.1, 0.3, 0.5], 95))
    assert metrics["p95_e2e_latency_s"] == pytest.approx(np.percentile([0.3, 0.4, 0.9], 95))
    assert metrics["throughput_per_s"] == pytest.approx(3 / 4)
    assert metrics["mean_queue_depth"] == pytest.approx((0.1 + 0.3 + 0.5) / 4)
    assert metrics["execution_error_rate"] == pytest.approx(1 / 6)


def test_empty_window_rejected() -> None:
    times = _times([(0.0, 0.0, 0.1, 0.2, False)])

    with pytest.raises(ValueError, match="empty"):
        window_metrics(times, 2.0, 2.0)


def test_settle_time_rule() -> None:
    assert default_settle_s(10.0) == pytest.approx(2.0)
    assert default_settle_s(30.0) == pytest.approx(5.0)
    assert default_settle_s(120.0) == pytest.approx(5.0)


def _bundle(tmp_path: Path) -> RunBundle:
    """Two 10 s steps: one event per second in step 0 (lag 0.2 s), two per second in step 1."""
    rows = []
    for second in range(10):
        rows.append((f"a{second}", 100.0 + second, 0.2))
    for second in range(10):
        for half in (0.0, 0.5):
            rows.append((f"b{second}{half}", 110.0 + second + half, 0.4))
    events = pd.DataFrame({
        "event_id": [row[0] for row in rows],
        "channel": "c0",
        "outcome": "processed",
        "received_unix_s": [row[1] for row in rows],
        "enqueued_unix_s": [row[1] for row in rows],
        "started_unix_s": [row[1] + row[2] for row in rows],
        "finished_unix_s": [row[1] + row[2] + 0.1 for row in rows],
    })
    series = pd.DataFrame({"timestamp": np.arange(100.0, 121.0), "queue_depth": 1.0})
    metadata = {"load_steps": [
        {"step": 0, "start_unix_s": 100.0, "end_unix_s": 110.0, "rate_per_s": 1.0},
        {"step": 1, "start_unix_s": 110.0, "end_unix_s": 120.0, "rate_per_s": 2.0},
    ]}
    calls = pd.DataFrame(columns=["event_id", "config_id", "started_unix_s", "duration_s",
                                  "outcome"])
    return RunBundle(tmp_path, metadata, series, events, calls, pd.DataFrame())


def test_measure_steps_on_handmade_bundle(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)

    frame = measure_steps(bundle, settle_s=2.0)

    assert list(frame["load_step"]) == [0, 1]
    assert list(frame["start_unix_s"]) == [102.0, 112.0]
    assert frame.loc[0, "offered_rate_per_s"] == pytest.approx(1.0)
    assert frame.loc[1, "offered_rate_per_s"] == pytest.approx(2.0)
    assert frame.loc[0, "mean_lag_s"] == pytest.approx(0.2)
    assert frame.loc[1, "mean_lag_s"] == pytest.approx(0.4)
    assert frame.loc[1, "p95_e2e_latency_s"] == pytest.approx(0.5)
    assert frame.loc[1, "mean_queue_depth"] == pytest.approx(0.8)
    assert frame.loc[0, "drop_rate"] == 0.0
    assert frame.loc[1, "series_mean_queue_depth"] == pytest.approx(1.0)


def test_settle_longer_than_step_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="settle_s"):
        measure_steps(_bundle(tmp_path), settle_s=10.0)
