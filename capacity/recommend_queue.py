"""Queue size recommendation from the calibrated model.

The model replays a burst at the recommended pool with an unbounded queue, and the recommended
capacity is the largest queue depth seen in any replication times a margin. The capacity is then
checked on fresh replications, with other seeds.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from capacity.recommend_errors import RecommendationError, require_positive
from simulation.analysis import t_half_width
from simulation.config import ArrivalConfig, ModelConfig
from simulation.model import run_replication
from simulation.monitor import RunRecords, max_depth

logger = logging.getLogger(__name__)

# A queue this large never fills in a burst run, so the run shows the depth a burst needs.
UNBOUNDED_QUEUE_MAX = 100_000_000


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
        require_positive("steady_rate_per_s", steady_rate_per_s)
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
    require_positive("burst_rate_per_s", burst_rate_per_s)
    require_positive("burst_duration_s", burst_duration_s)
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
