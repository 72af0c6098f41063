"""Report folder of the capacity plan: the decision as data (`recommendation.json`) and as text.

The folder contains `recommendation.json`, `comparison.csv`, `verification.json`, the alert rules
file `supervisor.rules.yml`, `README.md`, `figures/*.png`, `model/` (the calibrated model
config), `bundles/` (the measured runs) and `notebooks/*.html`. This module writes the data and
text files from results the other stages computed; it computes nothing but the verification
verdict, so a report can be rebuilt from hand-made inputs in tests.

Every value in the JSON files is plain JSON: NaN and infinity become `null`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from capacity.alert_tuning import AlertThresholds

logger = logging.getLogger(__name__)

RECOMMENDATION_FILE = "recommendation.json"
COMPARISON_FILE = "comparison.csv"
VERIFICATION_FILE = "verification.json"
RULES_FILE = "supervisor.rules.yml"
README_FILE = "README.md"
FIGURES_DIR = "figures"
MODEL_DIR = "model"
BUNDLES_DIR = "bundles"
NOTEBOOKS_DIR = "notebooks"

COMPARISON_COLUMNS = ("metric", "load_step", "measured", "predicted", "relative_error")

# Verification tolerance: the measured p95 end-to-end latency agrees with the prediction when it
# is within this fraction of it or within the prediction's 95% confidence half-width.
LATENCY_RELATIVE_TOLERANCE = 0.3


class ReportError(ValueError):
    """Results that cannot be written as a report, such as a comparison without its columns."""


@dataclass(frozen=True, kw_only=True)
class PlanInputs:
    """Inputs of a plan: the load to size for, the targets and the source of the measurements."""

    peak_rate_per_s: float
    peak_rate_source: str
    headroom: float
    target_latency_ms: float
    max_drop_rate: float
    max_error_rate: float
    burst_rate_per_s: float
    burst_duration_s: float
    shard_count: int
    quick: bool
    bundle_dir: str
    recorded_here: bool
    dedup_backend: str
    database_backend: str

    @property
    def design_rate_per_s(self) -> float:
        """Peak rate times headroom: the rate the pool is sized for."""
        return self.peak_rate_per_s * self.headroom


@dataclass(frozen=True, kw_only=True)
class Recommendation:
    """The settings the plan recommends, each with its reason and uncertainty."""

    inputs: PlanInputs
    pool_size: int
    pool_reason: str
    pool_uncertainty: Any
    predicted_at_peak: Mapping[str, Any]
    queue_max_size: int
    queue_reason: str
    queue_uncertainty: Any
    thresholds: AlertThresholds
    refresh_interval_ms: float
    full_refresh_interval_ms: float
    database_load: Any
    redis_memory: Any
    accuracy: Any
    notes: Sequence[str] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        """Build the content of `recommendation.json`."""
        return {
            "SUPERVISOR_WORKER_POOL_SIZE": int(self.pool_size),
            "SUPERVISOR_QUEUE_MAX_SIZE": int(self.queue_max_size),
            "SUPERVISOR_CONFIG_REFRESH_MS": int(self.refresh_interval_ms),
            "SUPERVISOR_CONFIG_FULL_REFRESH_MS": int(self.full_refresh_interval_ms),
            "alert_thresholds": to_plain(self.thresholds.as_dict()),
            "pool": {
                "value": int(self.pool_size),
                "reason": self.pool_reason,
                "uncertainty": to_plain(self.pool_uncertainty),
                "predicted_at_design_rate": to_plain(self.predicted_at_peak),
            },
            "queue": {
                "value": int(self.queue_max_size),
                "reason": self.queue_reason,
                "uncertainty": to_plain(self.queue_uncertainty),
            },
            "refresh": {
                "refresh_interval_ms": self.refresh_interval_ms,
                "full_refresh_interval_ms": self.full_refresh_interval_ms,
                "database_load": to_plain(self.database_load),
            },
            "redis_memory": to_plain(self.redis_memory),
            "inputs": {
                **to_plain(dataclasses.asdict(self.inputs)),
                "design_rate_per_s": self.inputs.design_rate_per_s,
            },
            "accuracy": to_plain(self.accuracy),
            "notes": list(self.notes),
            "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }


@dataclass(frozen=True, kw_only=True)
class Verification:
    """Measured against predicted p95 end-to-end latency and drop rate at the recommendation.

    Predictions come from the pool sweep at the recommended pool size; measurements from the
    verification run at that pool size and the planned peak rate.
    """

    pool_size: int
    rate_per_s: float
    duration_s: float
    bundle_dir: str
    measured_p95_e2e_latency_s: float
    predicted_p95_e2e_latency_s: float
    predicted_p95_e2e_latency_ci95_s: float
    measured_drop_rate: float
    predicted_drop_rate: float
    predicted_drop_rate_ci95: float
    target_latency_ms: float
    max_drop_rate: float
    notes: tuple[str, ...] = ()

    @property
    def latency_relative_error(self) -> float:
        """(measured - predicted) / predicted p95 end-to-end latency; NaN without a prediction."""
        if not self.predicted_p95_e2e_latency_s > 0:
            return math.nan
        return (
            self.measured_p95_e2e_latency_s - self.predicted_p95_e2e_latency_s
        ) / self.predicted_p95_e2e_latency_s

    @property
    def latency_agrees(self) -> bool:
        """True when the measured latency is within the tolerance or the prediction's CI."""
        difference_s = abs(self.measured_p95_e2e_latency_s - self.predicted_p95_e2e_latency_s)
        allowed_s = max(
            LATENCY_RELATIVE_TOLERANCE * self.predicted_p95_e2e_latency_s,
            _finite_or_zero(self.predicted_p95_e2e_latency_ci95_s),
        )
        return difference_s <= allowed_s

    @property
    def drop_rate_agrees(self) -> bool:
        """True when the drop rates differ by at most the larger of the CI and the drop target."""
        allowed = max(_finite_or_zero(self.predicted_drop_rate_ci95), self.max_drop_rate)
        return abs(self.measured_drop_rate - self.predicted_drop_rate) <= allowed

    @property
    def meets_targets(self) -> bool:
        """True when the measured run met the latency and drop targets."""
        return (
            self.measured_p95_e2e_latency_s * 1000 <= self.target_latency_ms
            and self.measured_drop_rate <= self.max_drop_rate
        )

    @property
    def verdict(self) -> str:
        """`confirmed`, `prediction off` or `targets missed`, in that order of preference."""
        if not self.meets_targets:
            return "targets missed"
        if not (self.latency_agrees and self.drop_rate_agrees):
            return "prediction off"
        return "confirmed"

    def as_dict(self) -> dict[str, Any]:
        """Build the content of `verification.json`."""
        document: dict[str, Any] = to_plain(
            {
                "status": "ran",
                **dataclasses.asdict(self),
                "latency_relative_error": self.latency_relative_error,
                "latency_relative_tolerance": LATENCY_RELATIVE_TOLERANCE,
                "latency_agrees": self.latency_agrees,
                "drop_rate_agrees": self.drop_rate_agrees,
                "meets_targets": self.meets_targets,
                "verdict": self.verdict,
            }
        )
        return document


