"""Alert thresholds: the rendered rules file, and tuning on synthetic queue-depth series."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from capacity.alert_tuning import (
    SECONDS_PER_WEEK,
    AlertThresholds,
    AlertTuningError,
    OverloadRun,
    candidate_rules,
    default_thresholds,
    detection_times,
    false_alarms_per_week,
    promql_duration,
    propose_thresholds,
    render_rules,
    rules_document,
    rules_from_thresholds,
    thresholds_from_proposal,
    write_rules,
)
from simulation.alerts import QUEUE_DEPTH_ALERT, QUEUE_LAG_ALERT, AlertRule, default_rules

RULES_FILE = Path(__file__).resolve().parent.parent / "alerts" / "supervisor.rules.yml"
SCRAPE_S = 15.0
CAPACITY = 1000.0
BASE_DEPTH = 300.0


def depth_series(depth: np.ndarray, target: str = "model") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "timestamp": np.arange(len(depth)) * SCRAPE_S,
            "target": target,
            "queue_depth": depth,
            "queue_capacity": CAPACITY,
        }
    )


def ar1_depth(steps: int, rng: np.random.Generator) -> np.ndarray:
    """AR(1) depth around 300 (coefficient 0.9, stationary sd about 23): far below 700."""
    depth = np.empty(steps)
    depth[0] = BASE_DEPTH
    noise = rng.normal(0.0, 10.0, steps)
    for step in range(1, steps):
        depth[step] = BASE_DEPTH + 0.9 * (depth[step - 1] - BASE_DEPTH) + noise[step]
    return depth


def normal_load_series() -> pd.DataFrame:
    """One day of AR(1) depth with five excursions at known places.

    Three excursions at 850 last 8 scrapes (held for 105 s); two at 750 last 24 scrapes
    (held for 345 s).
    """
    depth = ar1_depth(5760, np.random.default_rng(11))
    for start in (500, 2000, 3500):
        depth[start : start + 8] = 850.0
    for start in (1200, 4200):
        depth[start : start + 24] = 750.0
    return depth_series(depth)


def overload_run(label: str, rise_per_scrape: float, start_step: int = 400) -> OverloadRun:
    """AR(1) depth until `start_step`, then a ramp of `rise_per_scrape` up to capacity."""
    depth = ar1_depth(start_step + 120, np.random.default_rng(12))
    ramp = BASE_DEPTH + rise_per_scrape * np.arange(1, 121)
    depth[start_step:] = np.minimum(ramp, CAPACITY)
    return OverloadRun(label, depth_series(depth), overload_start_s=start_step * SCRAPE_S)


def depth_candidates() -> list[AlertRule]:
    base = default_rules()[0]
    return candidate_rules(base, thresholds=[0.7, 0.8, 0.9], for_s_values=[60, 180, 300])


def test_committed_rules_file_is_rendered_default() -> None:
    committed = RULES_FILE.read_text(encoding="utf-8")

    assert committed == render_rules(default_thresholds())


def test_rendered_text_loads_as_document() -> None:
    tuned = AlertThresholds(
        queue_depth_ratio=0.75,
        queue_depth_for_s=90,
        lag_mean_s=2.5,
        lag_window_s=120,
        error_ratio=0.005,
        error_for_s=3600,
        full_refresh_interval_ms=60_000,
    )

    for thresholds in (default_thresholds(), tuned):
        assert yaml.safe_load(render_rules(thresholds)) == rules_document(thresholds)


def test_rendered_expressions_carry_thresholds() -> None:
    tuned = AlertThresholds(
        queue_depth_ratio=0.75,
        queue_depth_for_s=90,
        lag_mean_s=2.5,
        lag_window_s=120,
        full_refresh_interval_ms=60_000,
        full_refresh_stale_factor=3.0,
    )

    rules = {rule["alert"]: rule for rule in rules_document(tuned)["groups"][0]["rules"]}

    depth = rules["SupervisorQueueDepthHigh"]
    assert depth["expr"] == "supervisor_queue_depth / supervisor_queue_capacity > 0.75"
    assert depth["for"] == "1m30s"
    assert "75%" in depth["annotations"]["summary"]
    lag = rules["SupervisorQueueLagHigh"]
    assert "rate(supervisor_queue_lag_seconds_sum[2m])" in lag["expr"]
    assert lag["expr"].endswith("> 2.5")
    stale = rules["SupervisorFullRefreshStale"]
    assert stale["expr"].endswith("> 3 * 60")
    assert rules["SupervisorFullRefreshMissing"]["for"] == "3m"
    assert {rule["labels"]["severity"] for rule in rules.values()} == {"critical", "warning"}
    assert all(rule["annotations"]["runbook"] for rule in rules.values())


def test_write_rules_writes_rendered_text(tmp_path: Path) -> None:
    path = write_rules(tmp_path / "supervisor.rules.yml", default_thresholds())

    assert path.read_text(encoding="utf-8") == render_rules(default_thresholds())


def test_rules_from_thresholds_match_default_rules() -> None:
    assert rules_from_thresholds(default_thresholds()) == default_rules()


def test_promql_duration_formats() -> None:
    cases = {0: "0s", 15: "15s", 60: "1m", 90: "1m30s", 600: "10m", 3600: "1h", 5400: "1h30m",
             0.25: "250ms"}  # fmt: skip

    for seconds, expected in cases.items():
        assert promql_duration(seconds) == expected, seconds


def test_thresholds_reject_bad_values() -> None:
    with pytest.raises(AlertTuningError, match=r"queue_depth_ratio=1\.5"):
        AlertThresholds(queue_depth_ratio=1.5)
    with pytest.raises(AlertTuningError, match=r"lag_for_s=2\.5"):
        AlertThresholds(lag_for_s=2.5)  # type: ignore[arg-type]
    with pytest.raises(AlertTuningError, match="error_window_s=0"):
        AlertThresholds(error_window_s=0)
    with pytest.raises(AlertTuningError, match="full_refresh_interval_ms=0"):
        AlertThresholds(full_refresh_interval_ms=0)


def test_candidate_rules_grid() -> None:
    base = default_rules()[1]

    grid = candidate_rules(base, [4.0, 5.0], [0, 300], window_s_values=[60, 120, 300])

    assert len(grid) == 12
    assert {rule.name for rule in grid} == {QUEUE_LAG_ALERT}
    assert {(rule.threshold, rule.for_s, rule.window_s) for rule in grid} == {
        (t, f, w) for t in (4.0, 5.0) for f in (0, 300) for w in (60, 120, 300)
    }


def test_false_alarms_count_known_excursions() -> None:
    series = normal_load_series()

    table = false_alarms_per_week(series, depth_candidates())

    fired = {(row.threshold, row.for_s): row.fired for row in table.itertuples()}
    assert fired == {
        (0.7, 60): 5, (0.7, 180): 2, (0.7, 300): 2,
        (0.8, 60): 3, (0.8, 180): 0, (0.8, 300): 0,
        (0.9, 60): 0, (0.9, 180): 0, (0.9, 300): 0,
    }  # fmt: skip
    observed_s = 5759 * SCRAPE_S
    assert table["observed_s"].eq(observed_s).all()
    expected_per_week = table["fired"] * SECONDS_PER_WEEK / observed_s
    assert np.allclose(table["false_alarms_per_week"], expected_per_week)
    pending_only = table.set_index(["threshold", "for_s"])["pending_only"]
    assert pending_only[(0.7, 180)] == 3
    assert pending_only[(0.8, 300)] == 3


def test_detection_time_follows_ramp() -> None:
    runs = [overload_run("1.2x", 20.0), overload_run("1.5x", 50.0)]

    table = detection_times(runs, depth_candidates())

    for row in table.itertuples():
        run = next(r for r in runs if r.label == row.run)
        depth = run.series["queue_depth"].to_numpy()
        crossing = int(np.argmax(depth > row.threshold * CAPACITY))
        expected_s = crossing * SCRAPE_S + row.for_s - run.overload_start_s
        assert row.time_to_detect_s == pytest.approx(expected_s), row
    assert table["fired_before_start"].eq(0).all()
    slow = table.set_index(["run", "threshold", "for_s"])["time_to_detect_s"]
    # The ramp's scrape j (from 0) holds 300 + rise * (j + 1): 1.2x passes 800 at j = 25.
    assert slow[("1.2x", 0.8, 60)] == 25 * SCRAPE_S + 60
    assert slow[("1.5x", 0.9, 60)] == 12 * SCRAPE_S + 60


def test_detection_never_fired_is_nan() -> None:
    run = overload_run("1.2x", 20.0)
    unreachable = candidate_rules(default_rules()[0], [1.0], [60])

    table = detection_times([run], unreachable)

    assert math.isnan(table["fired_at"].iloc[0])
    assert math.isnan(table["time_to_detect_s"].iloc[0])


def test_propose_picks_fastest_without_false_alarms() -> None:
    candidates = depth_candidates()
    false_alarms = false_alarms_per_week(normal_load_series(), candidates)
    detections = detection_times([overload_run("1.2x", 20.0), overload_run("1.5x", 50.0)],
                                 candidates)  # fmt: skip

    strict = propose_thresholds(false_alarms, detections, max_false_alarms_per_week=0.0)
    lenient = propose_thresholds(false_alarms, detections, max_false_alarms_per_week=25.0)

    assert len(strict) == 1
    chosen = strict.iloc[0]
    assert chosen["name"] == QUEUE_DEPTH_ALERT
    assert (chosen["threshold"], chosen["for_s"]) == (0.9, 60)
    assert chosen["status"] == "proposed"
    assert chosen["worst_time_to_detect_s"] == 30 * SCRAPE_S + 60
    assert chosen["runs_detected"] == chosen["runs"] == 2
    # 0.8 with for 60 s alarms 3 times a day (21 a week) but detects sooner.
    assert (lenient.iloc[0]["threshold"], lenient.iloc[0]["for_s"]) == (0.8, 60)
    assert lenient.iloc[0]["worst_time_to_detect_s"] == 25 * SCRAPE_S + 60


def test_propose_reports_unmet_requirements() -> None:
    noisy = candidate_rules(default_rules()[0], [0.7], [60])
    blind = candidate_rules(default_rules()[0], [1.0], [60])
    normal = normal_load_series()
    runs = [overload_run("1.5x", 50.0)]

    noisy_pick = propose_thresholds(
        false_alarms_per_week(normal, noisy), detection_times(runs, noisy)
    )
    blind_pick = propose_thresholds(
        false_alarms_per_week(normal, blind), detection_times(runs, blind)
    )

    assert noisy_pick.iloc[0]["status"] == "exceeds false alarm target"
    assert blind_pick.iloc[0]["status"] == "misses an overload run"
    assert blind_pick.iloc[0]["runs_detected"] == 0


def test_proposal_becomes_thresholds() -> None:
    candidates = depth_candidates()
    proposal = propose_thresholds(
        false_alarms_per_week(normal_load_series(), candidates),
        detection_times([overload_run("1.5x", 50.0)], candidates),
    )

    thresholds = thresholds_from_proposal(proposal)

    assert thresholds.queue_depth_ratio == 0.9
    assert thresholds.queue_depth_for_s == 60
    assert thresholds.lag_mean_s == default_thresholds().lag_mean_s
    assert "supervisor_queue_capacity > 0.9" in render_rules(thresholds)


def test_propose_rejects_unrelated_tables() -> None:
    normal = normal_load_series()
    runs = [overload_run("1.5x", 50.0)]
    depth = candidate_rules(default_rules()[0], [0.8], [60])
    other = candidate_rules(default_rules()[0], [0.9], [60])

    with pytest.raises(AlertTuningError, match="share no candidate"):
        propose_thresholds(false_alarms_per_week(normal, depth), detection_times(runs, other))
