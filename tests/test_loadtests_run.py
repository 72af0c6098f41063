"""A real load run: stub and supervisor as processes, `locust -f loadtests` against them.

The run lasts 20 s at 100 events/s. Its pass/fail limits on latency and lateness are relaxed,
because this machine is shared and those figures are not what the test checks: it checks the
bundle's contents, the offered rate and that the supervisor accounted for every event sent.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers_processes import http_json, migrate, running_stub, running_supervisor

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
RATE_PER_S = 100
DURATION_S = 20
BUNDLE_FILES = (
    "metadata.json", "locust_stats.csv", "locust_stats_history.csv", "locust_failures.csv",
    "locust_exceptions.csv", "report.html", "supervisor_series.csv", "stub_series.csv",
    "event_timings.csv", "execution_timings.csv", "configs.csv",
)
METADATA_KEYS = (
    "profile", "profile_parameters", "rate_per_s", "seeds", "locust_version", "locust_options",
    "package_versions", "git_commit", "targets", "supervisor_settings", "stub_url",
    "start_unix_s", "end_unix_s", "load_steps", "cpu_seconds", "verdict",
)


@pytest.fixture
def services(
    tmp_path: Path, redis_server_url: str, redis_key_prefix: str
) -> Iterator[dict[str, str]]:
    """Start a stub and a supervisor on a migrated, seeded SQLite database."""
    database_url = f"sqlite:///{tmp_path / 'configs.db'}"
    migrate(database_url)
    subprocess.run(
        [sys.executable, "-m", "supervisor", "configs", "seed", "--database-url", database_url,
         "--configs", "60", "--channels", "10"],
        check=True, capture_output=True, timeout=60,
    )
    logs = tmp_path / "logs"
    logs.mkdir()

    with running_stub(logs) as stub:
        env = {
            "SUPERVISOR_DATABASE_URL": database_url,
            "SUPERVISOR_REDIS_URL": redis_server_url,
            "SUPERVISOR_DEDUP_KEY_PREFIX": redis_key_prefix,
            "SUPERVISOR_EXECUTION_URL": stub.url,
        }
        with running_supervisor(logs, env) as supervisor:
            yield {"target": supervisor.url, "stub_url": stub.url, "database_url": database_url}


def _run_locust(services: dict[str, str], bundle_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SUPERVISOR_DATABASE_URL": services["database_url"],
        "LOCUST_PROFILE": "constant",
        "LOCUST_RATE_PER_S": str(RATE_PER_S),
    }
    command = [
        sys.executable, "-m", "locust", "-f", str(REPO / "loadtests"), "--headless",
        "--only-summary", "--duration-s", str(DURATION_S), "--targets", services["target"],
        "--stub-url", services["stub_url"], "--bundle-dir", str(bundle_dir), "--seed", "42",
        "--duplicate-ratio", "0.05", "--max-p95-e2e-ms", "60000", "--max-late-ratio", "1",
        "--max-drop-rate", "1",
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=90,
                          cwd=bundle_dir.parent)


def test_locust_run_writes_bundle(services: dict[str, str], tmp_path: Path) -> None:
    bundle_dir = tmp_path / "bundle"

    result = _run_locust(services, bundle_dir)

    output = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, output
    for name in BUNDLE_FILES:
        path = bundle_dir / name
        assert path.is_file(), f"{name} missing from the bundle"
        assert path.stat().st_size > 0, f"{name} is empty"

    metadata = json.loads((bundle_dir / "metadata.json").read_text())
    for key in METADATA_KEYS:
        assert key in metadata, f"metadata.json has no {key!r}"
    assert metadata["profile"] == "constant"
    assert metadata["seeds"]["base_seed"] == 42
    assert metadata["targets"] == [services["target"]]
    assert metadata["supervisor_settings"][services["target"]]["pool_size"] >= 1
    step = metadata["load_steps"][0]
    assert step["end_unix_s"] - step["start_unix_s"] == pytest.approx(DURATION_S)
    assert step["rate_per_s"] == RATE_PER_S

    with (bundle_dir / "supervisor_series.csv").open(newline="") as file:
        series = list(csv.DictReader(file))
    assert len(series) >= DURATION_S
    with (bundle_dir / "locust_stats.csv").open(newline="") as file:
        aggregated = next(r for r in csv.DictReader(file) if r["Name"] == "Aggregated")
    sent_requests = int(aggregated["Request Count"])

    expected = RATE_PER_S * DURATION_S
    assert abs(sent_requests - expected) <= 0.05 * expected

    _, stats = http_json(f"{services['target']}/stats")
    events = stats["events"]
    assert isinstance(events, dict)
    assert events["received"] == sent_requests
    accounted = sum(events[key] for key in ("processed", "failed", "dropped", "duplicate",
                                            "not_owned", "rejected", "in_flight"))
    assert accounted == events["received"]
    assert events["duplicate"] > 0


def test_master_and_two_workers_split_the_rate(services: dict[str, str], tmp_path: Path) -> None:
    from conftest import free_port

    bundle_dir = tmp_path / "bundle-distributed"
    port = free_port()
    env = {**os.environ, "SUPERVISOR_DATABASE_URL": services["database_url"]}
    locust = [sys.executable, "-m", "locust", "-f", str(REPO / "loadtests")]
    master_command = [
        *locust, "--headless", "--only-summary", "--master", "--expect-workers", "2",
        "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
        "--load-profile", "constant", "--rate-per-s", "60", "--duration-s", "10",
        "--targets", services["target"], "--stub-url", services["stub_url"],
        "--bundle-dir", str(bundle_dir), "--seed", "7", "--max-p95-e2e-ms", "60000",
        "--max-late-ratio", "1", "--max-drop-rate", "1",
    ]
    worker_command = [*locust, "--worker", "--master-host", "127.0.0.1",
                      "--master-port", str(port)]
    _, before = http_json(f"{services['target']}/stats")

    master = subprocess.Popen(master_command, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    workers = [subprocess.Popen(worker_command, env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for _ in range(2)]
    try:
        output, _ = master.communicate(timeout=90)
    finally:
        for process in (master, *workers):
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)

    assert master.returncode == 0, output[-3000:]
    metadata = json.loads((bundle_dir / "metadata.json").read_text())
    assert sorted(metadata["seeds"]["workers"]) == ["0", "1"]
    _, after = http_json(f"{services['target']}/stats")
    received = after["events"]["received"] - before["events"]["received"]
    assert received == metadata["sent_events"]
    assert abs(received - 600) <= 30
