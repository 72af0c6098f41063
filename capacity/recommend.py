"""Recommendations from the calibrated model: pool size, queue size, database and Redis load.

This module re-exports the public names of the modules that hold each concept, so callers can
keep importing them from `capacity.recommend`:

- `capacity.recommend_pool`: the pool size that meets the latency, drop and error targets;
- `capacity.recommend_sweep`: the pool-size sweep with execution totals behind it;
- `capacity.recommend_queue`: the queue capacity that absorbs a burst;
- `capacity.load_estimates`: database and Redis load, and the measured Redis key size;
- `capacity.recommend_plots`: the pool sweep figure.
"""

from __future__ import annotations

from capacity.load_estimates import (
    DatabaseLoad,
    Estimate,
    KeySizeMeasurement,
    RangeInput,
    RedisMemory,
    database_load,
    measure_bytes_per_key,
    pages_per_read,
    redis_memory,
)
from capacity.recommend_errors import RecommendationError
from capacity.recommend_plots import plot_pool_sweep
from capacity.recommend_pool import (
    CONSTRAINT_METRICS,
    CONSTRAINTS,
    DROP_CONSTRAINT,
    ERROR_CONSTRAINT,
    LATENCY_CONSTRAINT,
    MAX_DEFAULT_POOL_SIZES,
    PoolRecommendation,
    PoolTargets,
    binding_constraints,
    cpu_capacity_per_s,
    default_pool_sizes,
    peak_config,
    pool_table,
    recommend_pool_size,
)
from capacity.recommend_queue import (
    UNBOUNDED_QUEUE_MAX,
    QueueRecommendation,
    burst_config,
    recommend_queue_size,
)
from capacity.recommend_sweep import sweep_pool_sizes

__all__ = [
    "CONSTRAINTS",
    "CONSTRAINT_METRICS",
    "DROP_CONSTRAINT",
    "ERROR_CONSTRAINT",
    "LATENCY_CONSTRAINT",
    "MAX_DEFAULT_POOL_SIZES",
    "UNBOUNDED_QUEUE_MAX",
    "DatabaseLoad",
    "Estimate",
    "KeySizeMeasurement",
    "PoolRecommendation",
    "PoolTargets",
    "QueueRecommendation",
    "RangeInput",
    "RecommendationError",
    "RedisMemory",
    "binding_constraints",
    "burst_config",
    "cpu_capacity_per_s",
    "database_load",
    "default_pool_sizes",
    "measure_bytes_per_key",
    "pages_per_read",
    "peak_config",
    "plot_pool_sweep",
    "pool_table",
    "recommend_pool_size",
    "recommend_queue_size",
    "redis_memory",
    "sweep_pool_sizes",
]
