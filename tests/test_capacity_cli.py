"""The `capacity-plan` command: option errors, input checks, stage progress and whole runs."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import psutil
import pytest
from conftest import free_port

from capacity.cli import (
    ASSUMED_BYTES_PER_KEY,
    PlanError,
    bytes_per_key,
    check_services,
    choose_peak_rate,
    main,
    parse_options,
)
from capacity.notebooks import NOTEBOOK_NAMES, SAMPLE_BUNDLE_DIR
from capacity.progress import StageProgress

REPORT_FILES = (
    "recommendation.json",
    "comparison.csv",
    "verification.json",
    "supervisor.rules.yml",
    "README.md",
)
QUICK_TIMEOUT_S = 600


@pytest.fixture
def no_service_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUPERVISOR_REDIS_URL", raising=False)
    monkeypatch.delenv("SUPERVISOR_DATABASE_URL", raising=False)


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--headroom", "0.5"], "--headroom"),
        (["--peak-rate-per-s", "0"], "--peak-rate-per-s"),
        (["--max-drop-rate", "1.5"], "--max-drop-rate"),
        (["--target-latency-ms", "abc"], "--target-latency-ms"),
        (["--shards", "0"], "--shards"),
        (["--no-such-option"], "--no-such-option"),
    ],
)
def test_invalid_option_exits_2(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as raised:
        main(argv)

    assert raised.value.code == 2
    assert option in capsys.readouterr().err


def test_verify_defaults_by_source(tmp_path: Path, no_service_urls: None) -> None:
    recorded = parse_options(["--out", str(tmp_path)])
    from_bundle = parse_options(["--bundle", str(tmp_path), "--out", str(tmp_path)])
    requested = parse_options(["--bundle", str(tmp_path), "--verify"])

    assert recorded.verify
    assert not from_bundle.verify
    assert requested.verify


def test_service_urls_read_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPERVISOR_REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("SUPERVISOR_DATABASE_URL", "")

    options = parse_options([])

    assert options.redis_url == "redis://127.0.0.1:6379/0"
    assert options.database_url is None
    assert options.out_dir.parent == Path("capacity-reports")


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(lines) == 1, lines
    return lines[0]


def test_missing_bundle_one_line(
    tmp_path: Path, no_service_urls: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--bundle", str(tmp_path / "absent"), "--out", str(tmp_path / "report")])

    assert code == 1
    line = _error_line(capsys)
    assert str(tmp_path / "absent") in line
    assert "--bundle-dir" in line


def test_non_empty_out_rejected(
    tmp_path: Path, no_service_urls: None, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "old.txt").write_text("previous report")

    code = main(["--out", str(tmp_path), "--no-notebooks"])

    assert code == 1
    line = _error_line(capsys)
    assert "not empty" in line
    assert "--out" in line


def test_redis_not_responding_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SUPERVISOR_REDIS_URL", f"redis://:secret@127.0.0.1:{free_port()}/0")
    monkeypatch.delenv("SUPERVISOR_DATABASE_URL", raising=False)

    code = main(["--quick", "--out", str(tmp_path / "report")])

    assert code == 1
    line = _error_line(capsys)
    assert "SUPERVISOR_REDIS_URL" in line
    assert "secret" not in line
    assert "unset the variable" in line
    assert not (tmp_path / "report" / "bundles").exists()


def test_database_unreachable_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SUPERVISOR_REDIS_URL", raising=False)
    monkeypatch.setenv(
        "SUPERVISOR_DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"
    )

    code = main(["--quick", "--out", str(tmp_path / "report")])

    assert code == 1
    assert "SUPERVISOR_DATABASE_URL" in _error_line(capsys)


@pytest.mark.integration
def test_real_services_pass_checks(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    redis_server_url: str,
    postgres_server_url: str,
) -> None:
    monkeypatch.setenv("SUPERVISOR_REDIS_URL", redis_server_url)
    monkeypatch.setenv("SUPERVISOR_DATABASE_URL", postgres_server_url)
    options = parse_options(["--quick", "--out", str(tmp_path / "report")])

    check_services(options)
    low_bytes, high_bytes = bytes_per_key(options)

    assert options.redis_url == redis_server_url
    assert options.database_url == postgres_server_url
    assert 40 <= low_bytes <= high_bytes <= 1000


def test_bytes_per_key_assumed_without_redis(tmp_path: Path, no_service_urls: None) -> None:
    options = parse_options(["--out", str(tmp_path)])

    assert bytes_per_key(options) == ASSUMED_BYTES_PER_KEY


def _steps(drop_rates: list[float], p95_s: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "load_step": range(len(drop_rates)),
            "rate_per_s": [50.0 * (index + 1) for index in range(len(drop_rates))],
            "drop_rate": drop_rates,
            "p95_e2e_latency_s": p95_s,
        }
    )


def test_peak_rate_highest_served_step() -> None:
    steps = _steps([0.0, 0.0, 0.0, 0.02], [0.05, 0.08, 0.4, 2.0])

    rate, source = choose_peak_rate(steps, requested_rate_per_s=None, target_latency_ms=250)

    assert rate == 100.0
    assert "step 1" in source


def test_peak_rate_given_wins() -> None:
    steps = _steps([0.0], [0.05])

    rate, source = choose_peak_rate(steps, requested_rate_per_s=75.0, target_latency_ms=250)

    assert rate == 75.0
    assert "--peak-rate-per-s" in source


def test_peak_rate_none_served_raises() -> None:
    steps = _steps([0.01, 0.05], [0.05, 0.1])

    with pytest.raises(PlanError, match="--peak-rate-per-s"):
        choose_peak_rate(steps, requested_rate_per_s=None, target_latency_ms=250)


class _FakeClock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def test_stage_progress_lines() -> None:
    clock, stream = _FakeClock(), io.StringIO()
    progress = StageProgress(3, stream=stream, clock=clock)

    with progress.stage("Calibrate the model"):
        clock.now_s += 2.5
    progress.skip("Verify", "--no-verify")
    with pytest.raises(RuntimeError), progress.stage("Write the report"):
        clock.now_s += 1.0
        raise RuntimeError("disk full")

    assert stream.getvalue().splitlines() == [
        "[1/3] Calibrate the model",
        "[1/3] done in 2.5 s (total 2.5 s)",
        "[2/3] Verify: skipped (--no-verify)",
        "[3/3] Write the report",
        "[3/3] failed after 1.0 s (total 3.5 s)",
    ]
    assert progress.durations_s == {"Calibrate the model": 2.5, "Write the report": 1.0}


def _check_report(report_dir: Path) -> dict[str, object]:
    for name in REPORT_FILES:
        assert (report_dir / name).is_file(), f"{name} missing"
    document: dict[str, object] = json.loads((report_dir / "recommendation.json").read_text())
    assert isinstance(document["SUPERVISOR_WORKER_POOL_SIZE"], int)
    assert document["SUPERVISOR_WORKER_POOL_SIZE"] >= 1
    assert isinstance(document["SUPERVISOR_QUEUE_MAX_SIZE"], int)
    assert document["SUPERVISOR_QUEUE_MAX_SIZE"] >= 1
    assert "queue_depth_ratio" in document["alert_thresholds"]  # type: ignore[operator]
    comparison = pd.read_csv(report_dir / "comparison.csv")
    assert list(comparison.columns[:5]) == [
        "metric",
        "load_step",
        "measured",
        "predicted",
        "relative_error",
    ]
    assert len(comparison) > 0
    assert (report_dir / "model" / "calibrated.toml").is_file()
    assert list((report_dir / "figures").glob("*.png"))
    return document


@pytest.fixture
def fast_mode(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("CAPACITY_FAST", "1")
    yield


@pytest.mark.slow
@pytest.mark.timeout(QUICK_TIMEOUT_S)
def test_plan_from_sample_bundle(
    tmp_path: Path, no_service_urls: None, fast_mode: None, capsys: pytest.CaptureFixture[str]
) -> None:
    report_dir = tmp_path / "report"

    code = main(["--bundle", str(SAMPLE_BUNDLE_DIR), "--out", str(report_dir), "--no-verify"])

    captured = capsys.readouterr()
    assert code == 0, captured.err
    document = _check_report(report_dir)
    assert document["inputs"]["bundle_dir"] == str(SAMPLE_BUNDLE_DIR)  # type: ignore[index]
    verification = json.loads((report_dir / "verification.json").read_text())
    assert verification["status"] == "skipped"
    for name in NOTEBOOK_NAMES:
        assert (report_dir / "notebooks" / f"{name}.html").is_file()
    assert "[1/12] Check the inputs" in captured.err
    assert not (report_dir / "bundles").exists()


def _processes_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if text in cmdline and process.pid != os.getpid():
            found.append(process)
    return found


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(QUICK_TIMEOUT_S + 60)
def test_quick_plan_end_to_end(tmp_path: Path) -> None:
    report_dir = tmp_path / "report"
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("SUPERVISOR_REDIS_URL", "SUPERVISOR_DATABASE_URL")
    }

    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from capacity.cli import main; raise SystemExit(main())",
            "--quick",
            "--out",
            str(report_dir),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=QUICK_TIMEOUT_S,
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr[-4000:]
    document = _check_report(report_dir)
    verification = json.loads((report_dir / "verification.json").read_text())
    assert verification["status"] == "ran"
    assert verification["pool_size"] == document["SUPERVISOR_WORKER_POOL_SIZE"]
    assert verification["measured_p95_e2e_latency_s"] is not None
    assert verification["verdict"] in ("confirmed", "prediction off", "targets missed")
    assert (report_dir / "bundles" / "measured" / "metadata.json").is_file()
    assert (report_dir / "bundles" / "verification" / "metadata.json").is_file()
    assert "Verification run" in (report_dir / "README.md").read_text()
    assert _processes_mentioning(str(report_dir)) == []
