"""Recommendations from the calibrated model: pool size, queue size, database and Redis load.

Pool size: the model runs at the planned peak rate times a headroom factor for every candidate
pool size, on common random numbers (replication `r` of every pool gets the same arrivals and
draws). A pool size meets a constraint when the upper end of the metric's 95% confidence
interval, `mean + ci95`, is at or below the target, so a pass holds with about 97.5% one-sided
confidence. The recommendation is the smallest pool size that meets all three constraints:
p95 end-to-end latency, drop rate and execution error rate.

Queue size: the model replays a burst at the recommended pool with an unbounded queue, and the
recommended capacity is the largest queue depth seen in any replication times a margin. The
capacity is then checked on fresh replications, with other seeds.

Database and Redis load are arithmetic on the refresh cadence and the dedup key lifetimes,
carried over a (low, high) range of each uncertain input.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from simulation.analysis import SUMMARY_KEYS, ratio_estimate, summarize_run, t_half_width
from simulation.config import ArrivalConfig, ModelConfig
from simulation.model import run_replication
from simulation.monitor import RunRecords, max_depth
from simulation.service import mean_base_latency_s
from simulation.sweep import REPLICATION_COLUMN, SweepResult

logger = logging.getLogger(__name__)

LATENCY_CONSTRAINT = "p95_e2e_latency"
DROP_CONSTRAINT = "drop_rate"
ERROR_CONSTRAINT = "execution_error_rate"
CONSTRAINTS: tuple[str, ...] = (LATENCY_CONSTRAINT, DROP_CONSTRAINT, ERROR_CONSTRAINT)
# Metric column in the sweep table that each constraint judges.
CONSTRAINT_METRICS: dict[str, str] = {
    LATENCY_CONSTRAINT: "p95_e2e_latency_s",
    DROP_CONSTRAINT: "drop_rate",
    ERROR_CONSTRAINT: "execution_error_rate",
}
# A queue this large never fills in a burst run, so the run shows the depth a burst needs.
UNBOUNDED_QUEUE_MAX = 100_000_000
MAX_DEFAULT_POOL_SIZES = 16


class RecommendationError(ValueError):
    """Inputs of a recommendation are invalid or describe no usable model run."""


def _require_positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise RecommendationError(f"{name}={value!r} is invalid: use a finite number above 0")


# --- Sweep over pool sizes with the execution error rate ---------------------------------------


@dataclass(frozen=True)
class _PoolTask:
    config: ModelConfig
    replication: int


def _execution_totals(run: RunRecords, warmup_s: float) -> tuple[int, int]:
    """Return execution calls and failed calls of events completed after the warm-up."""
    events = run.events
    completed = events.completed & (events.end_s >= warmup_s)
    executions = int(events.executions[completed].sum())
    errors = int(events.execution_errors[completed].sum())
    return executions, errors


def _run_pool_task(task: _PoolTask) -> dict[str, Any]:
    run = run_replication(task.config, task.replication)
    summary = summarize_run(run, task.config.warmup_s)
    executions, errors = _execution_totals(run, summary.warmup_s)

    row: dict[str, Any] = {"pool_size": task.config.pool_size, REPLICATION_COLUMN: task.replication}
    row.update(summary.metrics)
    row["warmup_s"] = summary.warmup_s
    for name in ("offered", "dropped", "lag_sum_s", "lag_count", "e2e_sum_s", "e2e_count"):
        row[name] = float(summary.total(name))
    row["executions"] = float(executions)
    row["execution_errors"] = float(errors)
    row["execution_error_rate"] = errors / executions if executions else math.nan
    return row


def sweep_pool_sizes(
    config: ModelConfig,
    pool_sizes: Sequence[int],
    *,
    replications: int,
    seed: int,
    workers: int | None = None,
    progress: bool = True,
) -> SweepResult:
    """Run `config` at each pool size on common random numbers and keep execution totals.

    The result is a `simulation.sweep.SweepResult` over `pool_size`, like `run_sweep` returns,
    whose `runs` also have `executions`, `execution_errors` and `execution_error_rate` per
    replication. `run_sweep` keeps only the model's summary keys, which lack the execution
    error rate, so this runs the same replications itself.
    """
    seeded = config.with_changes(seed=seed, replications=replications)
    tasks = [
        _PoolTask(seeded.with_changes(pool_size=int(pool_size)), replication)
        for pool_size in pool_sizes
        for replication in range(replications)
    ]
    workers = workers if workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        raise RecommendationError(f"workers={workers} is invalid: use 1 or more processes")

    logger.info(
        "Pool sweep started: %d pool sizes x %d replications, %d worker processes",
        len(pool_sizes),
        replications,
        workers,
    )
    rows = _execute(tasks, workers, progress)
    runs = pd.DataFrame(rows).sort_values(["pool_size", REPLICATION_COLUMN]).reset_index(drop=True)
    return SweepResult(runs=runs, grid_fields=("pool_size",), metrics=SUMMARY_KEYS)


def _execute(tasks: list[_PoolTask], workers: int, progress: bool) -> list[dict[str, Any]]:
    bar = tqdm(total=len(tasks), disable=not progress, unit="run", desc="pool sweep")
    try:
        if workers == 1:
            rows = []
            for task in tasks:
                rows.append(_run_pool_task(task))
                bar.update()
            return rows
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = []
            for row in pool.map(_run_pool_task, tasks):
                results.append(row)
                bar.update()
            return results
    finally:
        bar.close()


# --- Pool size ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PoolTargets:
    """Targets a pool size must meet at the offered rate; each is judged on its 95% CI."""

    target_latency_ms: float = 250.0
    max_drop_rate: float = 0.001
    max_error_rate: float = 0.02

    def limit(self, constraint: str) -> float:
        """Return the target of `constraint` in the unit of its metric column."""
        if constraint == LATENCY_CONSTRAINT:
            return self.target_latency_ms / 1000.0
        if constraint == DROP_CONSTRAINT:
            return self.max_drop_rate
        return self.max_error_rate


@dataclass(frozen=True)
class PoolRecommendation:
    """Smallest pool size meeting every target, with the sweep and table behind it.

    `pool_size` is None when no swept pool size meets every target; `binding_constraints` then
    names the constraints that no pool size meets together with the others, and `reason` says
    why. `table` has one row per pool size (columns in `pool_table`).
    """

    pool_size: int | None
    sweep: SweepResult
    table: pd.DataFrame
    reason: str
    uncertainty: str
    offered_rate_per_s: float
    targets: PoolTargets
    binding_constraints: tuple[str, ...] = ()
    straddling_pool_sizes: tuple[int, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """Return the decision and its evidence as JSON-ready values."""
        return {
            "pool_size": self.pool_size,
            "offered_rate_per_s": self.offered_rate_per_s,
            "targets": {
                "target_latency_ms": self.targets.target_latency_ms,
                "max_drop_rate": self.targets.max_drop_rate,
                "max_error_rate": self.targets.max_error_rate,
            },
            "binding_constraints": list(self.binding_constraints),
            "straddling_pool_sizes": list(self.straddling_pool_sizes),
            "reason": self.reason,
            "uncertainty": self.uncertainty,
        }


def default_pool_sizes(config: ModelConfig, rate_per_s: float) -> list[int]:
    """Return up to 16 pool sizes around the offered load of `config` at `rate_per_s`.

    The offered load (busy workers needed on average) lies between `rate x mean call latency`
    and `rate x mean calls per event x mean call latency`, because an event's calls run in
    parallel and the event ends with its slowest call. The range covers half the lower bound to
    twice the upper bound plus two.
    """
    latency_s = mean_base_latency_s(config.execution)
    admitted_per_s = rate_per_s * (1.0 - config.duplicate_ratio)
    lower = admitted_per_s * latency_s
    upper = admitted_per_s * latency_s * max(_mean_fanout(config), 1.0)
    first = max(1, math.floor(lower * 0.5))
    last = max(first + 1, math.ceil(upper * 2.0) + 2)
    sizes = np.unique(np.round(np.linspace(first, last, MAX_DEFAULT_POOL_SIZES)).astype(int))
    return [int(size) for size in sizes]


def _mean_fanout(config: ModelConfig) -> float:
    fanout = config.fanout
    if fanout.kind == "fixed":
        return float(fanout.fixed_count)
    ranks = np.arange(1, len(fanout.channel_config_counts) + 1, dtype=np.float64)
    weights = ranks ** (-fanout.zipf_exponent)
    counts = np.asarray(fanout.channel_config_counts, dtype=np.float64)
    return float(np.dot(weights / weights.sum(), counts))


def cpu_capacity_per_s(config: ModelConfig) -> float:
    """Return the arrival rate at which the one event-loop core is fully busy (inf if no cost).

    Each arrival costs the ingest cost, each non-duplicate arrival the worker cost too, and
    refresh stalls take their share of the core's time first.
    """
    cost_s = (
        config.cpu.ingest_cost_ms + (1.0 - config.duplicate_ratio) * config.cpu.worker_cost_ms
    ) / 1000.0
    refresh = config.refresh
    stall_share = (
        refresh.incremental_stall_ms / refresh.refresh_interval_ms
        + refresh.full_stall_ms / refresh.full_refresh_interval_ms
    )
    if cost_s <= 0:
        return math.inf
    return max(0.0, 1.0 - stall_share) / cost_s


def peak_config(base_config: ModelConfig, rate_per_s: float, duration_s: float) -> ModelConfig:
    """Return `base_config` with Poisson arrivals at `rate_per_s` for `duration_s` seconds.

    The base config's arrival process (often the measured step schedule) is replaced, and every
    other setting (fan-out, execution, CPU, refresh, queue capacity) is kept.
    """
    _require_positive("rate_per_s", rate_per_s)
    _require_positive("duration_s", duration_s)
    arrivals = ArrivalConfig(kind="poisson", rate_per_s=float(rate_per_s))
    warmup_s = base_config.warmup_s
    if warmup_s is not None and warmup_s >= duration_s:
        warmup_s = None
    return base_config.with_changes(
        arrivals=arrivals, duration_s=float(duration_s), warmup_s=warmup_s
    )


def pool_table(sweep: SweepResult, targets: PoolTargets) -> pd.DataFrame:
    """Summarise a pool sweep per pool size and judge each constraint on its 95% CI.

    Columns: `pool_size` and `replications`. Each constraint metric has its mean, `_ci95` and
    `_upper` (mean + ci95, or the mean alone with one replication). Each constraint has
    `<constraint>_ok` and `<constraint>_straddles` (the interval contains the target). Then come
    `passes` and, for context,
    `mean_lag_s`,
    `p95_lag_s`, `utilization`, `throughput_per_s`, `mean_queue_depth`.
    """
    summary = sweep.summary.set_index("pool_size")
    runs = sweep.runs
    rows: list[dict[str, Any]] = []
    for pool_size, group in runs.groupby("pool_size", sort=True):
        error_rate, error_ci95 = ratio_estimate(
            group["execution_errors"].tolist(), group["executions"].tolist()
        )
        point = summary.loc[pool_size]
        row: dict[str, Any] = {"pool_size": int(pool_size), "replications": len(group)}
        values = {
            "p95_e2e_latency_s": (point["p95_e2e_latency_s"], point["p95_e2e_latency_s_ci95"]),
            "drop_rate": (point["drop_rate"], point["drop_rate_ci95"]),
            "execution_error_rate": (error_rate, error_ci95),
        }
        passes = True
        for constraint, metric in CONSTRAINT_METRICS.items():
            mean, ci95 = (float(value) for value in values[metric])
            judged = _judge(mean, ci95, targets.limit(constraint))
            row[metric] = mean
            row[f"{metric}_ci95"] = ci95
            row[f"{metric}_upper"] = judged.upper
            row[f"{constraint}_ok"] = judged.ok
            row[f"{constraint}_straddles"] = judged.straddles
            passes = passes and judged.ok
        row["passes"] = passes
        for metric in (
            "mean_lag_s",
            "p95_lag_s",
            "utilization",
            "throughput_per_s",
            "mean_queue_depth",
        ):
            row[metric] = float(point[metric])
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class _Judgement:
    upper: float
    ok: bool
    straddles: bool


def _judge(mean: float, ci95: float, limit: float) -> _Judgement:
    """Apply the CI rule: pass when `mean + ci95 <= limit`; a NaN mean fails."""
    if math.isnan(mean):
        return _Judgement(upper=math.nan, ok=False, straddles=False)
    half_width = 0.0 if math.isnan(ci95) else ci95
    upper = mean + half_width
    straddles = mean - half_width <= limit < upper
    return _Judgement(upper=upper, ok=upper <= limit, straddles=straddles)


def recommend_pool_size(
    base_config: ModelConfig,
    *,
    peak_rate_per_s: float,
    headroom: float = 1.3,
    target_latency_ms: float = 250.0,
    max_drop_rate: float = 0.001,
    max_error_rate: float = 0.02,
    pool_sizes: Sequence[int] | None = None,
    replications: int = 5,
    seed: int = 1,
    duration_s: float = 600.0,
    workers: int | None = None,
    progress: bool = True,
) -> PoolRecommendation:
    """Recommend the smallest pool size meeting every target at `peak_rate_per_s x headroom`.

    Each pool size runs `replications` replications of `duration_s` simulated seconds on
    common random numbers. A constraint passes when its metric's `mean + ci95` is at or below
    its target (see the module docstring).
    """
    _require_positive("peak_rate_per_s", peak_rate_per_s)
    if not headroom >= 1.0:
        raise RecommendationError(f"headroom={headroom!r} is invalid: use a factor of 1 or more")
    if replications < 1:
        raise RecommendationError(f"replications={replications} is invalid: use 1 or more")
    targets = PoolTargets(
        target_latency_ms=target_latency_ms,
        max_drop_rate=max_drop_rate,
        max_error_rate=max_error_rate,
    )
    offered_rate_per_s = peak_rate_per_s * headroom
    config = peak_config(base_config, offered_rate_per_s, duration_s)
    sizes = (
        sorted(set(pool_sizes)) if pool_sizes else default_pool_sizes(config, offered_rate_per_s)
    )
    if sizes[0] < 1:
        raise RecommendationError(f"pool_sizes={list(sizes)} is invalid: use sizes of 1 or more")

    sweep = sweep_pool_sizes(
        config, sizes, replications=replications, seed=seed, workers=workers, progress=progress
    )
    table = pool_table(sweep, targets)

    passing = table.loc[table["passes"], "pool_size"]
    pool_size = int(passing.min()) if not passing.empty else None
    binding = () if pool_size is not None else binding_constraints(table)
    reason = _pool_reason(pool_size, table, targets, config, offered_rate_per_s, binding)
    straddling = _straddling_pool_sizes(table)
    uncertainty = _pool_uncertainty(pool_size, sweep, straddling, replications)
    logger.info("Pool size recommendation: %s (%s)", pool_size, reason)
    return PoolRecommendation(
        pool_size=pool_size,
        sweep=sweep,
        table=table,
        reason=reason,
        uncertainty=uncertainty,
        offered_rate_per_s=offered_rate_per_s,
        targets=targets,
        binding_constraints=binding,
        straddling_pool_sizes=straddling,
    )


def binding_constraints(table: pd.DataFrame) -> tuple[str, ...]:
    """Return the constraints that keep every pool size in `table` from passing.

    A constraint that no pool size meets binds. When each constraint is met somewhere but
    never all together, the constraints that fail among the pool sizes meeting the latency and
    drop targets bind (typically the execution error rate, which rises with the pool).
    """
    never_met = tuple(c for c in CONSTRAINTS if not table[f"{c}_ok"].any())
    if never_met:
        return never_met
    queueing_ok = table[f"{LATENCY_CONSTRAINT}_ok"] & table[f"{DROP_CONSTRAINT}_ok"]
    if not queueing_ok.any():
        return (LATENCY_CONSTRAINT, DROP_CONSTRAINT)
    return (ERROR_CONSTRAINT,)


def _pool_reason(
    pool_size: int | None,
    table: pd.DataFrame,
    targets: PoolTargets,
    config: ModelConfig,
    offered_rate_per_s: float,
    binding: tuple[str, ...],
) -> str:
    goals = (
        f"p95 end-to-end latency <= {targets.target_latency_ms:g} ms, drop rate <= "
        f"{targets.max_drop_rate:g} and execution error rate <= {targets.max_error_rate:g}"
    )
    if pool_size is not None:
        return (
            f"{pool_size} is the smallest pool size whose 95% upper bounds meet {goals} at "
            f"{offered_rate_per_s:g} events/s"
        )
    largest = int(table["pool_size"].max())
    causes = [_binding_cause(name, config, offered_rate_per_s, largest) for name in binding]
    return (
        f"no pool size from {int(table['pool_size'].min())} to {largest} meets {goals} at "
        f"{offered_rate_per_s:g} events/s; binding: " + "; ".join(causes)
    )


def _binding_cause(constraint: str, config: ModelConfig, rate_per_s: float, largest: int) -> str:
    cpu_cap_per_s = cpu_capacity_per_s(config)
    if constraint in (LATENCY_CONSTRAINT, DROP_CONSTRAINT) and rate_per_s >= cpu_cap_per_s:
        return (
            f"{constraint}: the event-loop CPU caps throughput at about {cpu_cap_per_s:.4g} "
            "events/s whatever the pool size; add shards or cut the per-event CPU cost"
        )
    execution = config.execution
    if constraint == ERROR_CONSTRAINT and execution.capacity_limited:
        return (
            f"{constraint}: the execution service's capacity ({execution.capacity_concurrent} "
            f"concurrent calls, 429 above {execution.effective_limit_concurrent}) is exceeded by "
            "the pool sizes that are large enough for the latency target; raise its capacity "
            "or lower the rate per instance"
        )
    if constraint == ERROR_CONSTRAINT:
        return (
            f"{constraint}: errors do not depend on the pool here "
            f"(error probability {execution.error_probability:g} per attempt)"
        )
    return f"{constraint}: not met even at pool size {largest}; sweep larger pool sizes"


def _straddling_pool_sizes(table: pd.DataFrame) -> tuple[int, ...]:
    straddles = np.zeros(len(table), dtype=bool)
    for constraint in CONSTRAINTS:
        straddles |= table[f"{constraint}_straddles"].to_numpy(dtype=bool)
    return tuple(int(size) for size in table.loc[straddles, "pool_size"])


def _pool_uncertainty(
    pool_size: int | None,
    sweep: SweepResult,
    straddling: tuple[int, ...],
    replications: int,
) -> str:
    parts: list[str] = []
    if replications < 2:
        parts.append("one replication per pool size gives no confidence interval")
    if straddling:
        parts.append(
            f"pool sizes {list(straddling)} have a 95% CI containing a target, so more "
            "replications could change their verdict"
        )
    else:
        parts.append("no pool size has a 95% CI containing a target")
    sizes = sorted(sweep.runs["pool_size"].unique())
    if pool_size is not None and replications >= 2 and pool_size in sizes:
        index = sizes.index(pool_size)
        if index > 0:
            parts.append(_paired_text(sweep, int(sizes[index - 1]), pool_size))
    return "; ".join(parts)


def _paired_text(sweep: SweepResult, lower: int, higher: int) -> str:
    pairs = sweep.paired_differences("p95_e2e_latency_s", by="pool_size")
    row = pairs[(pairs["pool_size_from"] == lower) & (pairs["pool_size_to"] == higher)].iloc[0]
    return (
        f"going from {lower} to {higher} workers changes p95 end-to-end latency by "
        f"{row['mean_difference'] * 1000:.3g} ms +/- {row['paired_ci95'] * 1000:.2g} ms "
        "(paired 95% CI)"
    )


# --- Queue size ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueRecommendation:
    """Queue capacity that absorbs a burst at a pool size without drops, with the evidence.

    Depths are in events and times in seconds. `max_depth_*` describe the largest depth per
    replication with an unbounded queue. `burst_p95_lag_s` and `burst_max_lag_s` are over the
    events enqueued from the burst start to the end of the run. `check_dropped` counts drops
    on the check replications (other seeds) at `queue_size`. `lag_at_full_queue_s` is how long
    the last event of a full queue waits at the throughput measured during the burst.
    """

    queue_size: int
    pool_size: int
    steady_rate_per_s: float
    burst_rate_per_s: float
    burst_duration_s: float
    margin: float
    max_depth_mean: float
    max_depth_ci95: float
    max_depth_worst: int
    fluid_backlog: float
    burst_p95_lag_s: float
    burst_max_lag_s: float
    burst_throughput_per_s: float
    lag_at_full_queue_s: float
    check_replications: int
    check_dropped: int
    check_offered: int
    table: pd.DataFrame
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """Return the decision and its evidence as JSON-ready values (without the table)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "table"}


