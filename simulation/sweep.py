"""Parameter sweeps of the model on common random numbers, run in parallel processes.

A sweep runs every point of a grid (the product of the values given for each swept field) for
`replications` replications. Replication `r` of every grid point uses the same random streams,
those of `simulation.streams.replication_streams(seed, r)`, with one stream per random input, so
two pool sizes at replication `r` see the same arrivals and the same service draws. Their
difference then comes from the pool size alone, and a paired-difference confidence interval of a
metric between neighbouring pool sizes is much tighter than the unpaired one.

Swept fields are dotted paths into `ModelConfig` (`pool_size`, `arrivals.rate_per_s`,
`execution.latency_mean_ms`, ...). Each grid point is validated as a whole `ModelConfig` before
any run starts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import pandas as pd
from scipy import stats
from tqdm import tqdm

from simulation.analysis import SUMMARY_KEYS, ReplicationSummary, combine_replications
from simulation.config import ConfigError, ModelConfig

logger = logging.getLogger(__name__)

Engine = Literal["simpy", "recursion"]
ENGINES: tuple[str, ...] = get_args(Engine)

METRICS: tuple[str, ...] = SUMMARY_KEYS
PAIRED_METRICS: tuple[str, ...] = ("mean_lag_s", "p95_e2e_latency_s", "drop_rate")
REPLICATION_COLUMN = "replication"


class SweepError(ValueError):
    """A sweep grid, field path or option cannot be run."""


def with_field(config: ModelConfig, path: str, value: Any) -> ModelConfig:
    """Return a copy of `config` with the field at dotted `path` set to `value`, validated."""
    data = config.to_dict()
    *parents, leaf = path.split(".")
    node = data
    for index, part in enumerate(parents):
        child = node.get(part)
        if not isinstance(child, dict):
            walked = ".".join(parents[: index + 1])
            raise SweepError(f"field path {path!r} is invalid: {walked!r} is not a nested table")
        node = child
    if leaf not in node:
        raise SweepError(
            f"field path {path!r} is invalid: {leaf!r} is not a field here; valid names are "
            f"{sorted(node)}"
        )
    node[leaf] = value
    try:
        return ModelConfig.from_dict(data)
    except ConfigError as error:
        raise SweepError(f"cannot set {path}={value!r}: {error}") from error


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Return every combination of the grid's values, the last field varying fastest."""
    for path, values in grid.items():
        if len(values) == 0:
            raise SweepError(f"grid field {path!r} has no values; give at least one")
    names = list(grid)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*grid.values())]


@dataclass(frozen=True)
class _Task:
    point_index: int
    point: dict[str, Any]
    replication: int
    config: ModelConfig
    engine: Engine


def _run_task(task: _Task) -> dict[str, Any]:
    summary = run_replication(task.config, task.replication, task.engine)
    row: dict[str, Any] = {"point_index": task.point_index, **task.point}
    row[REPLICATION_COLUMN] = task.replication
    row.update(summary)
    return row


def run_replication(config: ModelConfig, replication: int, engine: Engine) -> dict[str, float]:
    """Run replication `replication` of `config` on one engine and return its summary."""
    if engine == "recursion":
        from simulation.recursion import summarize_config_run

        return summarize_config_run(config, replication)
    from simulation.model import run_model_summary

    return run_model_summary(config, replication)


def _ci95_half_width(values: pd.Series) -> float:
    count = int(values.count())
    if count < 2:
        return math.nan
    quantile = float(stats.t.ppf(0.975, count - 1))
    return quantile * float(values.std(ddof=1)) / math.sqrt(count)


