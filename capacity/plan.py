"""The stages of the capacity plan: measure, calibrate, compare, recommend, verify, report.

Stages, each printed with its number and elapsed time:

1. check the inputs (report folder, bundle, Redis and database URLs);
2. record a step-load run that crosses saturation (stub, supervisor and Locust as processes),
   or load the bundle given with `--bundle`;
3. measure each load step and choose the planned peak rate;
4. calibrate the model from the run; 5. compare measured with predicted per step;
6. sweep pool sizes at the peak rate times the headroom; 7. size the queue for a burst;
8. estimate database and Redis load; 9. plan the alert thresholds and write the rules file;
10. run the verification run at the recommended pool size and the peak rate, and compare it
    with the model's prediction; 11. execute the notebooks; 12. write the report folder.

Every process a stage starts is stopped by that stage, also when it fails, so an error leaves
nothing running. The notebooks import the same helpers (`choose_peak_rate`,
`estimate_capacity_rate_per_s`, `base_thresholds_for`) so they show what the command computed.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from capacity import report as report_files
from capacity.alert_tuning import AlertThresholds, default_thresholds, write_rules
from capacity.bundle import RunBundle, load_bundle
from capacity.notebooks import (
    ANALYSIS_SETTINGS,
    AnalysisSettings,
    execute_notebooks,
    fast_mode_requested,
)
from capacity.progress import StageProgress
from capacity.report import (
    PlanInputs,
    Recommendation,
    ReportContents,
    Verification,
    skipped_verification,
    write_report,
)
from simulation.config import ArrivalConfig, ConfigError, ModelConfig
from simulation.sweep import SweepError, run_sweep

if TYPE_CHECKING:
    from capacity.alert_plan import AlertPlan
    from capacity.calibrate import Calibration
    from capacity.compare import Comparison
    from capacity.recommend import (
        DatabaseLoad,
        PoolRecommendation,
        QueueRecommendation,
        RedisMemory,
    )

logger = logging.getLogger(__name__)

STAGE_COUNT = 12
DEFAULT_HEADROOM = 1.3
DEFAULT_TARGET_LATENCY_MS = 250.0
DEFAULT_MAX_DROP_RATE = 0.001
DEFAULT_MAX_ERROR_RATE = 0.02
# A burst this many times the peak rate is what the queue must absorb without drops.
DEFAULT_BURST_FACTOR = 2.0
DEFAULT_SEED = 1
ASSUMED_BYTES_PER_KEY = (110.0, 160.0)
REDIS_URL_VARIABLE = "SUPERVISOR_REDIS_URL"
DATABASE_URL_VARIABLE = "SUPERVISOR_DATABASE_URL"


class PlanError(RuntimeError):
    """The plan cannot go on; the message names the problem and the fix."""


@dataclass(frozen=True, kw_only=True)
class PlanOptions:
    """Command-line options after validation and defaults."""

    quick: bool
    out_dir: Path
    bundle_dir: Path | None
    peak_rate_per_s: float | None
    headroom: float
    target_latency_ms: float
    max_drop_rate: float
    max_error_rate: float
    burst_rate_per_s: float | None
    burst_duration_s: float | None
    shard_count: int | None
    configs_total: int | None
    changed_rows_per_s: float
    verify: bool
    notebooks: bool
    seed: int
    verbose: bool
    redis_url: str | None
    database_url: str | None

    @property
    def analysis(self) -> AnalysisSettings:
        """Replications and run lengths: `fast` under `CAPACITY_FAST=1`, else quick or full."""
        if fast_mode_requested():
            return ANALYSIS_SETTINGS["fast"]
        return ANALYSIS_SETTINGS["quick" if self.quick else "full"]


# --- The stages --------------------------------------------------------------------------------


@dataclass
class _Measured:
    bundle: RunBundle
    steps: pd.DataFrame
    recorded_here: bool


@dataclass(frozen=True)
class _Peak:
    rate_per_s: float
    source: str


@dataclass(frozen=True)
class _Burst:
    rate_per_s: float
    duration_s: float


@dataclass(frozen=True)
class _Load:
    shard_count: int
    database: DatabaseLoad
    redis: RedisMemory


def run_plan(options: PlanOptions, progress: StageProgress) -> Path:
    """Run every stage and write the report folder; return its path."""
    _check_inputs_stage(options, progress)
    measured = _record_or_load(options, progress)
    peak = _peak_rate_stage(options, progress, measured)

    calibration = _calibrate_stage(options, progress, measured)
    base_config: ModelConfig = calibration.model_config
    comparison, figures = _compare_stage(options, progress, measured, calibration)

    pool, pool_size = _pool_stage(options, progress, base_config, peak, figures)
    burst, queue = _queue_stage(options, progress, base_config, pool_size, peak)
    load = _load_stage(options, progress, measured, base_config, pool, peak)
    alerts = _alert_stage(options, progress, base_config, pool, pool_size, peak, figures)

    verification = _verification_stage(
        options, progress, base_config, pool_size, queue.queue_size, peak.rate_per_s
    )
    html_paths = _notebooks_stage(options, progress, measured, peak)

    with progress.stage("Write the report"):
        recommendation = _recommendation(
            options,
            measured=measured,
            peak=peak,
            burst=burst,
            load=load,
            calibration=calibration,
            comparison=comparison,
            pool=pool,
            pool_size=pool_size,
            queue=queue,
            alerts=alerts,
        )
        write_report(
            options.out_dir,
            ReportContents(
                recommendation=recommendation,
                comparison=comparison.table,
                verification=verification,
                figures=[path for path in figures if path is not None],
                notebooks_html=html_paths,
                stage_durations_s=dict(progress.durations_s),
            ),
        )
    return options.out_dir


def _check_inputs_stage(options: PlanOptions, progress: StageProgress) -> None:
    with progress.stage("Check the inputs"):
        prepare_report_dir(options.out_dir)
        check_services(options)


def _peak_rate_stage(options: PlanOptions, progress: StageProgress, measured: _Measured) -> _Peak:
    with progress.stage("Measure the load steps and choose the peak rate"):
        peak_rate_per_s, peak_source = choose_peak_rate(
            measured.steps,
            requested_rate_per_s=options.peak_rate_per_s,
            target_latency_ms=options.target_latency_ms,
        )
        progress.print(f"planned peak: {peak_rate_per_s:g} events/s ({peak_source})")
    return _Peak(peak_rate_per_s, peak_source)


def _calibrate_stage(
    options: PlanOptions, progress: StageProgress, measured: _Measured
) -> Calibration:
    from capacity import calibrate

    with progress.stage("Calibrate the model"):
        calibration = calibrate.calibrate(measured.bundle)
        model_dir = options.out_dir / report_files.MODEL_DIR
        model_dir.mkdir(parents=True, exist_ok=True)
        calibration.write(model_dir / "calibrated.toml")
    return calibration


def _compare_stage(
    options: PlanOptions, progress: StageProgress, measured: _Measured, calibration: Calibration
) -> tuple[Comparison, list[Path | None]]:
    from capacity import compare, plots

    figures_dir = options.out_dir / report_files.FIGURES_DIR
    with progress.stage("Compare measured and predicted per load step"):
        comparison = compare.compare_run(
            measured.bundle,
            calibration,
            replications=options.analysis.compare_replications,
            seed=options.seed,
        )
        figures_dir.mkdir(parents=True, exist_ok=True)
        figures = [
            _figure(plots.plot_overlay, measured.bundle, comparison, figures_dir / "overlay.png"),
            _figure(plots.plot_step_comparison, comparison, figures_dir / "step_comparison.png"),
        ]
    return comparison, figures


def _pool_stage(
    options: PlanOptions,
    progress: StageProgress,
    base_config: ModelConfig,
    peak: _Peak,
    figures: list[Path | None],
) -> tuple[PoolRecommendation, int]:
    """Sweep pool sizes and append the sweep figure to `figures`.

    Raise `PlanError` when no swept pool size meets every target.
    """
    from capacity import recommend

    settings = options.analysis
    figures_dir = options.out_dir / report_files.FIGURES_DIR
    with progress.stage("Sweep pool sizes at the design rate"):
        pool = recommend.recommend_pool_size(
            base_config,
            peak_rate_per_s=peak.rate_per_s,
            headroom=options.headroom,
            target_latency_ms=options.target_latency_ms,
            max_drop_rate=options.max_drop_rate,
            max_error_rate=options.max_error_rate,
            replications=settings.replications,
            seed=options.seed,
            duration_s=settings.sweep_duration_s,
            progress=True,
        )
        figures.append(_figure(recommend.plot_pool_sweep, pool, figures_dir / "pool_sweep.png"))
        if pool.pool_size is None:
            raise PlanError(
                f"no swept pool size meets every target at {pool.offered_rate_per_s:g} events/s "
                f"({pool.reason}): lower --peak-rate-per-s or --headroom, or relax the targets"
            )
        pool_size: int = pool.pool_size
        progress.print(f"pool size {pool_size}: {pool.reason}")
    return pool, pool_size


def _queue_stage(
    options: PlanOptions,
    progress: StageProgress,
    base_config: ModelConfig,
    pool_size: int,
    peak: _Peak,
) -> tuple[_Burst, QueueRecommendation]:
    from capacity import recommend

    settings = options.analysis
    burst = _Burst(
        rate_per_s=options.burst_rate_per_s or DEFAULT_BURST_FACTOR * peak.rate_per_s,
        duration_s=options.burst_duration_s or settings.burst_duration_s,
    )
    with progress.stage("Size the queue for a burst"):
        queue = recommend.recommend_queue_size(
            base_config,
            pool_size,
            burst_rate_per_s=burst.rate_per_s,
            burst_duration_s=burst.duration_s,
            steady_rate_per_s=peak.rate_per_s,
            replications=settings.replications,
            seed=options.seed,
        )
        progress.print(f"queue size {queue.queue_size}: {queue.reason}")
    return burst, queue


def _load_stage(
    options: PlanOptions,
    progress: StageProgress,
    measured: _Measured,
    base_config: ModelConfig,
    pool: PoolRecommendation,
    peak: _Peak,
) -> _Load:
    from capacity import recommend

    shard_count = options.shard_count or int(
        measured.bundle.supervisor_settings.get("shard_count", 1) or 1
    )
    with progress.stage("Estimate database and Redis load"):
        database = recommend.database_load(
            shard_count=shard_count,
            refresh_interval_ms=base_config.refresh.refresh_interval_ms,
            full_refresh_interval_ms=base_config.refresh.full_refresh_interval_ms,
            configs_total=options.configs_total or max(len(measured.bundle.configs), 1),
            changed_rows_per_s=options.changed_rows_per_s,
            page_size=_page_size(measured.bundle),
        )
        redis = recommend.redis_memory(
            event_rate_per_s=peak.rate_per_s * options.headroom,
            dedup_ttl_ms=_dedup_ttl_ms(measured.bundle),
            bytes_per_key=bytes_per_key(options),
            duplicate_ratio=base_config.duplicate_ratio,
            in_flight_s=_mean_e2e_latency_s(pool),
        )
    return _Load(shard_count=shard_count, database=database, redis=redis)


def _alert_stage(
    options: PlanOptions,
    progress: StageProgress,
    base_config: ModelConfig,
    pool: PoolRecommendation,
    pool_size: int,
    peak: _Peak,
    figures: list[Path | None],
) -> AlertPlan:
    """Plan the alert thresholds, write the rules file and append the detection figure."""
    from capacity import alert_plan

    settings = options.analysis
    figures_dir = options.out_dir / report_files.FIGURES_DIR
    with progress.stage("Plan the alert thresholds and write the rules file"):
        plan = alert_plan.plan_alerts(
            base_config,
            pool_size,
            capacity_rate_per_s=estimate_capacity_rate_per_s(pool, base_config),
            normal_rate_per_s=peak.rate_per_s,
            normal_duration_s=settings.alert_normal_duration_s,
            replications=settings.alert_replications,
            seed=options.seed,
            overload_start_s=settings.alert_overload_start_s,
            overload_duration_s=settings.alert_overload_duration_s,
            base_thresholds=base_thresholds_for(base_config),
        )
        write_rules(options.out_dir / report_files.RULES_FILE, plan.thresholds)
        figures.append(
            _figure(alert_plan.plot_detection, plan, figures_dir / "alert_detection.png")
        )
    return plan


def _notebooks_stage(
    options: PlanOptions, progress: StageProgress, measured: _Measured, peak: _Peak
) -> list[Path]:
    if not options.notebooks:
        progress.skip("Execute the notebooks", "--no-notebooks")
        return []
    with progress.stage("Execute the notebooks"):
        return execute_notebooks(
            options.out_dir,
            measured.bundle.path,
            fast=options.analysis.mode == "fast",
            extra_parameters={"peak_rate_per_s": peak.rate_per_s},
        )


def _recommendation(
    options: PlanOptions,
    *,
    measured: _Measured,
    peak: _Peak,
    burst: _Burst,
    load: _Load,
    calibration: Calibration,
    comparison: Comparison,
    pool: PoolRecommendation,
    pool_size: int,
    queue: QueueRecommendation,
    alerts: AlertPlan,
) -> Recommendation:
    """Collect the settings and the evidence of every stage for the report."""
    inputs = PlanInputs(
        peak_rate_per_s=peak.rate_per_s,
        peak_rate_source=peak.source,
        headroom=options.headroom,
        target_latency_ms=options.target_latency_ms,
        max_drop_rate=options.max_drop_rate,
        max_error_rate=options.max_error_rate,
        burst_rate_per_s=burst.rate_per_s,
        burst_duration_s=burst.duration_s,
        shard_count=load.shard_count,
        quick=options.quick,
        bundle_dir=str(measured.bundle.path),
        recorded_here=measured.recorded_here,
        dedup_backend=str(measured.bundle.supervisor_settings.get("dedup_backend", "unknown")),
        database_backend=_database_backend(options, measured),
    )
    refresh = calibration.model_config.refresh
    return Recommendation(
        inputs=inputs,
        pool_size=pool_size,
        pool_reason=pool.reason,
        pool_uncertainty=pool.uncertainty,
        predicted_at_peak=_predicted_row(pool),
        queue_max_size=queue.queue_size,
        queue_reason=queue.reason,
        queue_uncertainty=_queue_uncertainty(queue),
        thresholds=alerts.thresholds,
        refresh_interval_ms=refresh.refresh_interval_ms,
        full_refresh_interval_ms=refresh.full_refresh_interval_ms,
        database_load=load.database,
        redis_memory=load.redis,
        accuracy=comparison.accuracy_summary(),
        notes=tuple(getattr(calibration, "notes", ()) or ()),
    )


def prepare_report_dir(out_dir: Path) -> None:
    """Create the report folder; raise `PlanError` if it exists and is not empty."""
    if out_dir.exists() and not out_dir.is_dir():
        raise PlanError(f"--out {out_dir} is a file: pass a folder path")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise PlanError(
            f"report folder {out_dir} is not empty: pass a new --out folder or remove this one"
        )
    out_dir.mkdir(parents=True, exist_ok=True)


def check_services(options: PlanOptions) -> None:
    """Check the bundle folder and that Redis and the database respond, before any long work."""
    from supervisor.settings import mask_url

    if options.bundle_dir is not None:
        load_bundle(options.bundle_dir)
    if options.redis_url and (options.bundle_dir is None or options.verify):
        _ping_redis(options.redis_url, mask_url(options.redis_url) or "")
    if options.database_url and (options.bundle_dir is None or options.verify):
        _connect_database(options.database_url, mask_url(options.database_url) or "")


def _ping_redis(url: str, shown_url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except (redis.RedisError, ValueError) as error:
        raise PlanError(
            f"{REDIS_URL_VARIABLE}={shown_url} did not respond to PING ({error}): start Redis "
            "or unset the variable to dedup in process"
        ) from error
    finally:
        client.close()


def _connect_database(url: str, shown_url: str) -> None:
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(url)
    except (sa.exc.ArgumentError, ImportError) as error:
        raise PlanError(
            f"{DATABASE_URL_VARIABLE}={shown_url} is invalid ({error}): use a URL such as "
            "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ) from error
    try:
        with engine.connect():
            pass
    except sa.exc.SQLAlchemyError as error:
        raise PlanError(
            f"connection to {DATABASE_URL_VARIABLE}={shown_url} failed: start the database or "
            "unset the variable to use a fresh SQLite file"
        ) from error
    finally:
        engine.dispose()


def _record_or_load(options: PlanOptions, progress: StageProgress) -> _Measured:
    from capacity import measure, scenario

    if options.bundle_dir is not None:
        with progress.stage(f"Load the run bundle {options.bundle_dir}"):
            bundle = load_bundle(options.bundle_dir)
            return _Measured(bundle, measure.measure_steps(bundle), recorded_here=False)

    chosen = scenario.quick_scenario() if options.quick else scenario.full_scenario()
    title = f"Record the measured run ({chosen.name} scenario, {chosen.duration_s:.0f} s of load)"
    with progress.stage(title):
        bundle_dir = scenario.record_run(
            chosen,
            options.out_dir / report_files.BUNDLES_DIR / "measured",
            redis_url=options.redis_url,
            database_url=options.database_url,
            progress=progress.print,
        )
        bundle = load_bundle(bundle_dir)
        return _Measured(bundle, measure.measure_steps(bundle), recorded_here=True)


def choose_peak_rate(
    steps: pd.DataFrame, *, requested_rate_per_s: float | None, target_latency_ms: float
) -> tuple[float, str]:
    """Return the planned peak rate and where it came from.

    Without a requested rate, the peak is the highest step rate (the profile's `rate_per_s`)
    whose measured window had no drops and a p95 end-to-end latency within the target, so the
    plan sizes for load the measured setting demonstrably served.
    """
    if requested_rate_per_s is not None:
        return requested_rate_per_s, "given with --peak-rate-per-s"
    served = steps[
        (steps["drop_rate"].fillna(1.0) == 0.0)
        & (steps["p95_e2e_latency_s"].fillna(math.inf) * 1000 <= target_latency_ms)
    ]
    if served.empty:
        raise PlanError(
            "no measured load step was served without drops and within "
            f"{target_latency_ms:g} ms p95: pass --peak-rate-per-s with the planned peak"
        )
    best = served.loc[served["rate_per_s"].idxmax()]
    return float(best["rate_per_s"]), (
        f"highest measured step served without drops, step {int(best['load_step'])}"
    )


def _verification_stage(
    options: PlanOptions,
    progress: StageProgress,
    base_config: ModelConfig,
    pool_size: int,
    queue_size: int,
    rate_per_s: float,
) -> dict[str, Any]:
    title = "Verify the recommendation with a measured run"
    if not options.verify:
        reason = (
            "--no-verify" if options.bundle_dir is None
            else "the plan read a bundle; pass --verify to run one here"
        )
        progress.skip(title, reason)
        return skipped_verification(reason)
    with progress.stage(title):
        return verify_recommendation(
            options, progress, base_config, pool_size, queue_size, rate_per_s
        ).as_dict()


def verify_recommendation(
    options: PlanOptions,
    progress: StageProgress,
    base_config: ModelConfig,
    pool_size: int,
    queue_size: int,
    rate_per_s: float,
) -> Verification:
    """Run the service at the recommendation and compare it with the model's prediction.

    The prediction is a model run of the same setting: Poisson arrivals at `rate_per_s`, the
    recommended pool and queue, for the verification run's length.
    """
    from capacity import measure, scenario

    duration_s = options.analysis.verification_duration_s
    base_scenario = scenario.quick_scenario() if options.quick else scenario.full_scenario()
    run = replace(
        scenario.verification_scenario(base_scenario, pool_size, rate_per_s, duration_s),
        queue_max=queue_size,
    )
    # NOTE: record_run seeds the scenario's configs again with fresh ids, so in the measured
    # run's database the verification run would see twice the fan-out. A fresh SQLite file with
    # the same seed gives the same configs per channel, at SQLite's refresh cost.
    notes: tuple[str, ...] = ()
    if options.database_url:
        notes = (
            "the verification run used a fresh SQLite config database, because seeding the "
            "measured run's database again would double the fan-out per channel",
        )
    bundle_dir = scenario.record_run(
        run,
        options.out_dir / report_files.BUNDLES_DIR / "verification",
        redis_url=options.redis_url,
        database_url=None,
        progress=progress.print,
    )
    measured = measure.measure_steps(load_bundle(bundle_dir)).iloc[0]
    predicted = predict_setting(
        base_config,
        pool_size=pool_size,
        queue_size=queue_size,
        rate_per_s=rate_per_s,
        duration_s=duration_s,
        replications=options.analysis.replications,
        seed=options.seed,
    )
    return Verification(
        pool_size=pool_size,
        rate_per_s=rate_per_s,
        duration_s=duration_s,
        bundle_dir=str(bundle_dir),
        measured_p95_e2e_latency_s=float(measured["p95_e2e_latency_s"]),
        predicted_p95_e2e_latency_s=float(predicted["p95_e2e_latency_s"]),
        predicted_p95_e2e_latency_ci95_s=float(predicted["p95_e2e_latency_s_ci95"]),
        measured_drop_rate=float(measured["drop_rate"]),
        predicted_drop_rate=float(predicted["drop_rate"]),
        predicted_drop_rate_ci95=float(predicted["drop_rate_ci95"]),
        target_latency_ms=options.target_latency_ms,
        max_drop_rate=options.max_drop_rate,
        notes=notes,
    )


def predict_setting(
    base_config: ModelConfig,
    *,
    pool_size: int,
    queue_size: int,
    rate_per_s: float,
    duration_s: float,
    replications: int,
    seed: int,
) -> pd.Series:
    """Return the model's summary (means and `_ci95` half-widths) of one setting and rate."""
    config = base_config.with_changes(
        arrivals=ArrivalConfig(kind="poisson", rate_per_s=rate_per_s),
        pool_size=pool_size,
        queue_max=queue_size,
        duration_s=duration_s,
        warmup_s=None,
    )
    try:
        result = run_sweep(
            config, {"pool_size": [pool_size]}, replications, seed, workers=1, progress=False
        )
    except (SweepError, ConfigError) as error:
        raise PlanError(f"the model could not run the verification setting: {error}") from error
    return result.summary.iloc[0]


# --- Small adapters between the stages ------------------------------------------------------


def _figure(plot: Any, *args: Any) -> Path | None:
    """Draw one figure; a plotting failure is logged and leaves the figure out."""
    path: Path = args[-1]
    try:
        plot(*args)
    except (ValueError, KeyError, OSError) as error:
        logger.warning("figure %s was not drawn: %s", path.name, error)
        return None
    return path


def _predicted_row(pool: Any, pool_size: int | None = None) -> dict[str, Any]:
    table: pd.DataFrame = pool.table
    rows = table[table["pool_size"] == (pool_size if pool_size is not None else pool.pool_size)]
    return {} if rows.empty else dict(rows.iloc[0])


def estimate_capacity_rate_per_s(
    pool: Any, config: ModelConfig, pool_size: int | None = None
) -> float:
    """Estimate the event rate at which the recommended pool saturates, from its sweep row.

    Throughput over worker utilization is the rate that would keep every worker busy; the
    event-loop core caps it (`cpu_capacity_per_s`). The sweep ran at the design rate, so this
    extrapolates the service time of that rate to full load. That is optimistic when the
    execution service slows down with more concurrent calls, so overload runs built on it are
    at least as heavy as their factor.
    """
    from capacity.recommend import cpu_capacity_per_s

    row = _predicted_row(pool, pool_size)
    throughput_per_s = float(row.get("throughput_per_s", math.nan))
    utilization = float(row.get("utilization", math.nan))
    if not (throughput_per_s > 0 and utilization > 0):
        return float(pool.offered_rate_per_s)
    return min(throughput_per_s / min(utilization, 1.0), cpu_capacity_per_s(config))


def base_thresholds_for(config: ModelConfig) -> AlertThresholds:
    """Return the default thresholds with the full refresh interval of `config`.

    The stale-refresh alerts then match the refresh cadence the plan recommends.
    """
    return replace(
        default_thresholds(),
        full_refresh_interval_ms=round(config.refresh.full_refresh_interval_ms),
    )


def _mean_e2e_latency_s(pool: Any) -> float:
    summary: pd.DataFrame = pool.sweep.summary
    rows = summary[summary["pool_size"] == pool.pool_size]
    value = float(rows.iloc[0]["mean_e2e_latency_s"]) if not rows.empty else math.nan
    return value if math.isfinite(value) and value > 0 else 1.0


def _queue_uncertainty(queue: Any) -> dict[str, Any]:
    return {
        "max_depth_mean": queue.max_depth_mean,
        "max_depth_ci95": queue.max_depth_ci95,
        "max_depth_worst": queue.max_depth_worst,
        "check_dropped": queue.check_dropped,
        "check_offered": queue.check_offered,
        "margin": queue.margin,
    }


def bytes_per_key(options: PlanOptions) -> tuple[float, float]:
    """Measure the dedup key size in the given Redis, or assume a range without one."""
    from capacity.recommend import measure_bytes_per_key

    if options.redis_url:
        prefix = f"capacity-plan:keysize:{os.getpid()}:"
        return measure_bytes_per_key(options.redis_url, prefix).range
    # NOTE: an estimate. MEMORY USAGE on Redis 7.0.15 gave 136 bytes for a 65-character key
    # with a TTL; the range allows for shorter and longer event ids. Set SUPERVISOR_REDIS_URL
    # to measure the Redis that will be used.
    return ASSUMED_BYTES_PER_KEY


def _page_size(bundle: RunBundle) -> int:
    return int(bundle.supervisor_settings.get("config_refresh_page_size", 1000) or 1000)


def _dedup_ttl_ms(bundle: RunBundle) -> float:
    return float(bundle.supervisor_settings.get("dedup_ttl_ms", 86_400_000) or 86_400_000)


def _database_backend(options: PlanOptions, measured: _Measured) -> str:
    if not measured.recorded_here:
        return "unknown (read from the bundle)"
    url = options.database_url or "sqlite"
    return "postgresql" if url.startswith("postgresql") else "sqlite"

