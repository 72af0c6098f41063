"""Report folder writing from hand-made results: JSON keys, CSV columns, README, verification."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from capacity.alert_tuning import AlertThresholds
from capacity.report import (
    COMPARISON_COLUMNS,
    PlanInputs,
    Recommendation,
    ReportContents,
    ReportError,
    Verification,
    skipped_verification,
    to_plain,
    write_comparison,
    write_report,
)


def _inputs(**changes: Any) -> PlanInputs:
    values: dict[str, Any] = {
        "peak_rate_per_s": 100.0,
        "peak_rate_source": "highest measured step served without drops, step 2",
        "headroom": 1.3,
        "target_latency_ms": 250.0,
        "max_drop_rate": 0.001,
        "max_error_rate": 0.02,
        "burst_rate_per_s": 200.0,
        "burst_duration_s": 20.0,
        "shard_count": 2,
        "quick": True,
        "bundle_dir": "/data/bundle",
        "recorded_here": True,
        "dedup_backend": "memory",
        "database_backend": "sqlite",
    }
    values.update(changes)
    return PlanInputs(**values)


def _recommendation(**changes: Any) -> Recommendation:
    values: dict[str, Any] = {
        "inputs": _inputs(),
        "pool_size": 7,
        "pool_reason": "smallest pool meeting every target",
        "pool_uncertainty": "6 misses the latency target (paired 95% CI)",
        "predicted_at_peak": {"p95_e2e_latency_s": 0.12, "p95_e2e_latency_s_ci95": 0.01},
        "queue_max_size": 450,
        "queue_reason": "largest burst depth 300 times margin 1.5",
        "queue_uncertainty": {"max_depth_mean": 280.0, "max_depth_ci95": 15.0},
        "thresholds": AlertThresholds(queue_depth_ratio=0.7, lag_mean_s=2.0),
        "refresh_interval_ms": 5000.0,
        "full_refresh_interval_ms": 60000.0,
        "database_load": {"queries_per_s": {"value": 0.5, "low": 0.4, "high": 0.6}},
        "redis_memory": {"memory_mib": {"value": 12.0, "low": 10.0, "high": 15.0}},
        "accuracy": {"median_relative_error": 0.12, "within_target": math.nan},
        "notes": ("latency fitted on steps 0 to 2",),
    }
    values.update(changes)
    return Recommendation(**values)


def _comparison() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "predicted": [0.10, 0.30],
            "metric": ["p95_e2e_latency_s", "p95_e2e_latency_s"],
            "load_step": [0, 1],
            "measured": [0.11, 0.27],
            "relative_error": [0.1, -0.1],
            "within_target": [True, True],
        }
    )


def _verification(**changes: Any) -> Verification:
    values: dict[str, Any] = {
        "pool_size": 7,
        "rate_per_s": 100.0,
        "duration_s": 45.0,
        "bundle_dir": "/data/verification",
        "measured_p95_e2e_latency_s": 0.11,
        "predicted_p95_e2e_latency_s": 0.10,
        "predicted_p95_e2e_latency_ci95_s": 0.01,
        "measured_drop_rate": 0.0,
        "predicted_drop_rate": 0.0,
        "predicted_drop_rate_ci95": 0.0,
        "target_latency_ms": 250.0,
        "max_drop_rate": 0.001,
    }
    values.update(changes)
    return Verification(**values)


def _write(tmp_path: Path, verification: dict[str, Any] | None = None) -> Path:
    contents = ReportContents(
        recommendation=_recommendation(),
        comparison=_comparison(),
        verification=verification or _verification().as_dict(),
        figures=[tmp_path / "figures" / "pool_sweep.png"],
        notebooks_html=[tmp_path / "notebooks" / "capacity_sweep.html"],
        stage_durations_s={"Calibrate the model": 3.25},
    )
    write_report(tmp_path, contents)
    return tmp_path


def test_recommendation_json_has_settings(tmp_path: Path) -> None:
    document = json.loads((_write(tmp_path) / "recommendation.json").read_text())

    assert document["SUPERVISOR_WORKER_POOL_SIZE"] == 7
    assert document["SUPERVISOR_QUEUE_MAX_SIZE"] == 450
    assert document["SUPERVISOR_CONFIG_REFRESH_MS"] == 5000
    assert document["SUPERVISOR_CONFIG_FULL_REFRESH_MS"] == 60000
    assert (
        document["alert_thresholds"]
        == AlertThresholds(queue_depth_ratio=0.7, lag_mean_s=2.0).as_dict()
    )


def test_recommendation_json_has_evidence(tmp_path: Path) -> None:
    document = json.loads((_write(tmp_path) / "recommendation.json").read_text())

    assert document["pool"]["uncertainty"] == "6 misses the latency target (paired 95% CI)"
    assert document["queue"]["uncertainty"]["max_depth_ci95"] == 15.0
    assert document["refresh"]["database_load"]["queries_per_s"]["high"] == 0.6
    assert document["redis_memory"]["memory_mib"]["low"] == 10.0
    assert document["inputs"]["peak_rate_per_s"] == 100.0
    assert document["inputs"]["headroom"] == 1.3
    assert document["inputs"]["design_rate_per_s"] == pytest.approx(130.0)
    assert document["inputs"]["target_latency_ms"] == 250.0
    assert document["accuracy"]["median_relative_error"] == 0.12


def test_recommendation_json_turns_nan_into_null(tmp_path: Path) -> None:
    text = (_write(tmp_path) / "recommendation.json").read_text()

    assert "NaN" not in text
    assert json.loads(text)["accuracy"]["within_target"] is None


def test_comparison_csv_fixed_columns_first(tmp_path: Path) -> None:
    frame = pd.read_csv(_write(tmp_path) / "comparison.csv")

    assert tuple(frame.columns[: len(COMPARISON_COLUMNS)]) == COMPARISON_COLUMNS
    assert "within_target" in frame.columns
    assert frame["measured"].tolist() == [0.11, 0.27]
    assert frame["load_step"].tolist() == [0, 1]


def test_comparison_without_column_rejected(tmp_path: Path) -> None:
    table = _comparison().drop(columns=["relative_error"])

    with pytest.raises(ReportError, match="relative_error"):
        write_comparison(tmp_path / "comparison.csv", table)
    assert not (tmp_path / "comparison.csv").exists()


def test_readme_states_decision_and_caveats(tmp_path: Path) -> None:
    readme = (_write(tmp_path) / "README.md").read_text()

    assert "`SUPERVISOR_WORKER_POOL_SIZE=7`" in readme
    assert "`SUPERVISOR_QUEUE_MAX_SIZE=450`" in readme
    assert "130 events/s" in readme
    assert "## Evidence" in readme
    assert "## Caveats" in readme
    assert "quick plan" in readme
    assert "Dedup ran in process" in readme
    assert "latency fitted on steps 0 to 2" in readme
    assert "`figures/pool_sweep.png`" in readme
    assert "`notebooks/capacity_sweep.html`" in readme
    assert "Verdict: **confirmed**" in readme


def test_readme_notes_skipped_verification(tmp_path: Path) -> None:
    reason = "the plan read a bundle; pass --verify to run one here"

    readme = (_write(tmp_path, skipped_verification(reason)) / "README.md").read_text()

    assert f"Not run: {reason}." in readme
    assert "No verification run confirmed the prediction" in readme
    document = json.loads((tmp_path / "verification.json").read_text())
    assert document == {"status": "skipped", "reason": reason}


def test_verification_confirmed_within_tolerance() -> None:
    result = _verification(measured_p95_e2e_latency_s=0.125)

    assert result.latency_relative_error == pytest.approx(0.25)
    assert result.latency_agrees
    assert result.drop_rate_agrees
    assert result.verdict == "confirmed"


def test_verification_prediction_off() -> None:
    result = _verification(measured_p95_e2e_latency_s=0.2)

    assert not result.latency_agrees
    assert result.meets_targets
    assert result.verdict == "prediction off"


def test_verification_targets_missed() -> None:
    result = _verification(measured_drop_rate=0.05, predicted_drop_rate=0.05)

    assert result.drop_rate_agrees
    assert not result.meets_targets
    assert result.verdict == "targets missed"


def test_verification_wide_ci_agrees() -> None:
    result = _verification(
        measured_p95_e2e_latency_s=0.2,
        predicted_p95_e2e_latency_s=0.1,
        predicted_p95_e2e_latency_ci95_s=0.15,
    )

    assert result.latency_agrees


def test_verification_notes_in_readme(tmp_path: Path) -> None:
    note = "the verification run used a fresh SQLite config database"
    verification = _verification(notes=(note,)).as_dict()

    readme = (_write(tmp_path, verification) / "README.md").read_text()

    assert verification["notes"] == [note]
    assert f"Note: {note}." in readme


def test_verification_json_fields() -> None:
    document = _verification(predicted_drop_rate_ci95=math.nan).as_dict()

    assert document["status"] == "ran"
    assert document["verdict"] == "confirmed"
    assert document["predicted_drop_rate_ci95"] is None
    assert document["measured_p95_e2e_latency_s"] == 0.11
    json.dumps(document, allow_nan=False)


def test_to_plain_converts_frames_and_numpy() -> None:
    import numpy as np

    frame = pd.DataFrame({"a": [np.int64(1)], "b": [np.float64(math.inf)]})

    assert to_plain(frame) == [{"a": 1, "b": None}]
    assert to_plain({"path": Path("/x"), "values": (np.float32(0.5),)}) == {
        "path": "/x",
        "values": [0.5],
    }


@pytest.mark.parametrize(("passed", "advised"), [(False, True), (True, False)])
def test_accuracy_miss_gets_advice(passed: bool, advised: bool) -> None:
    from capacity.report import _accuracy_lines

    accuracy = {
        "passed": passed,
        "judged_steps": [2, 4],
        "calibration_steps": [0, 3],
        "metrics": {"drop_rate": {"within_target": passed, "max_abs_error": 0.03}},
    }

    text = "\n".join(_accuracy_lines(accuracy))

    assert ("What to do:" in text) is advised
    assert ("NOT within" in text) is not passed
    assert "| drop_rate |" in text
