"""Alert plan on short simulated runs: thresholds, false alarms and detection times."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from capacity.alert_plan import (
    AlertPlan,
    AlertPlanError,
    check_series_columns,
    default_candidates,
    plan_alerts,
    plot_detection,
    poisson_upper95,
)
from capacity.alert_tuning import SECONDS_PER_WEEK, AlertThresholds
from simulation.alerts import QUEUE_DEPTH_ALERT, QUEUE_LAG_ALERT
from simulation.config import ExecutionConfig, ModelConfig
from simulation.model import simulate

POOL_SIZE = 6
CAPACITY_RATE_PER_S = 60.0  # six workers at a mean service time of 100 ms


def base_config() -> ModelConfig:
    execution = ExecutionConfig(latency="exponential", latency_mean_ms=100.0)
    return ModelConfig(execution=execution, queue_max=500)


@pytest.fixture(scope="module")
def plan() -> AlertPlan:
    return plan_alerts(
        base_config(),
        POOL_SIZE,
        capacity_rate_per_s=CAPACITY_RATE_PER_S,
        normal_rate_per_s=30.0,
        normal_duration_s=3600.0,
        replications=2,
        seed=3,
        overload_start_s=300.0,
        overload_duration_s=600.0,
    )


def test_plan_proposes_depth_and_lag(plan: AlertPlan) -> None:
    assert isinstance(plan.thresholds, AlertThresholds)
    proposal = plan.proposal.set_index("name")

    for name in (QUEUE_DEPTH_ALERT, QUEUE_LAG_ALERT):
        assert proposal.loc[name, "status"] == "proposed"
        assert proposal.loc[name, "runs_detected"] == 4
        # Overload at 1.2x and 1.5x capacity fills a 500-event queue within minutes.
        assert 0 <= proposal.loc[name, "worst_time_to_detect_s"] <= 600
    depth = proposal.loc[QUEUE_DEPTH_ALERT]
    assert plan.thresholds.queue_depth_ratio == depth["threshold"]
    assert plan.thresholds.queue_depth_for_s == depth["for_s"]


def test_plan_counts_false_alarms(plan: AlertPlan) -> None:
    false_alarms = plan.false_alarms

    assert plan.observed_normal_s == pytest.approx(2 * 3600.0, rel=0.01)
    assert len(false_alarms) == len(default_candidates())
    assert (false_alarms["observed_s"] == plan.observed_normal_s).all()
    expected = false_alarms["fired"] * SECONDS_PER_WEEK / false_alarms["observed_s"]
    assert (false_alarms["false_alarms_per_week"] == expected).all()
    assert (
        false_alarms["false_alarms_per_week_upper95"] > false_alarms["false_alarms_per_week"]
    ).all()


def test_plan_detection_per_factor(plan: AlertPlan) -> None:
    detection = plan.detection

    assert sorted(detection["run"].unique()) == ["1.2x#0", "1.2x#1", "1.5x#0", "1.5x#1"]
    depth = detection[detection["name"] == QUEUE_DEPTH_ALERT]
    fast = depth.groupby("run")["time_to_detect_s"].min()
    # A larger overload fills the queue sooner.
    assert fast["1.5x#0"] <= fast["1.2x#0"]
    assert [run.label for run in plan.overload_runs] == ["1.2x#0", "1.5x#0"]


def test_plan_as_dict_is_plain(plan: AlertPlan) -> None:
    data = plan.as_dict()

    assert data["thresholds"]["queue_depth_ratio"] == plan.thresholds.queue_depth_ratio
    assert all(
        value is None or not (isinstance(value, float) and math.isinf(value))
        for row in data["proposal"]
        for value in row.values()
    )


def test_model_series_has_evaluator_columns() -> None:
    series = simulate(base_config().with_changes(duration_s=30.0)).series()

    check_series_columns(series, default_candidates())
    with pytest.raises(AlertPlanError, match="lag_sum_s"):
        check_series_columns(series.drop(columns="lag_sum_s"), default_candidates())


def test_poisson_upper_bound() -> None:
    assert poisson_upper95(0) == pytest.approx(-math.log(0.05))
    assert poisson_upper95(3) > poisson_upper95(2) > 3


def test_plan_rejects_normal_above_capacity() -> None:
    with pytest.raises(AlertPlanError, match="normal_rate_per_s=70"):
        plan_alerts(
            base_config(),
            POOL_SIZE,
            capacity_rate_per_s=CAPACITY_RATE_PER_S,
            normal_rate_per_s=70.0,
            normal_duration_s=600.0,
        )


def test_plot_detection_writes_png(plan: AlertPlan, tmp_path: Path) -> None:
    path = plot_detection(plan, tmp_path / "detection.png")

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