def burst_config(
    base_config: ModelConfig,
    pool_size: int,
    *,
    steady_rate_per_s: float,
    burst_rate_per_s: float,
    burst_start_s: float,
    burst_duration_s: float,
    recovery_s: float,
    queue_max: int,
) -> ModelConfig:
    """Return `base_config` with a steady-burst-steady schedule, a pool size and a queue size."""
    schedule = (
        (0.0, float(steady_rate_per_s)),
        (float(burst_start_s), float(burst_rate_per_s)),
        (float(burst_start_s + burst_duration_s), float(steady_rate_per_s)),
    )
    return base_config.with_changes(
        arrivals=ArrivalConfig(kind="schedule", schedule=schedule),
        pool_size=int(pool_size),
        queue_max=int(queue_max),
        duration_s=float(burst_start_s + burst_duration_s + recovery_s),
        warmup_s=0.0,
    )


def _steady_rate(base_config: ModelConfig, steady_rate_per_s: float | None) -> float:
    if steady_rate_per_s is not None:
        _require_positive("steady_rate_per_s", steady_rate_per_s)
        return float(steady_rate_per_s)
    if base_config.arrivals.kind == "poisson":
        return float(base_config.arrivals.rate_per_s)
    raise RecommendationError(
        f"steady_rate_per_s is missing and the base config's arrivals are "
        f"{base_config.arrivals.kind!r}: pass steady_rate_per_s, the rate before the burst"
    )


