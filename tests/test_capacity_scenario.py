"""Scenarios: translation to load test options, validation, and one short real `record_run`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from capacity.bundle import load_bundle
from capacity.scenario import (
    RunScenario,
    ScenarioError,
    full_scenario,
    locust_step_arguments,
    quick_scenario,
    record_run,
    verification_scenario,
)

BUNDLE_FILES = (
    "metadata.json", "supervisor_series.csv", "stub_series.csv", "event_timings.csv",
    "execution_timings.csv", "configs.csv", "locust_stats.csv",
)


def test_step_arguments_for_linear_steps() -> None:
    arguments = locust_step_arguments([(30.0, 60.0), (30.0, 84.0), (30.0, 108.0)])

    assert arguments == [
        "--step-count", "3", "--step-duration-s", "30", "--step-start-rate-per-s", "60",
        "--step-rate-increment-per-s", "24",
    ]


def test_step_arguments_for_one_step() -> None:
    assert locust_step_arguments([(45.0, 70.0)]) == ["--duration-s", "45", "--rate-per-s", "70"]


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([], "empty"),
        ([(10.0, 50.0), (20.0, 60.0)], "durations"),
        ([(10.0, 50.0), (10.0, 60.0), (10.0, 80.0)], "increment"),
        ([(10.0, 0.0)], "above 0"),
    ],
)
def test_step_arguments_rejected(steps: list[tuple[float, float]], message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        locust_step_arguments(steps)


def test_scenarios_are_valid() -> None:
    quick = quick_scenario()
    full = full_scenario()

    assert quick.duration_s <= 180.0
    assert len(quick.profile_steps) >= 4
    assert max(rate for _, rate in quick.profile_steps) < 500.0
    assert full.duration_s > quick.duration_s


def test_verification_scenario_replaces_pool_and_profile() -> None:
    scenario = verification_scenario(quick_scenario(), pool_size=6, rate_per_s=90.0,
                                     duration_s=60.0)

    assert scenario.pool_size == 6
    assert scenario.profile_steps == ((60.0, 90.0),)
    assert scenario.stub_capacity == quick_scenario().stub_capacity


def test_invalid_scenario_rejected() -> None:
    with pytest.raises(ScenarioError, match="pool_size"):
        RunScenario(pool_size=0)


@pytest.mark.e2e
@pytest.mark.integration
@pytest.mark.slow
def test_record_run_writes_complete_bundle(
    tmp_path: Path, redis_server_url: str
) -> None:
    messages: list[str] = []

    bundle_dir = record_run(
        quick_scenario(), tmp_path / "bundle", redis_url=redis_server_url,
        profile_override=[(8.0, 30.0), (8.0, 50.0)], progress=messages.append,
    )

    for name in BUNDLE_FILES:
        assert (bundle_dir / name).is_file(), f"{name} missing from the bundle"
    bundle = load_bundle(bundle_dir)
    assert [step.rate_per_s for step in bundle.load_steps] == [30.0, 50.0]
    assert bundle.supervisor_settings["pool_size"] == quick_scenario().pool_size
    assert bundle.metadata["stub_settings"]["capacity"] == quick_scenario().stub_capacity
    assert len(bundle.event_timings) > 0.9 * (8 * 30 + 8 * 50) * 0.95
    assert len(bundle.execution_timings) > len(bundle.event_timings)
    cpu = bundle.metadata["cpu_seconds"]
    assert all(seconds > 0 for seconds in cpu["supervisors"].values())
    assert (bundle_dir / "work" / "configs.db").is_file()
    scenario = json.loads((bundle_dir / "work" / "scenario.json").read_text())
    assert scenario["profile_steps"] == [[8.0, 30.0], [8.0, 50.0]]
    assert messages[-1].startswith("Run bundle written to")
