"""Alert plan: thresholds chosen on the model's scrape series, with false alarms and detection.

The model runs twice over for a recommended pool size:

- under normal load (Poisson at `normal_rate_per_s`) for `normal_duration_s` simulated seconds
  per replication. Every firing there is a false alarm, and the count is scaled to a week;
- under overload: normal load until `overload_start_s`, then `factor x capacity_rate_per_s`
  for `overload_duration_s`, once per overload factor and replication; the time from the
  overload start to the first firing is the time to detect.

Each candidate rule (threshold, `for:` and window of the queue depth, queue lag and execution
error alerts) is evaluated on these series by `simulation.alerts` through
`capacity.alert_tuning`, and `propose_thresholds` picks per alert the fastest candidate within
the false alarm target. A short normal run observes little time, so zero firings do not prove
zero false alarms: `false_alarms_per_week_upper95` gives the exact Poisson upper bound of the
rate.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from capacity.alert_tuning import (
    CANDIDATE_COLUMNS,
    SECONDS_PER_WEEK,
    AlertThresholds,
    OverloadRun,
    candidate_rules,
    default_thresholds,
    detection_times,
    false_alarms_per_week,
    propose_thresholds,
    rules_from_thresholds,
    thresholds_from_proposal,
)
from simulation.alerts import (
    EXECUTION_ERRORS_ALERT,
    QUEUE_DEPTH_ALERT,
    QUEUE_LAG_ALERT,
    REQUIRED_COLUMNS,
    AlertRule,
)
from simulation.config import ArrivalConfig, ModelConfig
from simulation.model import SimulationResult, simulate

logger = logging.getLogger(__name__)

DEFAULT_SCRAPE_INTERVAL_S = 15.0
DEPTH_RATIOS: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9)
LAG_THRESHOLDS_S: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0)
ERROR_RATIOS: tuple[float, ...] = (0.01, 0.02, 0.05)
# The model has no deploys, pauses or bursty sources, so a `for:` below one minute that is quiet
# in the model may still flap in production. So the shortest candidate is one minute.
FOR_S_VALUES: tuple[float, ...] = (60.0, 120.0, 300.0)


class AlertPlanError(ValueError):
    """Inputs of the alert plan are invalid."""


@dataclass(frozen=True)
class AlertPlan:
    """Proposed thresholds and the evidence behind them.

    `false_alarms` has one row per candidate over all normal-load replications (columns of
    `capacity.alert_tuning.false_alarms_per_week`, plus `false_alarms_per_week_upper95`).
    `detection` has one row per overload run and candidate (`detection_times`), and `proposal`
    one row per alert (`propose_thresholds`). `normal_series` and `overload_runs` are the
    series of the first replication, for plots.
    """

    thresholds: AlertThresholds
    false_alarms: pd.DataFrame
    detection: pd.DataFrame
    proposal: pd.DataFrame
    pool_size: int
    capacity_rate_per_s: float
    normal_rate_per_s: float
    observed_normal_s: float
    normal_series: pd.DataFrame
    overload_runs: tuple[OverloadRun, ...]
    notes: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """Return the thresholds, the proposal and the notes as JSON-ready values."""
        proposal = self.proposal.replace({math.inf: None}).astype(object)
        proposal = proposal.where(proposal.notna(), None)
        return {
            "thresholds": self.thresholds.as_dict(),
            "pool_size": self.pool_size,
            "capacity_rate_per_s": self.capacity_rate_per_s,
            "normal_rate_per_s": self.normal_rate_per_s,
            "observed_normal_s": self.observed_normal_s,
            "proposal": proposal.to_dict("records"),
            "notes": list(self.notes),
        }


def default_candidates(base: AlertThresholds | None = None) -> list[AlertRule]:
    """Return the candidate rules for the queue depth, lag and execution error alerts.

    Thresholds and `for:` values are whole seconds so a proposal fits the rules file. The lag
    window and the error window keep the values of `base` (default thresholds), plus a
    5-minute error window.
    """
    thresholds = base or default_thresholds()
    rules = {rule.name: rule for rule in rules_from_thresholds(thresholds)}
    return [
        *candidate_rules(rules[QUEUE_DEPTH_ALERT], DEPTH_RATIOS, FOR_S_VALUES),
        *candidate_rules(rules[QUEUE_LAG_ALERT], LAG_THRESHOLDS_S, FOR_S_VALUES),
        *candidate_rules(
            rules[EXECUTION_ERRORS_ALERT],
            ERROR_RATIOS,
            (0.0, 60.0),
            sorted({300.0, float(thresholds.error_window_s)}),
        ),
    ]


def check_series_columns(series: pd.DataFrame, rules: Sequence[AlertRule]) -> None:
    """Raise `AlertPlanError` when `series` lacks a column the rules' expressions read."""
    needed = {"timestamp", "target"}
    for rule in rules:
        needed.update(REQUIRED_COLUMNS[rule.kind])
    missing = sorted(needed - set(series.columns))
    if missing:
        raise AlertPlanError(
            f"the model's series lacks columns {missing} that the alert rules read; "
            "the sampled series must have the columns of docs/interfaces.md"
        )


