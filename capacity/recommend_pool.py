"""Pool size recommendation from the calibrated model.

The model runs at the planned peak rate times a headroom factor for every candidate pool size,
on common random numbers (replication `r` of every pool gets the same arrivals and draws). A
pool size meets a constraint when the upper end of the metric's 95% confidence interval,
`mean + ci95`, is at or below the target, so a pass holds with about 97.5% one-sided confidence.
The recommendation is the smallest pool size that meets all three constraints: p95 end-to-end
latency, drop rate and execution error rate.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from capacity.recommend_errors import RecommendationError, require_positive
from capacity.recommend_sweep import sweep_pool_sizes
from simulation.analysis import ratio_estimate
from simulation.config import ArrivalConfig, ModelConfig
from simulation.service import mean_base_latency_s
from simulation.sweep import SweepResult

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
MAX_DEFAULT_POOL_SIZES = 16


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
    require_positive("rate_per_s", rate_per_s)
    require_positive("duration_s", duration_s)
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
    require_positive("peak_rate_per_s", peak_rate_per_s)
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
    if not pool_sizes:
        # The default grid may skip sizes; sweep those just below the first passing size so
        # that the smallest passing size is really the smallest.
        gap = untested_sizes_below_first_pass(table)
        if gap:
            extra = sweep_pool_sizes(
                config, gap, replications=replications, seed=seed, workers=workers,
                progress=progress,
            )
            sweep = SweepResult(
                runs=pd.concat([sweep.runs, extra.runs])
                .sort_values(["pool_size", "replication"])
                .reset_index(drop=True),
                grid_fields=sweep.grid_fields,
                metrics=sweep.metrics,
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


def untested_sizes_below_first_pass(table: pd.DataFrame) -> list[int]:
    """Return the pool sizes between the first passing size and the tested size below it."""
    passing = table.loc[table["passes"], "pool_size"]
    if passing.empty:
        return []
    first_pass = int(passing.min())
    below = table.loc[table["pool_size"] < first_pass, "pool_size"]
    start = int(below.max()) + 1 if not below.empty else 1
    return list(range(start, first_pass))


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
