"""`python -m simulation run`: the fixed JSON keys, the table, config files and bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from simulation.analysis import SUMMARY_KEYS
from simulation.cli import build_parser, config_from_args, main_cli

FAST = ["--arrival-rate", "50", "--service-mean-ms", "20", "--duration-s", "20"]


def test_json_has_summary_keys_and_ci95(capsys: pytest.CaptureFixture[str]) -> None:
    code = main_cli(["run", *FAST, "--replications", "3", "--json"])
    output = json.loads(capsys.readouterr().out)

    assert code == 0
    expected = set(SUMMARY_KEYS) | {f"{key}_ci95" for key in SUMMARY_KEYS}
    assert set(output) == expected
    assert output["throughput_per_s"] == pytest.approx(50.0, rel=0.2)


def test_json_without_replications_has_no_ci95(capsys: pytest.CaptureFixture[str]) -> None:
    code = main_cli(["run", *FAST, "--json"])
    output = json.loads(capsys.readouterr().out)

    assert code == 0
    assert set(output) == set(SUMMARY_KEYS)


def test_table_lists_every_metric(capsys: pytest.CaptureFixture[str]) -> None:
    code = main_cli(["run", *FAST])
    text = capsys.readouterr().out

    assert code == 0
    for key in SUMMARY_KEYS:
        assert key in text


def test_flags_override_config_file(tmp_path: Path) -> None:
    path = tmp_path / "model.toml"
    path.write_text("pool_size = 3\nqueue_max = 7\n[execution]\nlatency_sigma = 0.8\n")
    argv = ["run", "--config", str(path), "--pool-size", "5"]
    argv += ["--service", "lognormal", "--service-mean-ms", "10"]

    args = build_parser("run").parse_args(argv)
    config = config_from_args(args)

    assert config.pool_size == 5
    assert config.queue_max == 7
    assert config.execution.latency == "lognormal"
    assert config.execution.latency_median_ms == pytest.approx(10.0 * math.exp(-0.32))


def test_invalid_value_exits_2_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    code = main_cli(["run", "--pool-size", "0"])

    assert code == 2
    assert "pool_size=0 is invalid" in capsys.readouterr().err


def test_module_entry_point_prints_json(tmp_path: Path) -> None:
    series_path = tmp_path / "series.csv"

    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "simulation",
            "run",
            *FAST,
            "--json",
            "--series-csv",
            str(series_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert completed.returncode == 0, completed.stderr
    assert set(json.loads(completed.stdout)) == set(SUMMARY_KEYS)
    assert series_path.read_text().startswith("timestamp,t_s,target,queue_depth")