def _burst_row(run: RunRecords, burst_start_s: float, burst_end_s: float) -> dict[str, float]:
    events = run.events
    after_start = events.started & (events.enqueue_s >= burst_start_s)
    lags = events.lag_s[after_start]
    finished_in_burst = (
        events.completed & (events.end_s >= burst_start_s) & (events.end_s < burst_end_s)
    )
    return {
        "max_depth": float(max_depth(events, burst_start_s, run.duration_s)),
        "p95_lag_s": float(np.percentile(lags, 95)) if lags.size else math.nan,
        "max_lag_s": float(lags.max()) if lags.size else math.nan,
        "throughput_per_s": float(finished_in_burst.sum()) / (burst_end_s - burst_start_s),
        "dropped": float(events.dropped.sum()),
        "offered": float((~events.duplicate & ~np.isnan(events.enqueue_s)).sum()),
    }


def recommend_queue_size(
    base_config: ModelConfig,
    pool_size: int,
    *,
    burst_rate_per_s: float,
    burst_duration_s: float,
    steady_rate_per_s: float | None = None,
    margin: float = 1.5,
    settle_s: float = 60.0,
    recovery_s: float | None = None,
    replications: int = 5,
    seed: int = 1,
) -> QueueRecommendation:
    """Recommend the queue capacity that absorbs a burst at `pool_size` without drops.

    `burst_rate_per_s` is the total arrival rate during the burst, which lasts
    `burst_duration_s` after `settle_s` seconds at `steady_rate_per_s` (default: the base
    config's Poisson rate). Then the steady rate resumes for `recovery_s` (default: the burst
    duration). The capacity is `ceil(margin x largest depth in any replication)`, at least 1.
    """
    steady = _steady_rate(base_config, steady_rate_per_s)
    _require_positive("burst_rate_per_s", burst_rate_per_s)
    _require_positive("burst_duration_s", burst_duration_s)
    if not margin >= 1.0:
        raise RecommendationError(f"margin={margin!r} is invalid: use a factor of 1 or more")
    if replications < 1:
        raise RecommendationError(f"replications={replications} is invalid: use 1 or more")
    recovery = burst_duration_s if recovery_s is None else recovery_s
    burst_end_s = settle_s + burst_duration_s

    def config_for(queue_max: int, run_seed: int) -> ModelConfig:
        config = burst_config(
            base_config,
            pool_size,
            steady_rate_per_s=steady,
            burst_rate_per_s=burst_rate_per_s,
            burst_start_s=settle_s,
            burst_duration_s=burst_duration_s,
            recovery_s=recovery,
            queue_max=queue_max,
        )
        return config.with_changes(seed=run_seed)

    unbounded = config_for(UNBOUNDED_QUEUE_MAX, seed)
    rows = [
        {"replication": r, **_burst_row(run_replication(unbounded, r), settle_s, burst_end_s)}
        for r in range(replications)
    ]
    table = pd.DataFrame(rows)
    worst = int(table["max_depth"].max())
    queue_size = max(1, math.ceil(margin * worst))

    check_seed = seed + 1_000_003
    checked = config_for(queue_size, check_seed)
    check_rows = [
        _burst_row(run_replication(checked, r), settle_s, burst_end_s) for r in range(replications)
    ]
    check_dropped = int(sum(row["dropped"] for row in check_rows))
    check_offered = int(sum(row["offered"] for row in check_rows))

    throughput = float(table["throughput_per_s"].mean())
    fluid_backlog = max(0.0, burst_rate_per_s - throughput) * burst_duration_s
    reason = (
        f"the largest depth of {replications} burst replications at pool size {pool_size} was "
        f"{worst} events; times margin {margin:g} gives {queue_size}; "
        f"{check_dropped} of {check_offered} events dropped on {replications} check "
        "replications with other seeds"
    )
    logger.info("Queue size recommendation: %d (%s)", queue_size, reason)
    return QueueRecommendation(
        queue_size=queue_size,
        pool_size=int(pool_size),
        steady_rate_per_s=steady,
        burst_rate_per_s=float(burst_rate_per_s),
        burst_duration_s=float(burst_duration_s),
        margin=float(margin),
        max_depth_mean=float(table["max_depth"].mean()),
        max_depth_ci95=t_half_width(table["max_depth"].tolist()),
        max_depth_worst=worst,
        fluid_backlog=fluid_backlog,
        burst_p95_lag_s=float(table["p95_lag_s"].mean()),
        burst_max_lag_s=float(table["max_lag_s"].max()),
        burst_throughput_per_s=throughput,
        lag_at_full_queue_s=queue_size / throughput if throughput > 0 else math.inf,
        check_replications=replications,
        check_dropped=check_dropped,
        check_offered=check_offered,
        table=table,
        reason=reason,
    )