@dataclass(frozen=True)
class SweepResult:
    """Runs of a sweep: one row per grid point and replication, and the per-point summary.

    `runs` has the grid fields, `replication` and every metric. `summary` has the grid fields,
    `replications`, and for each metric its mean and its 95% confidence half-width under the
    metric's name with `_ci95` appended.
    """

    runs: pd.DataFrame
    grid_fields: tuple[str, ...]
    metrics: tuple[str, ...]

    @property
    def summary(self) -> pd.DataFrame:
        """Mean and 95% confidence half-width of every metric per grid point.

        Computed by `simulation.analysis.combine_replications`, so a row equals the summary
        `python -m simulation run` prints for that config: ratio estimators for drop rate, mean
        lag and mean end-to-end latency, Student t intervals for the other metrics.
        """
        rows = []
        for key, group in self.runs.groupby(list(self.grid_fields), sort=False, dropna=False):
            values = key if isinstance(key, tuple) else (key,)
            row: dict[str, Any] = dict(zip(self.grid_fields, values, strict=True))
            row["replications"] = len(group)
            combined = combine_replications(_replication_summaries(group))
            for metric in self.metrics:
                row[metric] = combined[metric]
                row[f"{metric}_ci95"] = combined.get(f"{metric}_ci95", math.nan)
            rows.append(row)
        return pd.DataFrame(rows)

    def paired_differences(self, metric: str, by: str = "pool_size") -> pd.DataFrame:
        """Compare neighbouring values of grid field `by` on common random numbers.

        Pairs are formed for each combination of the other grid fields and each two
        neighbouring `by` values (sorted). For each pair the frame contains the mean of
        `metric(higher) - metric(lower)` over replications and its paired 95% confidence
        half-width (`paired_ci95`). For contrast it also contains the half-width that ignores
        the pairing (`unpaired_ci95`, Welch).
        """
        if by not in self.grid_fields:
            raise SweepError(f"by={by!r} is not a swept field; swept fields: {self.grid_fields}")
        if metric not in self.runs.columns:
            raise SweepError(f"metric {metric!r} is unknown; valid metrics: {self.metrics}")
        others = [name for name in self.grid_fields if name != by]
        groups = self.runs.groupby(others, sort=False) if others else [((), self.runs)]
        rows: list[dict[str, Any]] = []
        for key, group in groups:
            labels = dict(zip(others, key if isinstance(key, tuple) else (key,), strict=True))
            rows.extend(_neighbour_rows(group, metric, by, labels))
        return pd.DataFrame(rows)

    def to_csv(self, path: str | Path) -> tuple[Path, Path]:
        """Write the runs to `path` and the summary beside it as `<stem>.summary.csv`."""
        runs_path = Path(path)
        summary_path = runs_path.with_name(f"{runs_path.stem}.summary.csv")
        runs_path.parent.mkdir(parents=True, exist_ok=True)
        self.runs.to_csv(runs_path, index=False)
        self.summary.to_csv(summary_path, index=False)
        return runs_path, summary_path


def _replication_summaries(group: pd.DataFrame) -> list[ReplicationSummary]:
    return [
        ReplicationSummary(
            warmup_s=float(row["warmup_s"]),
            metrics={name: float(row[name]) for name in SUMMARY_KEYS},
            offered=int(row["offered"]),
            dropped=int(row["dropped"]),
            lag_sum_s=float(row["lag_sum_s"]),
            lag_count=int(row["lag_count"]),
            e2e_sum_s=float(row["e2e_sum_s"]),
            e2e_count=int(row["e2e_count"]),
        )
        for row in group.to_dict("records")
    ]


def _neighbour_rows(
    group: pd.DataFrame, metric: str, by: str, labels: dict[str, Any]
) -> list[dict[str, Any]]:
    table = group.pivot(index=REPLICATION_COLUMN, columns=by, values=metric)
    values = sorted(table.columns)
    rows = []
    for lower, higher in itertools.pairwise(values):
        differences = (table[higher] - table[lower]).dropna()
        rows.append(
            {
                **labels,
                f"{by}_from": lower,
                f"{by}_to": higher,
                "metric": metric,
                "replications": int(differences.count()),
                "mean_difference": float(differences.mean()),
                "paired_ci95": _ci95_half_width(differences),
                "unpaired_ci95": _welch_ci95_half_width(table[lower], table[higher]),
            }
        )
    return rows