def _model_config(
    base_config: ModelConfig,
    pool_size: int,
    schedule: tuple[tuple[float, float], ...],
    duration_s: float,
    replications: int,
    seed: int,
    scrape_interval_s: float,
) -> ModelConfig:
    return base_config.with_changes(
        arrivals=ArrivalConfig(kind="schedule", schedule=schedule),
        pool_size=int(pool_size),
        duration_s=float(duration_s),
        warmup_s=0.0,
        replications=replications,
        seed=seed,
        scrape_interval_s=scrape_interval_s,
    )


def _series(result: SimulationResult) -> list[pd.DataFrame]:
    return [result.series(replication) for replication in range(len(result.runs))]


def _combined_false_alarms(
    series: Sequence[pd.DataFrame], candidates: Sequence[AlertRule]
) -> pd.DataFrame:
    """Count false alarms over several normal-load series as one long observation."""
    tables = [false_alarms_per_week(one, candidates) for one in series]
    stacked = pd.concat(tables, ignore_index=True)
    totals = stacked.groupby(CANDIDATE_COLUMNS, sort=False, as_index=False)[
        ["fired", "pending_only", "observed_s"]
    ].sum()
    totals["false_alarms_per_week"] = totals["fired"] * SECONDS_PER_WEEK / totals["observed_s"]
    totals["false_alarms_per_week_upper95"] = [
        poisson_upper95(int(fired)) * SECONDS_PER_WEEK / observed_s
        for fired, observed_s in zip(totals["fired"], totals["observed_s"], strict=True)
    ]
    return totals


def poisson_upper95(count: int) -> float:
    """Return the exact one-sided 95% upper bound of a Poisson mean after `count` events.

    For zero events it is about 3.0 (the rule of three).
    """
    return float(stats.chi2.ppf(0.95, 2 * (count + 1)) / 2.0)


def plan_alerts(
    base_config: ModelConfig,
    pool_size: int,
    *,
    capacity_rate_per_s: float,
    normal_rate_per_s: float,
    normal_duration_s: float,
    overload_factors: Sequence[float] = (1.2, 1.5),
    replications: int = 2,
    seed: int = 1,
    overload_start_s: float = 600.0,
    overload_duration_s: float = 900.0,
    scrape_interval_s: float = DEFAULT_SCRAPE_INTERVAL_S,
    candidates: Sequence[AlertRule] | None = None,
    base_thresholds: AlertThresholds | None = None,
    max_false_alarms_per_week: float = 0.0,
) -> AlertPlan:
    """Propose alert thresholds for `pool_size` from simulated normal and overload series.

    `capacity_rate_per_s` is the rate the pool sustains (for example the largest rate at which
    the pool recommendation passed); overload runs go to `factor x capacity_rate_per_s`.
    Thresholds of alerts whose best candidate is not `proposed` keep `base_thresholds`.
    """
    _check_inputs(pool_size, capacity_rate_per_s, normal_rate_per_s, normal_duration_s)
    if replications < 1:
        raise AlertPlanError(f"replications={replications} is invalid: use 1 or more")
    if not overload_factors:
        raise AlertPlanError("overload_factors is empty: give at least one factor, e.g. (1.2,)")
    base = base_thresholds or default_thresholds()
    rules = list(candidates) if candidates is not None else default_candidates(base)

    normal = simulate(
        _model_config(
            base_config,
            pool_size,
            ((0.0, normal_rate_per_s),),
            normal_duration_s,
            replications,
            seed,
            scrape_interval_s,
        )
    )
    normal_series = _series(normal)
    check_series_columns(normal_series[0], rules)
    false_alarms = _combined_false_alarms(normal_series, rules)

    overload_runs = _overload_runs(
        base_config,
        pool_size,
        capacity_rate_per_s=capacity_rate_per_s,
        normal_rate_per_s=normal_rate_per_s,
        overload_factors=overload_factors,
        overload_start_s=overload_start_s,
        overload_duration_s=overload_duration_s,
        replications=replications,
        seed=seed,
        scrape_interval_s=scrape_interval_s,
    )
    detection = detection_times(overload_runs, rules)
    proposal = propose_thresholds(
        false_alarms, detection, max_false_alarms_per_week=max_false_alarms_per_week
    )
    thresholds = thresholds_from_proposal(proposal, base)
    observed_s = float(false_alarms["observed_s"].iloc[0])
    logger.info(
        "Alert plan for pool size %d: %d candidates, %.0f s of normal load, %d overload runs",
        pool_size,
        len(rules),
        observed_s,
        len(overload_runs),
    )
    first_runs = tuple(run for run in overload_runs if run.label.endswith("#0"))
    return AlertPlan(
        thresholds=thresholds,
        false_alarms=false_alarms,
        detection=detection,
        proposal=proposal,
        pool_size=int(pool_size),
        capacity_rate_per_s=float(capacity_rate_per_s),
        normal_rate_per_s=float(normal_rate_per_s),
        observed_normal_s=observed_s,
        normal_series=normal_series[0],
        overload_runs=first_runs,
        notes=_notes(proposal, observed_s),
    )


