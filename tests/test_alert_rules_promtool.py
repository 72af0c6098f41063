"""The committed alert rules under promtool, and agreement between promtool and the evaluator.

promtool comes from Debian's `prometheus` package. Without it these tests skip, except under
`SUPERVISOR_REQUIRE_SERVICES=1`, where they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from capacity.alert_tuning import default_thresholds, rules_from_thresholds
from simulation.alerts import (
    QUEUE_DEPTH_ALERT,
    QUEUE_LAG_ALERT,
    AlertEvaluation,
    AlertRule,
    evaluate_rules,
)

ALERTS_DIR = Path(__file__).resolve().parent.parent / "alerts"
RULES_FILE = ALERTS_DIR / "supervisor.rules.yml"
RULES_TEST_FILE = ALERTS_DIR / "supervisor.rules.test.yml"
SCRAPE_S = 15
JOB = "supervisor"

# Series columns and the Prometheus metric each one is scraped from.
METRIC_OF_COLUMN = {
    "queue_depth": "supervisor_queue_depth",
    "queue_capacity": "supervisor_queue_capacity",
    "lag_sum_s": "supervisor_queue_lag_seconds_sum",
    "lag_count": "supervisor_queue_lag_seconds_count",
}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = (
            "promtool is not installed; install Debian's prometheus package "
            "(apt-get install prometheus) or unset SUPERVISOR_REQUIRE_SERVICES"
        )
        if os.environ.get("SUPERVISOR_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def run_promtool(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_rules_file_passes_check(promtool: str) -> None:
    result = run_promtool(promtool, "check", "rules", str(RULES_FILE), cwd=ALERTS_DIR)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 rules found" in result.stdout


def test_rules_unit_tests_pass(promtool: str) -> None:
    result = run_promtool(promtool, "test", "rules", RULES_TEST_FILE.name, cwd=ALERTS_DIR)

    assert result.returncode == 0, result.stdout + result.stderr


def test_broken_expectation_fails(promtool: str, tmp_path: Path) -> None:
    # Guards the two tests above: a wrong firing time must make promtool fail.
    document = yaml.safe_load(RULES_TEST_FILE.read_text(encoding="utf-8"))
    document["rule_files"] = [str(RULES_FILE)]
    first_check = document["tests"][0]["alert_rule_test"][0]
    first_check["eval_time"] = "7m"
    broken = tmp_path / "broken.test.yml"
    broken.write_text(yaml.safe_dump(document), encoding="utf-8")

    result = run_promtool(promtool, "test", "rules", str(broken), cwd=tmp_path)

    assert result.returncode != 0
    assert "SupervisorQueueDepthHigh" in result.stdout + result.stderr


# --- Agreement between the evaluator and promtool ---------------------------------------------


def agreement_series() -> pd.DataFrame:
    """Two targets over 30 minutes with depth and lag crossing their thresholds several times.

    Mean lag follows a schedule (10 minutes at 8 s, 4 minutes at 6 s) plus noise, so there are
    firing and pending-only episodes. sup-1's lag counters reset at 12 minutes, a restart, and
    sup-2's mean lag sits exactly on 5 s at first, where rounding in the rate ratio decides.
    """
    rng = np.random.default_rng(20240601)
    steps = 120
    lag_schedule_s = np.full(steps, 3.0)
    lag_schedule_s[20:60] = 8.0
    lag_schedule_s[60:80] = 4.0
    lag_schedule_s[80:96] = 6.0
    frames = []
    for target in ("sup-1:8080", "sup-2:8080"):
        depth = np.clip(780.0 + rng.normal(0, 60, steps).cumsum() * 0.3, 0, 1000).round()
        depth[40:44] = 950.0
        dequeued = rng.integers(5, 40, steps).astype(np.float64)
        dequeued[0] = 0.0
        mean_lag_s = np.clip(lag_schedule_s + rng.normal(0, 0.7, steps), 0.0, None)
        if target == "sup-2:8080":
            mean_lag_s[:20] = 5.0
        lag_count = dequeued.cumsum()
        lag_sum = (dequeued * mean_lag_s).cumsum().round(3)
        if target == "sup-1:8080":
            lag_count[48:] -= lag_count[47]
            lag_sum[48:] = (lag_sum[48:] - lag_sum[47]).round(3)
        frames.append(
            pd.DataFrame(
                {
                    "timestamp": np.arange(steps, dtype=np.float64) * SCRAPE_S,
                    "target": target,
                    "queue_depth": depth,
                    "queue_capacity": 1000.0,
                    "lag_sum_s": lag_sum,
                    "lag_count": lag_count,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def promtool_input_series(series: pd.DataFrame) -> list[dict[str, str]]:
    """Convert a sampled series into promtool `input_series` entries, one per metric and target."""
    entries = []
    for target, rows in series.groupby("target", sort=True):
        for column, metric in METRIC_OF_COLUMN.items():
            values = " ".join(repr(float(value)) for value in rows[column])
            entries.append(
                {"series": f'{metric}{{job="{JOB}", instance="{target}"}}', "values": values}
            )
    return entries


def alert_state_at(evaluation: AlertEvaluation, time_s: float, target: str) -> str | None:
    for episode in evaluation.episodes:
        if episode.target != target or time_s < episode.pending_at:
            continue
        if episode.resolved_at is not None and time_s >= episode.resolved_at:
            continue
        if episode.fired_at is not None and time_s >= episode.fired_at:
            return "firing"
        return "pending"
    return None


def expected_alerts(
    evaluation: AlertEvaluation, rule: AlertRule, severity: str, targets: list[str]
) -> list[dict[str, Any]]:
    """One promtool `promql_expr_test` per evaluation, expecting the evaluator's ALERTS series."""
    checks = []
    for time_s in evaluation.conditions["eval_time_s"].unique():
        samples = []
        for target in targets:
            state = alert_state_at(evaluation, float(time_s), target)
            if state is not None:
                labels = (
                    f'ALERTS{{alertname="{rule.name}", alertstate="{state}", '
                    f'instance="{target}", job="{JOB}", severity="{severity}"}}'
                )
                samples.append({"labels": labels, "value": 1})
        checks.append(
            {
                "expr": f'ALERTS{{alertname="{rule.name}"}}',
                "eval_time": f"{int(time_s)}s",
                "exp_samples": samples,
            }
        )
    return checks


def test_evaluator_agrees_with_promtool(promtool: str, tmp_path: Path) -> None:
    series = agreement_series()
    targets = sorted(series["target"].unique())
    rules = {rule.name: rule for rule in rules_from_thresholds(default_thresholds())}
    checked = [rules[QUEUE_DEPTH_ALERT], rules[QUEUE_LAG_ALERT]]
    evaluations = evaluate_rules(series, checked)
    checks = [
        check
        for rule in checked
        for check in expected_alerts(evaluations[rule.name], rule, "critical", targets)
    ]
    document = {
        "rule_files": [str(RULES_FILE)],
        "evaluation_interval": f"{SCRAPE_S}s",
        "tests": [
            {
                "interval": f"{SCRAPE_S}s",
                "input_series": promtool_input_series(series),
                "promql_expr_test": checks,
            }
        ],
    }
    test_file = tmp_path / "agreement.test.yml"
    test_file.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")

    result = run_promtool(promtool, "test", "rules", str(test_file), cwd=tmp_path)

    # The series must exercise every state, or agreement would be trivial.
    for rule in checked:
        evaluation = evaluations[rule.name]
        assert evaluation.fired, f"{rule.name} never fires on the agreement series"
        assert any(e.fired_at is None for e in evaluation.episodes), (
            f"{rule.name} has no episode that ends while pending"
        )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