def _welch_ci95_half_width(first: pd.Series, second: pd.Series) -> float:
    first = first.dropna()
    second = second.dropna()
    if first.count() < 2 or second.count() < 2:
        return math.nan
    variance_first = float(first.var(ddof=1)) / first.count()
    variance_second = float(second.var(ddof=1)) / second.count()
    standard_error = math.sqrt(variance_first + variance_second)
    if standard_error == 0:
        return 0.0
    degrees = standard_error**4 / (
        variance_first**2 / (first.count() - 1) + variance_second**2 / (second.count() - 1)
    )
    return float(stats.t.ppf(0.975, degrees)) * standard_error


def _tasks(
    base_config: ModelConfig,
    points: list[dict[str, Any]],
    replications: int,
    seed: int,
    engine: Engine,
) -> list[_Task]:
    seeded = base_config.with_changes(seed=seed, replications=replications)
    tasks: list[_Task] = []
    for point_index, point in enumerate(points):
        config = seeded
        for path, value in point.items():
            config = with_field(config, path, value)
        if engine == "recursion":
            _check_recursion_supported(config, point)
        tasks.extend(
            _Task(point_index, point, replication, config, engine)
            for replication in range(replications)
        )
    return tasks


def _check_recursion_supported(config: ModelConfig, point: dict[str, Any]) -> None:
    from simulation.recursion import RecursionInputError, check_config_supported

    try:
        check_config_supported(config)
    except RecursionInputError as error:
        raise SweepError(
            f"grid point {point} cannot run on the recursion engine: {error}"
        ) from error


def run_sweep(
    base_config: ModelConfig,
    grid: Mapping[str, Sequence[Any]],
    replications: int,
    seed: int,
    workers: int | None = None,
    progress: bool = True,
    engine: Engine = "simpy",
) -> SweepResult:
    """Run every grid point for `replications` replications on common random numbers.

    `workers` is the number of processes (default `os.cpu_count()`); 1 runs in this process.
    `engine` is `simpy` (the full model) or `recursion` (the exact FIFO G/G/c/K recursion,
    for configs without the model's extras; see `simulation.recursion`).
    """
    if replications < 1:
        raise SweepError(f"replications={replications} is invalid: use 1 or more")
    if engine not in ENGINES:
        raise SweepError(f"engine={engine!r} is invalid: use one of {ENGINES}")
    workers = workers if workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        raise SweepError(f"workers={workers} is invalid: use 1 or more processes")
    points = grid_points(grid)
    tasks = _tasks(base_config, points, replications, seed, engine)

    logger.info(
        "Sweep started: %d grid points x %d replications on %s, %d worker processes",
        len(points),
        replications,
        engine,
        workers,
    )
    rows = _execute(tasks, workers, progress)
    runs = pd.DataFrame(rows).sort_values(["point_index", REPLICATION_COLUMN])
    runs = runs.drop(columns="point_index").reset_index(drop=True)
    logger.info("Sweep finished: %d runs", len(runs))
    return SweepResult(runs=runs, grid_fields=tuple(grid), metrics=METRICS)


def _execute(tasks: list[_Task], workers: int, progress: bool) -> list[dict[str, Any]]:
    bar = tqdm(total=len(tasks), disable=not progress, unit="run", desc="sweep")
    rows: list[dict[str, Any]] = []
    try:
        if workers == 1:
            for task in tasks:
                rows.append(_run_task(task))
                bar.update()
            return rows
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_run_task, task) for task in tasks]
            for future in as_completed(futures):
                rows.append(future.result())
                bar.update()
        return rows
    finally:
        bar.close()


# Command line: `python -m simulation sweep ...`.