def _check_inputs(
    pool_size: int, capacity_rate_per_s: float, normal_rate_per_s: float, normal_duration_s: float
) -> None:
    if not (isinstance(pool_size, int) and pool_size >= 1):
        raise AlertPlanError(f"pool_size={pool_size!r} is invalid: use an integer >= 1")
    for name, value in (
        ("capacity_rate_per_s", capacity_rate_per_s),
        ("normal_rate_per_s", normal_rate_per_s),
        ("normal_duration_s", normal_duration_s),
    ):
        if not (math.isfinite(value) and value > 0):
            raise AlertPlanError(f"{name}={value!r} is invalid: use a finite number above 0")
    if normal_rate_per_s >= capacity_rate_per_s:
        raise AlertPlanError(
            f"normal_rate_per_s={normal_rate_per_s!r} is not below capacity_rate_per_s="
            f"{capacity_rate_per_s!r}: normal load must be below capacity"
        )


def _overload_runs(
    base_config: ModelConfig,
    pool_size: int,
    *,
    capacity_rate_per_s: float,
    normal_rate_per_s: float,
    overload_factors: Sequence[float],
    overload_start_s: float,
    overload_duration_s: float,
    replications: int,
    seed: int,
    scrape_interval_s: float,
) -> list[OverloadRun]:
    runs: list[OverloadRun] = []
    for factor in overload_factors:
        if not factor > 1.0:
            raise AlertPlanError(f"overload factor {factor!r} is invalid: use a factor above 1")
        schedule = ((0.0, normal_rate_per_s), (overload_start_s, factor * capacity_rate_per_s))
        result = simulate(
            _model_config(
                base_config,
                pool_size,
                schedule,
                overload_start_s + overload_duration_s,
                replications,
                seed,
                scrape_interval_s,
            )
        )
        start_unix_s = base_config.start_unix_s + overload_start_s
        for replication, series in enumerate(_series(result)):
            runs.append(OverloadRun(f"{factor:g}x#{replication}", series, start_unix_s))
    return runs


def _notes(proposal: pd.DataFrame, observed_s: float) -> tuple[str, ...]:
    hours = observed_s / 3600.0
    notes = [
        f"false alarms were counted over {hours:.3g} simulated hours and scaled to a week; with "
        f"no firing the 95% upper bound is {poisson_upper95(0) * SECONDS_PER_WEEK / observed_s:.3g}"
        " per week",
        "detection times are from the model; a real Prometheus adds up to one evaluation "
        "interval of phase",
    ]
    for row in proposal.itertuples(index=False):
        if row.status != "proposed":
            notes.append(f"{row.name}: {row.status}; its thresholds keep the base values")
    return tuple(notes)


def plot_detection(plan: AlertPlan, path: str | Path) -> Path:
    """Plot queue depth ratio over the overload runs and the time to detect of each proposal.

    Left: queue depth / capacity of the first replication of each overload run, with the
    overload start and the proposed depth threshold. Right: worst time to detect per alert.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (depth_axis, bar_axis) = plt.subplots(1, 2, figsize=(13, 4))
    for run in plan.overload_runs:
        series = run.series
        ratio = series["queue_depth"] / series["queue_capacity"]
        overload = run.label.split("#", 1)[0]
        depth_axis.plot(
            series["timestamp"] - run.overload_start_s, ratio, label=f"{overload} capacity"
        )
    depth_axis.axvline(0.0, color="black", linestyle=":", label="overload start")
    depth_axis.axhline(
        plan.thresholds.queue_depth_ratio, color="red", linestyle="--", label="depth threshold"
    )
    depth_axis.set_xlabel("seconds since overload start")
    depth_axis.set_ylabel("queue depth / capacity")
    depth_axis.legend(fontsize="small")

    proposal = plan.proposal
    worst = proposal["worst_time_to_detect_s"].replace(math.inf, np.nan)
    bar_axis.bar(proposal["name"], worst.fillna(0.0))
    top_s = float(np.nanmax(worst.to_numpy())) if worst.notna().any() else 1.0
    bar_axis.set_ylim(0.0, top_s * 1.35)
    for index, (value, status) in enumerate(zip(worst, proposal["status"], strict=True)):
        label = "not detected" if math.isnan(value) else f"{value:.0f} s"
        height = 0.0 if math.isnan(value) else value
        bar_axis.text(index, height + top_s * 0.03, f"{label}\n{status}", ha="center",
                      va="bottom", fontsize="small")
    bar_axis.set_ylabel("worst time to detect (s)")
    bar_axis.tick_params(axis="x", labelrotation=15)
    figure.suptitle(f"Alert detection at pool size {plan.pool_size}")
    figure.tight_layout()
    output = Path(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return output
