"""Sweep over pool sizes that also keeps each replication's execution totals.

Every pool size runs the same replication numbers with the same seed, so replication `r` of
every pool gets the same arrivals and draws (common random numbers) and pool sizes can be
compared pairwise.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import pandas as pd
from tqdm import tqdm

from capacity.recommend_errors import RecommendationError
from simulation.analysis import SUMMARY_KEYS, summarize_run
from simulation.config import ModelConfig
from simulation.model import run_replication
from simulation.monitor import RunRecords
from simulation.sweep import REPLICATION_COLUMN, SweepResult

logger = logging.getLogger(__name__)


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
