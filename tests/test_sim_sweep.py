"""Tests of parameter sweeps: field paths, common random numbers, paired differences, CLI."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from simulation.config import ArrivalConfig, CpuConfig, ExecutionConfig, ModelConfig
from simulation.model import simulate
from simulation.sweep import (
    METRICS,
    SweepError,
    add_arguments,
    grid_points,
    main,
    run_sweep,
    with_field,
)

BASE = ModelConfig(
    arrivals=ArrivalConfig(rate_per_s=80.0),
    execution=ExecutionConfig(latency="lognormal", latency_median_ms=50.0, latency_sigma=0.7),
    queue_max=30,
    duration_s=60.0,
    warmup_s=5.0,
)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_with_field_sets_nested_values() -> None:
    config = with_field(BASE, "execution.latency_median_ms", 12.5)
    config = with_field(config, "pool_size", 3)

    assert config.execution.latency_median_ms == 12.5
    assert config.execution.latency == "lognormal"
    assert config.pool_size == 3
    assert BASE.pool_size == 8


@pytest.mark.parametrize(
    ("path", "value", "fragment"),
    [
        ("pool_sizes", 3, "'pool_sizes' is not a field"),
        ("execution.median", 3, "'median' is not a field"),
        ("pool_size.value", 3, "'pool_size' is not a nested table"),
        ("pool_size", 0, "pool_size=0 is invalid"),
        ("execution.latency", "gamma", "execution.latency='gamma' is invalid"),
    ],
)
def test_with_field_rejects_bad_paths_and_values(path: str, value: object, fragment: str) -> None:
    with pytest.raises(SweepError, match=fragment):
        with_field(BASE, path, value)


def test_grid_points_cover_product() -> None:
    points = grid_points({"pool_size": [2, 4], "arrivals.rate_per_s": [10.0, 20.0, 30.0]})

    assert len(points) == 6
    assert points[0] == {"pool_size": 2, "arrivals.rate_per_s": 10.0}
    assert points[-1] == {"pool_size": 4, "arrivals.rate_per_s": 30.0}


def test_grid_points_reject_empty_field() -> None:
    with pytest.raises(SweepError, match="'pool_size' has no values"):
        grid_points({"pool_size": []})


def test_sweep_has_row_per_point_and_replication() -> None:
    grid: dict[str, list[float]] = {"pool_size": [4, 5], "arrivals.rate_per_s": [60.0, 90.0]}

    result = run_sweep(
        BASE, grid, replications=3, seed=7, workers=1, progress=False, engine="recursion"
    )

    assert len(result.runs) == 4 * 3
    assert list(result.runs.columns[:3]) == ["pool_size", "arrivals.rate_per_s", "replication"]
    assert set(METRICS) <= set(result.runs.columns)
    assert result.runs.groupby(["pool_size", "arrivals.rate_per_s"]).size().eq(3).all()
    assert len(result.summary) == 4
    assert result.summary["replications"].eq(3).all()


def test_sweep_uses_common_random_numbers() -> None:
    grid = {"pool_size": [3, 4, 6]}

    runs = run_sweep(
        BASE, grid, replications=3, seed=7, workers=1, progress=False, engine="recursion"
    ).runs

    # The same replication sees the same arrivals at every pool size, and another replication
    # sees other arrivals.
    offered = runs.pivot(index="replication", columns="pool_size", values="offered")
    assert offered.nunique(axis=1).eq(1).all()
    assert offered[3].nunique() == 3


def test_sweep_engines_agree() -> None:
    grid = {"pool_size": [3, 5]}

    recursion = run_sweep(
        BASE, grid, replications=2, seed=3, workers=1, progress=False, engine="recursion"
    )
    model = run_sweep(BASE, grid, replications=2, seed=3, workers=1, progress=False, engine="simpy")

    pd.testing.assert_frame_equal(recursion.runs, model.runs, rtol=1e-9)


def test_sweep_in_processes_matches_one_process() -> None:
    grid: dict[str, list[float]] = {"pool_size": [3, 4], "arrivals.rate_per_s": [70.0, 90.0]}

    serial = run_sweep(
        BASE, grid, replications=2, seed=5, workers=1, progress=False, engine="recursion"
    )
    parallel = run_sweep(
        BASE, grid, replications=2, seed=5, workers=2, progress=False, engine="recursion"
    )

    pd.testing.assert_frame_equal(serial.runs, parallel.runs)


def test_summary_matches_simulate() -> None:
    config = with_field(BASE, "pool_size", 4)

    result = run_sweep(
        config,
        {"pool_size": [4]},
        replications=3,
        seed=9,
        workers=1,
        progress=False,
        engine="simpy",
    )
    expected = simulate(config.with_changes(seed=9, replications=3)).summary

    row = result.summary.iloc[0]
    for key, value in expected.items():
        assert row[key] == pytest.approx(value, rel=1e-9, nan_ok=True), key


def test_paired_differences_match_runs() -> None:
    grid = {"pool_size": [4, 5, 6]}
    result = run_sweep(
        BASE, grid, replications=4, seed=1, workers=1, progress=False, engine="recursion"
    )

    paired = result.paired_differences("mean_lag_s", by="pool_size")

    assert paired[["pool_size_from", "pool_size_to"]].values.tolist() == [[4, 5], [5, 6]]
    table = result.runs.pivot(index="replication", columns="pool_size", values="mean_lag_s")
    differences = table[5] - table[4]
    first = paired.iloc[0]
    assert first["mean_difference"] == pytest.approx(differences.mean())
    half_width = stats.t.ppf(0.975, 3) * differences.std(ddof=1) / math.sqrt(4)
    assert first["paired_ci95"] == pytest.approx(half_width)
    assert first["replications"] == 4


@pytest.mark.parametrize("metric", ["mean_lag_s", "p95_e2e_latency_s", "drop_rate"])
def test_paired_intervals_beat_unpaired(metric: str) -> None:
    # Utilisation about 1.07, 0.92 and 0.80 with a small queue, so every metric moves. Common
    # random numbers make the runs of one replication move together, so their differences
    # vary less than the runs themselves.
    base = with_field(with_field(BASE, "arrivals.rate_per_s", 100.0), "queue_max", 10)
    result = run_sweep(
        base,
        {"pool_size": [6, 7, 8]},
        replications=8,
        seed=3,
        workers=1,
        progress=False,
        engine="recursion",
    )

    paired = result.paired_differences(metric, by="pool_size")

    assert len(paired) == 2
    assert np.all(paired["paired_ci95"] < paired["unpaired_ci95"])


def test_paired_differences_group_other_fields() -> None:
    grid: dict[str, list[float]] = {"arrivals.rate_per_s": [60.0, 90.0], "pool_size": [4, 6]}
    result = run_sweep(
        BASE, grid, replications=2, seed=1, workers=1, progress=False, engine="recursion"
    )

    paired = result.paired_differences("drop_rate")

    assert paired["arrivals.rate_per_s"].tolist() == [60.0, 90.0]
    with pytest.raises(SweepError, match="not a swept field"):
        result.paired_differences("drop_rate", by="queue_max")
    with pytest.raises(SweepError, match="unknown"):
        result.paired_differences("lag", by="pool_size")


def test_recursion_engine_rejects_cpu_cost() -> None:
    config = BASE.with_changes(cpu=CpuConfig(worker_cost_ms=1.0))

    with pytest.raises(SweepError, match="cannot run on the recursion engine"):
        run_sweep(
            config,
            {"pool_size": [2]},
            replications=1,
            seed=0,
            workers=1,
            progress=False,
            engine="recursion",
        )


def test_cli_writes_runs_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "result" / "sweep.csv"
    args = parse(
        [
            "--pool-sizes", "3,4",
            "--arrival-rates", "50,70",
            "--replications", "2",
            "--duration-s", "30",
            "--set", "execution.latency_mean_ms=40",
            "--set", "queue_max=12",
            "--engine", "recursion",
            "--workers", "1",
            "--no-progress",
            "--out", str(out),
        ]
    )  # fmt: skip

    code = main(args)

    assert code == 0
    runs = pd.read_csv(out)
    summary = pd.read_csv(tmp_path / "result" / "sweep.summary.csv")
    assert len(runs) == 8
    assert sorted(runs["pool_size"].unique()) == [3, 4]
    assert sorted(runs["arrivals.rate_per_s"].unique()) == [50.0, 70.0]
    assert len(summary) == 4
    assert "mean_lag_s_ci95" in summary.columns
    printed = capsys.readouterr().out
    assert "pool_size_from" in printed
    assert "wrote" in printed


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--set", "pool_size=2"], "nothing to sweep"),
        (["--pool-sizes", "2,x"], "--pool-sizes '2,x' is invalid"),
        (["--pool-sizes", "2", "--set", "queue_max"], "use FIELD=VALUE"),
        (["--pool-sizes", "2", "--grid", "execution.latency=gamma"], "execution.latency"),
    ],
)
def test_cli_reports_bad_options(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(parse([*argv, "--no-progress", "--workers", "1"]))

    assert code == 2
    assert fragment in capsys.readouterr().err