def skipped_verification(reason: str) -> dict[str, Any]:
    """Build `verification.json` for a plan that ran no verification."""
    return {"status": "skipped", "reason": reason}


def _finite_or_zero(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def to_plain(value: Any) -> Any:
    """Convert dataclasses, frames, numpy values and paths to JSON-ready values.

    NaN and infinity become `None`, because strict JSON has no such numbers.
    """
    as_dict = getattr(value, "as_dict", None)
    if callable(as_dict) and not isinstance(value, type):
        return to_plain(as_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            item.name: to_plain(getattr(value, item.name)) for item in dataclasses.fields(value)
        }
    if isinstance(value, pd.DataFrame):
        return [to_plain(row) for row in value.to_dict(orient="records")]
    if isinstance(value, pd.Series):
        return {str(key): to_plain(item) for key, item in value.items()}
    if isinstance(value, Mapping):
        return {str(key): to_plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset | np.ndarray):
        return [to_plain(item) for item in value]
    if isinstance(value, enum.Enum):
        return to_plain(value.value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return to_plain(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def write_json(path: Path, document: Mapping[str, Any]) -> Path:
    """Write `document` as indented strict JSON and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(to_plain(document), indent=2, allow_nan=False, sort_keys=False)
    path.write_text(text + "\n", encoding="utf-8")
    logger.info("wrote %s", path)
    return path


def write_comparison(path: Path, table: pd.DataFrame) -> Path:
    """Write the comparison table as CSV, the fixed columns first; raise if one is missing."""
    missing = [column for column in COMPARISON_COLUMNS if column not in table.columns]
    if missing:
        raise ReportError(
            f"comparison table lacks the columns {', '.join(missing)}: pass "
            "compare_run(...).table, which has them"
        )
    others = [column for column in table.columns if column not in COMPARISON_COLUMNS]
    path.parent.mkdir(parents=True, exist_ok=True)
    table[[*COMPARISON_COLUMNS, *others]].to_csv(path, index=False)
    logger.info("wrote %s with %d rows", path, len(table))
    return path


@dataclass(frozen=True, kw_only=True)
class ReportContents:
    """Everything the README of a report folder draws on."""

    recommendation: Recommendation
    comparison: pd.DataFrame
    verification: Mapping[str, Any]
    figures: Sequence[Path] = ()
    notebooks_html: Sequence[Path] = ()
    stage_durations_s: Mapping[str, float] = field(default_factory=dict)


def write_report(report_dir: Path, contents: ReportContents) -> dict[str, Path]:
    """Write `recommendation.json`, `comparison.csv`, `verification.json` and `README.md`."""
    report_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "recommendation": write_json(
            report_dir / RECOMMENDATION_FILE, contents.recommendation.as_dict()
        ),
        "comparison": write_comparison(report_dir / COMPARISON_FILE, contents.comparison),
        "verification": write_json(report_dir / VERIFICATION_FILE, contents.verification),
    }
    readme = report_dir / README_FILE
    readme.write_text(render_readme(report_dir, contents), encoding="utf-8")
    paths["readme"] = readme
    return paths


def render_readme(report_dir: Path, contents: ReportContents) -> str:
    """Render the report's README: the decision, the evidence, then the caveats."""
    sections = [
        _decision_section(contents.recommendation),
        _evidence_section(contents),
        _verification_section(contents.verification),
        _files_section(report_dir, contents),
        _caveats_section(contents),
    ]
    return "\n\n".join(sections) + "\n"


def _decision_section(rec: Recommendation) -> str:
    inputs = rec.inputs
    lines = [
        "# Capacity plan",
        "",
        f"Set `SUPERVISOR_WORKER_POOL_SIZE={rec.pool_size}` and "
        f"`SUPERVISOR_QUEUE_MAX_SIZE={rec.queue_max_size}` for a planned peak of "
        f"{inputs.peak_rate_per_s:g} events/s ({inputs.peak_rate_source}) with headroom "
        f"{inputs.headroom:g}, so the pool is sized for {inputs.design_rate_per_s:g} events/s.",
        "",
        "| setting | value | why | uncertainty |",
        "| --- | --- | --- | --- |",
        f"| `SUPERVISOR_WORKER_POOL_SIZE` | {rec.pool_size} | {_cell(rec.pool_reason)} | "
        f"{_cell(rec.pool_uncertainty)} |",
        f"| `SUPERVISOR_QUEUE_MAX_SIZE` | {rec.queue_max_size} | {_cell(rec.queue_reason)} | "
        f"{_cell(rec.queue_uncertainty)} |",
        f"| `SUPERVISOR_CONFIG_REFRESH_MS` | {rec.refresh_interval_ms:g} | the measured run's "
        f"setting, kept; database load {_database_text(rec.database_load)} | "
        "low to high in brackets |",
        f"| `SUPERVISOR_CONFIG_FULL_REFRESH_MS` | {rec.full_refresh_interval_ms:g} | the measured "
        "run's setting, not a recommendation: keep your production value (the service default "
        "is 300000) unless the database load above asks for a change | |",
        f"| Redis memory for dedup keys | | {_redis_text(rec.redis_memory)} | "
        "low to high in brackets |",
        "",
        "Alert thresholds (written to `supervisor.rules.yml`):",
        "",
        "| threshold | value |",
        "| --- | --- |",
        *(f"| `{name}` | {value} |" for name, value in rec.thresholds.as_dict().items()),
        "",
        f"Targets: p95 end-to-end latency at most {inputs.target_latency_ms:g} ms, drop rate at "
        f"most {inputs.max_drop_rate:g}, execution error rate at most {inputs.max_error_rate:g}. "
        f"Queue sized for a burst of {inputs.burst_rate_per_s:g} events/s for "
        f"{inputs.burst_duration_s:g} s; {inputs.shard_count} shard(s).",
    ]
    return "\n".join(lines)


def _evidence_section(contents: ReportContents) -> str:
    rec = contents.recommendation
    lines = [
        "## Evidence",
        "",
        f"Model prediction at the design rate with {rec.pool_size} workers "
        f"(mean ± 95% CI half-width): {_prediction_text(rec.predicted_at_peak)}.",
        "",
        *_accuracy_lines(rec.accuracy),
    ]
    table = contents.comparison
    if not table.empty:
        lines += ["", "Measured against predicted per load step (`comparison.csv`):", ""]
        lines += _markdown_table(table[list(COMPARISON_COLUMNS)])
    return "\n".join(lines)


def _estimate_text(value: Any) -> str:
    """Format a `{value, low, high}` estimate as `value (low to high)`."""
    if not isinstance(value, dict) or "value" not in value:
        return _number(value)
    central, low, high = (_number(value.get(key)) for key in ("value", "low", "high"))
    return central if low == high == central else f"{central} ({low} to {high})"


def _database_text(load: Any) -> str:
    plain = to_plain(load)
    if not isinstance(plain, dict) or "queries_per_s" not in plain:
        return _cell(plain)
    return (
        f"{_estimate_text(plain['queries_per_s'])} queries/s and "
        f"{_estimate_text(plain.get('rows_per_s'))} rows/s over "
        f"{plain.get('shard_count', '?')} shard(s)"
    )


def _redis_text(memory: Any) -> str:
    plain = to_plain(memory)
    if not isinstance(plain, dict) or "memory_mib" not in plain:
        return _cell(plain)
    return (
        f"{_estimate_text(plain['memory_mib'])} MiB for "
        f"{_estimate_text(plain.get('keys'))} keys"
    )


_PREDICTION_METRICS = (
    ("p95_e2e_latency_s", "p95 end-to-end latency (s)"),
    ("drop_rate", "drop rate"),
    ("execution_error_rate", "execution error rate"),
    ("utilization", "utilization"),
    ("mean_queue_depth", "mean queue depth"),
)


def _prediction_text(predicted: Mapping[str, Any]) -> str:
    parts = []
    for key, label in _PREDICTION_METRICS:
        if key not in predicted:
            continue
        text = f"{label} {_number(predicted[key])}"
        if f"{key}_ci95" in predicted:
            text += f" ± {_number(predicted[f'{key}_ci95'])}"
        parts.append(text)
    return ", ".join(parts) if parts else _cell(predicted)


def _accuracy_lines(accuracy: Any) -> list[str]:
    """Describe `Comparison.accuracy_summary()`: the overall verdict, then one row per metric."""
    plain = to_plain(accuracy)
    metrics = plain.get("metrics") if isinstance(plain, dict) else None
    if not isinstance(metrics, dict):
        return [f"Accuracy of the calibrated model against the measured run: {_cell(plain)}."]
    verdict = "within" if plain.get("passed") else "NOT within"
    lines = [
        f"The calibrated model is **{verdict}** its accuracy targets on the judged load steps "
        f"{plain.get('judged_steps')} (calibrated on steps {plain.get('calibration_steps')}).",
        "",
        "| metric | within target | max relative error | max absolute error |",
        "| --- | --- | --- | --- |",
    ]
    if not plain.get("passed"):
        lines[1:1] = [
            "",
            "What to do: treat the pool and queue sizes as a first estimate. Rerun the plan "
            "without `--quick` (longer steps give steadier measurements), on a machine where "
            "the load generator does not share cores with the supervisor, and trust the "
            "verification run below more than the sweep where the two disagree.",
        ]
    for metric, values in metrics.items():
        values = values if isinstance(values, dict) else {}
        lines.append(
            f"| {metric} | {_number(values.get('within_target'))} | "
            f"{_number(values.get('max_abs_relative_error'))} | "
            f"{_number(values.get('max_abs_error'))} |"
        )
    return lines


def _verification_section(verification: Mapping[str, Any]) -> str:
    lines = ["## Verification run", ""]
    if verification.get("status") != "ran":
        lines.append(f"Not run: {verification.get('reason', 'no reason given')}.")
        return "\n".join(lines)
    lines += [
        f"Verdict: **{verification['verdict']}**. At {verification['pool_size']} workers and "
        f"{_number(verification['rate_per_s'])} events/s for "
        f"{_number(verification['duration_s'])} s:",
        "",
        "| metric | measured | predicted | 95% CI half-width |",
        "| --- | --- | --- | --- |",
        f"| p95 end-to-end latency (s) | {_number(verification['measured_p95_e2e_latency_s'])} | "
        f"{_number(verification['predicted_p95_e2e_latency_s'])} | "
        f"{_number(verification['predicted_p95_e2e_latency_ci95_s'])} |",
        f"| drop rate | {_number(verification['measured_drop_rate'])} | "
        f"{_number(verification['predicted_drop_rate'])} | "
        f"{_number(verification['predicted_drop_rate_ci95'])} |",
    ]
    notes = verification.get("notes") or []
    if notes:
        lines += ["", *(f"Note: {note}." for note in notes)]
    return "\n".join(lines)


def _files_section(report_dir: Path, contents: ReportContents) -> str:
    lines = [
        "## Files",
        "",
        f"- `{RECOMMENDATION_FILE}`: the settings, their uncertainty, the inputs and the accuracy",
        f"- `{COMPARISON_FILE}`: measured against predicted per metric and load step",
        f"- `{VERIFICATION_FILE}`: the verification run against its prediction",
        f"- `{RULES_FILE}`: Prometheus alert rules with the thresholds above",
        f"- `{MODEL_DIR}/`: the calibrated model config; `{BUNDLES_DIR}/`: the measured runs",
    ]
    lines += [f"- `{_relative(path, report_dir)}`" for path in contents.figures]
    lines += [f"- `{_relative(path, report_dir)}`" for path in contents.notebooks_html]
    if contents.stage_durations_s:
        lines += ["", "Stage durations (s):", ""]
        lines += [
            f"- {title}: {duration_s:.1f}"
            for title, duration_s in contents.stage_durations_s.items()
        ]
    return "\n".join(lines)


def _caveats_section(contents: ReportContents) -> str:
    rec = contents.recommendation
    inputs = rec.inputs
    caveats = list(rec.notes)
    if inputs.quick:
        caveats.append(
            "This is a quick plan: short load steps and few replications, so the confidence "
            "intervals are wide. Run `capacity-plan` without `--quick` before a rollout."
        )
    if inputs.recorded_here:
        caveats.append(
            f"The load generator and the service shared this machine ({os.cpu_count()} cores), "
            "so the measured capacity is lower than on a dedicated host. Calibrate from a "
            "staging bundle (`--bundle`) for the production decision."
        )
    if inputs.dedup_backend not in ("redis", "unknown"):
        caveats.append(
            "Dedup ran in process, not in Redis, so the Redis round trip is not in the "
            "measured latency."
        )
    if inputs.recorded_here and inputs.database_backend != "postgresql":
        caveats.append(
            f"The config database was {inputs.database_backend}, not PostgreSQL, so the "
            "refresh durations are not those of production."
        )
    if contents.verification.get("status") != "ran":
        caveats.append("No verification run confirmed the prediction at the recommended setting.")
    elif contents.verification.get("verdict") != "confirmed":
        caveats.append(
            f"The verification run's verdict is '{contents.verification.get('verdict')}': "
            "treat the recommendation as unproven until a run at the setting meets the targets."
        )
    caveats.append(
        "The model mirrors the service's queue, pool, execution calls and refreshes; what it "
        "leaves out (garbage collection pauses, network jitter, other tenants) is not predicted."
    )
    return "\n".join(["## Caveats", "", *(f"- {text}" for text in caveats)])


def _markdown_table(table: pd.DataFrame) -> list[str]:
    header = "| " + " | ".join(str(column) for column in table.columns) + " |"
    rule = "| " + " | ".join("---" for _ in table.columns) + " |"
    rows = [
        "| " + " | ".join(_number(value) for value in row) + " |"
        for row in table.itertuples(index=False)
    ]
    return [header, rule, *rows]


def _number(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return "n/a" if not math.isfinite(float(value)) else f"{float(value):.4g}"
    return "n/a" if value is None else str(value)


def _cell(value: Any) -> str:
    """Describe a value in one Markdown table cell (mappings as `key=value` pairs)."""
    plain = to_plain(value)
    if isinstance(plain, dict):
        return ", ".join(
            f"{key}={_number(item)}" for key, item in plain.items() if not isinstance(item, list)
        )
    if isinstance(plain, list):
        return f"{len(plain)} rows"
    return _number(plain).replace("|", "/").replace("\n", " ")


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)