# --- Database and Redis load --------------------------------------------------------------------

RangeInput = float | tuple[float, float]


@dataclass(frozen=True)
class Estimate:
    """A computed quantity: its value from the central inputs and its low and high bounds."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        """Return the three numbers as a dict."""
        return {"value": self.value, "low": self.low, "high": self.high}


def _as_range(name: str, value: RangeInput) -> tuple[float, float, float]:
    """Return (central, low, high) of a number or a (low, high) pair; central is the midpoint."""
    if isinstance(value, tuple):
        if len(value) != 2:
            raise RecommendationError(f"{name}={value!r} is invalid: give a number or (low, high)")
        low, high = float(value[0]), float(value[1])
    else:
        low = high = float(value)
    if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high):
        raise RecommendationError(
            f"{name}={value!r} is invalid: give a number >= 0 or a pair (low, high) with "
            "0 <= low <= high"
        )
    return (low + high) / 2.0, low, high


def _estimate(function: Any, *ranges: tuple[float, float, float]) -> Estimate:
    """Evaluate a function that rises with every argument at the central, low and high inputs."""
    return Estimate(
        value=float(function(*(r[0] for r in ranges))),
        low=float(function(*(r[1] for r in ranges))),
        high=float(function(*(r[2] for r in ranges))),
    )


def pages_per_read(rows: float, page_size: int) -> float:
    """Return the queries of one keyset-paged read of `rows` rows.

    The reader stops at the first page shorter than `page_size`, so a read of `n` rows takes
    `floor(n / page_size) + 1` queries (an exact multiple costs one extra, empty page).
    """
    return math.floor(rows / page_size) + 1


@dataclass(frozen=True)
class DatabaseLoad:
    """Queries and rows per second that the config refreshes put on the database.

    Every shard caches the whole table, so each shard runs the same reads and the totals are
    `shard_count` times one instance's. Values are upper estimates: a refresh interval counts
    from the end of the previous refresh, so real refreshes come slightly less often.
    """

    shard_count: int
    incremental_rows_per_refresh: Estimate
    incremental_queries_per_s: Estimate
    incremental_rows_per_s: Estimate
    full_queries_per_s: Estimate
    full_rows_per_s: Estimate
    queries_per_s: Estimate
    rows_per_s: Estimate
    notes: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        """Return every figure as JSON-ready values."""
        data: dict[str, Any] = {"shard_count": self.shard_count, "notes": list(self.notes)}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, Estimate):
                data[name] = value.as_dict()
        return data


def database_load(
    *,
    shard_count: int,
    refresh_interval_ms: float,
    full_refresh_interval_ms: float,
    configs_total: RangeInput,
    changed_rows_per_s: RangeInput,
    page_size: int,
    overlap_ms: float = 5000.0,
    active_fraction: RangeInput = 1.0,
) -> DatabaseLoad:
    """Estimate the refresh load on the database across all shards.

    An incremental refresh reads the rows changed since its watermark minus `overlap_ms`, so
    about `changed_rows_per_s x (refresh_interval + overlap)` rows. A full refresh reads the
    largest `"updatedAt"` in one query and then every active, auto-executing row
    (`configs_total x active_fraction`). Each read is keyset-paged by `page_size`.
    `configs_total`, `changed_rows_per_s` and `active_fraction` take a number or a
    (low, high) range, which is carried to the low and high bounds of every figure.
    """
    if not (isinstance(shard_count, int) and shard_count >= 1):
        raise RecommendationError(f"shard_count={shard_count!r} is invalid: use an integer >= 1")
    if not (isinstance(page_size, int) and page_size >= 1):
        raise RecommendationError(f"page_size={page_size!r} is invalid: use an integer >= 1")
    _require_positive("refresh_interval_ms", refresh_interval_ms)
    _require_positive("full_refresh_interval_ms", full_refresh_interval_ms)
    if not (math.isfinite(overlap_ms) and overlap_ms >= 0):
        raise RecommendationError(f"overlap_ms={overlap_ms!r} is invalid: use 0 or more")
    configs = _as_range("configs_total", configs_total)
    changed = _as_range("changed_rows_per_s", changed_rows_per_s)
    active = _as_range("active_fraction", active_fraction)
    if active[2] > 1.0:
        raise RecommendationError(f"active_fraction={active_fraction!r} is invalid: use at most 1")

    incremental_s = refresh_interval_ms / 1000.0
    full_s = full_refresh_interval_ms / 1000.0
    read_window_s = incremental_s + overlap_ms / 1000.0

    def incremental_rows(rate: float) -> float:
        return rate * read_window_s

    def incremental_queries(rate: float) -> float:
        return shard_count * pages_per_read(incremental_rows(rate), page_size) / incremental_s

    def full_queries(total: float, fraction: float) -> float:
        return shard_count * (1 + pages_per_read(total * fraction, page_size)) / full_s

    def full_rows(total: float, fraction: float) -> float:
        return shard_count * total * fraction / full_s

    incremental_q = _estimate(incremental_queries, changed)
    incremental_r = _estimate(
        lambda rate: shard_count * incremental_rows(rate) / incremental_s, changed
    )
    full_q = _estimate(full_queries, configs, active)
    full_r = _estimate(full_rows, configs, active)
    return DatabaseLoad(
        shard_count=shard_count,
        incremental_rows_per_refresh=_estimate(incremental_rows, changed),
        incremental_queries_per_s=incremental_q,
        incremental_rows_per_s=incremental_r,
        full_queries_per_s=full_q,
        full_rows_per_s=full_r,
        queries_per_s=_sum_estimates(incremental_q, full_q),
        rows_per_s=_sum_estimates(incremental_r, full_r),
        notes=(
            "every shard reads the whole table, so the load grows with the shard count",
            "the overlap window makes each incremental refresh read recent rows again",
        ),
    )


def _sum_estimates(first: Estimate, second: Estimate) -> Estimate:
    return Estimate(
        value=first.value + second.value, low=first.low + second.low, high=first.high + second.high
    )


@dataclass(frozen=True)
class RedisMemory:
    """Dedup keys alive in Redis and the memory they take, with low and high bounds.

    `done_keys` are the done marks of processed events, alive for the dedup TTL; `claim_keys`
    are claims of events in flight. Memory is keys x bytes per key x fragmentation ratio.
    """

    done_keys: Estimate
    claim_keys: Estimate
    keys: Estimate
    memory_bytes: Estimate

    def as_dict(self) -> dict[str, Any]:
        """Return every figure as JSON-ready values."""
        return {
            "done_keys": self.done_keys.as_dict(),
            "claim_keys": self.claim_keys.as_dict(),
            "keys": self.keys.as_dict(),
            "memory_bytes": self.memory_bytes.as_dict(),
            "memory_mib": {k: v / 2**20 for k, v in self.memory_bytes.as_dict().items()},
        }


def redis_memory(
    *,
    event_rate_per_s: RangeInput,
    dedup_ttl_ms: float,
    bytes_per_key: RangeInput,
    duplicate_ratio: float = 0.0,
    in_flight_s: RangeInput = 1.0,
    fragmentation_ratio: RangeInput = 1.0,
) -> RedisMemory:
    """Estimate the dedup keys alive in Redis and their memory, by Little's law.

    Unique events arrive at `event_rate_per_s x (1 - duplicate_ratio)`. Each leaves a done
    mark for `dedup_ttl_ms`, and keeps a claim while in flight for about `in_flight_s` (the
    mean end-to-end latency). `bytes_per_key` is best measured with `measure_bytes_per_key`.
    Dropped and failed events release their key at once and are counted as done marks here, so
    the estimate is high by the drop and failure rate.
    """
    _require_positive("dedup_ttl_ms", dedup_ttl_ms)
    if not 0.0 <= duplicate_ratio < 1.0:
        raise RecommendationError(
            f"duplicate_ratio={duplicate_ratio!r} is invalid: use a fraction in [0, 1)"
        )
    rate = _as_range("event_rate_per_s", event_rate_per_s)
    size = _as_range("bytes_per_key", bytes_per_key)
    in_flight = _as_range("in_flight_s", in_flight_s)
    fragmentation = _as_range("fragmentation_ratio", fragmentation_ratio)
    ttl_s = dedup_ttl_ms / 1000.0
    unique = 1.0 - duplicate_ratio

    done = _estimate(lambda r: r * unique * ttl_s, rate)
    claims = _estimate(lambda r, t: r * unique * t, rate, in_flight)
    keys = _sum_estimates(done, claims)
    memory = Estimate(
        value=keys.value * size[0] * fragmentation[0],
        low=keys.low * size[1] * fragmentation[1],
        high=keys.high * size[2] * fragmentation[2],
    )
    return RedisMemory(done_keys=done, claim_keys=claims, keys=keys, memory_bytes=memory)


@dataclass(frozen=True)
class KeySizeMeasurement:
    """`MEMORY USAGE` of sample dedup keys, in bytes."""

    samples: int
    mean_bytes: float
    min_bytes: int
    max_bytes: int

    @property
    def range(self) -> tuple[float, float]:
        """(min, max) bytes per key, ready for `redis_memory(bytes_per_key=...)`."""
        return float(self.min_bytes), float(self.max_bytes)


def measure_bytes_per_key(
    redis_url: str,
    prefix: str,
    samples: int = 200,
    *,
    event_id_length: int = 36,
    ttl_ms: int = 60_000,
) -> KeySizeMeasurement:
    """Write `samples` done marks shaped like the supervisor's, read `MEMORY USAGE`, delete them.

    Keys are `{prefix}{event id}` with event ids of `event_id_length` characters and the value
    `done` with a TTL of `ttl_ms`, as the supervisor's dedup writes them. Every key written is
    deleted before returning, also when a command fails.
    """
    import redis

    if samples < 1:
        raise RecommendationError(f"samples={samples} is invalid: use 1 or more keys")
    if event_id_length < 1:
        raise RecommendationError(f"event_id_length={event_id_length} is invalid: use 1 or more")
    client = redis.Redis.from_url(redis_url)
    keys = [prefix + _sample_event_id(event_id_length) for _ in range(samples)]
    try:
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.set(key, "done", px=ttl_ms)
            pipe.execute()
        sizes = [_memory_usage(client, key) for key in keys]
    finally:
        client.delete(*keys)
        client.close()
    return KeySizeMeasurement(
        samples=samples,
        mean_bytes=float(np.mean(sizes)),
        min_bytes=int(min(sizes)),
        max_bytes=int(max(sizes)),
    )


def _sample_event_id(length: int) -> str:
    text = ""
    while len(text) < length:
        text += uuid.uuid4().hex
    return text[:length]


def _memory_usage(client: Any, key: str) -> int:
    size = client.memory_usage(key, samples=0)
    if size is None:
        raise RecommendationError(f"MEMORY USAGE returned nothing for {key!r}: the key expired")
    return int(size)


# --- Plots --------------------------------------------------------------------------------------


def plot_pool_sweep(rec: PoolRecommendation, path: str | Path) -> Path:
    """Plot p95 end-to-end latency, drop rate and execution error rate with 95% CIs vs pool size.

    Target lines are dashed; the recommended pool size is marked with a vertical line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = rec.table
    panels = (
        ("p95_e2e_latency_s", 1000.0, "p95 end-to-end latency (ms)", rec.targets.target_latency_ms),
        ("drop_rate", 1.0, "drop rate", rec.targets.max_drop_rate),
        ("execution_error_rate", 1.0, "execution error rate", rec.targets.max_error_rate),
    )
    figure, axes = plt.subplots(1, 3, figsize=(14, 4))
    for axis, (metric, scale, label, target) in zip(axes, panels, strict=True):
        mean = table[metric].to_numpy(dtype=float) * scale
        half_width = np.nan_to_num(table[f"{metric}_ci95"].to_numpy(dtype=float)) * scale
        sizes = table["pool_size"].to_numpy()
        axis.plot(sizes, mean, marker="o")
        axis.fill_between(sizes, mean - half_width, mean + half_width, alpha=0.25, label="95% CI")
        axis.axhline(target, linestyle="--", color="red", label="target")
        if rec.pool_size is not None:
            axis.axvline(rec.pool_size, color="green", linestyle=":", label="recommended")
        axis.set_xlabel("pool size")
        axis.set_ylabel(label)
        if metric == "p95_e2e_latency_s" and np.nanmax(mean) > 10 * target > 0:
            axis.set_yscale("log")
        axis.legend(fontsize="small")
    figure.suptitle(f"Pool size sweep at {rec.offered_rate_per_s:g} events/s")
    figure.tight_layout()
    output = Path(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return output