def _parse_list(text: str, convert: Callable[[str], Any], option: str) -> list[Any]:
    try:
        return [convert(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError as error:
        raise SweepError(f"{option} {text!r} is invalid: give comma-separated numbers") from error


def _parse_value(text: str) -> Any:
    """Read a command-line value as JSON (numbers, true, null, lists), else as a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _split_assignment(text: str, option: str) -> tuple[str, str]:
    path, separator, value = text.partition("=")
    if not separator or not path.strip():
        raise SweepError(f"{option} {text!r} is invalid: use FIELD=VALUE, e.g. pool_size=8")
    return path.strip(), value.strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `python -m simulation sweep` to `parser`."""
    parser.add_argument("--config", help="model config file (.toml or .json) to start from")
    parser.add_argument("--pool-sizes", help="comma-separated pool sizes to sweep, e.g. 4,6,8")
    parser.add_argument(
        "--arrival-rates", help="comma-separated Poisson arrival rates in events per second"
    )
    parser.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="FIELD=V1,V2",
        help="sweep any config field by dotted path, e.g. execution.latency_mean_ms=5,10",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="set a config field by dotted path for every run, e.g. queue_max=200",
    )
    parser.add_argument("--replications", type=int, default=5, help="replications per point")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random streams")
    parser.add_argument("--duration-s", type=float, help="simulated seconds per run")
    parser.add_argument("--warmup-s", type=float, help="warm-up seconds cut from each run")
    parser.add_argument(
        "--workers", type=int, help="worker processes (default: the number of CPUs)"
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="simpy",
        help="simpy: the full model; recursion: exact FIFO queue, plain configs only",
    )
    parser.add_argument("--out", help="CSV file for the runs; the summary goes beside it")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def config_from_args(args: argparse.Namespace) -> ModelConfig:
    """Build the base config from `--config`, `--set`, `--duration-s` and `--warmup-s`."""
    config = ModelConfig.from_file(args.config) if args.config else ModelConfig()
    for assignment in args.set:
        path, value = _split_assignment(assignment, "--set")
        config = with_field(config, path, _parse_value(value))
    if args.duration_s is not None:
        config = with_field(config, "duration_s", args.duration_s)
    if args.warmup_s is not None:
        config = with_field(config, "warmup_s", args.warmup_s)
    return config


def grid_from_args(args: argparse.Namespace, config: ModelConfig) -> dict[str, list[Any]]:
    """Build the grid from `--pool-sizes`, `--arrival-rates` and `--grid`."""
    grid: dict[str, list[Any]] = {}
    if args.pool_sizes:
        grid["pool_size"] = _parse_list(args.pool_sizes, int, "--pool-sizes")
    if args.arrival_rates:
        if config.arrivals.kind != "poisson":
            raise SweepError(
                f"--arrival-rates needs Poisson arrivals, but arrivals.kind="
                f"{config.arrivals.kind!r}; sweep the schedule with --grid instead"
            )
        grid["arrivals.rate_per_s"] = _parse_list(args.arrival_rates, float, "--arrival-rates")
    for item in args.grid:
        path, values = _split_assignment(item, "--grid")
        grid[path] = [_parse_value(value.strip()) for value in values.split(",")]
    if not grid:
        raise SweepError("nothing to sweep: give --pool-sizes, --arrival-rates or --grid")
    return grid


def main(args: argparse.Namespace) -> int:
    """Run the sweep the parsed options describe, print the summary and write the CSV files."""
    try:
        config = config_from_args(args)
        grid = grid_from_args(args, config)
        result = run_sweep(
            config,
            grid,
            replications=args.replications,
            seed=args.seed,
            workers=args.workers,
            progress=not args.no_progress,
            engine=args.engine,
        )
    except (SweepError, ConfigError) as error:
        print(f"simulation sweep: {error}", file=sys.stderr)
        return 2

    _print_frame(result.summary)
    if "pool_size" in grid and len(grid["pool_size"]) > 1 and args.replications > 1:
        for metric in PAIRED_METRICS:
            _print_frame(result.paired_differences(metric, by="pool_size"))
    if args.out:
        runs_path, summary_path = result.to_csv(args.out)
        print(f"wrote {runs_path} and {summary_path}")
    return 0


def _print_frame(frame: pd.DataFrame) -> None:
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(frame.to_string(index=False, float_format=lambda value: f"{value:.6g}"))
        print()
