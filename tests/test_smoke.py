"""Tests of `supervisor smoke`: its pieces on their own, then whole runs against real processes.

The end-to-end tests start the execution stub and supervisor instances as processes, on the real
PostgreSQL (a migrated database of this session) and the real Redis under this test's key
prefix, with short refresh intervals. A healthy pair of shards must pass. Two broken set-ups
must fail at the step that detects them. In the first, two instances each own every channel and
keep dedup in process, so the dedup step fails. In the second, an instance refreshes far less
often than the interval passed to the smoke test, so the pickup step fails. Every run must
leave no config behind, also when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from helpers_processes import RunningProcess, migrate, running_stub, running_supervisor

from supervisor import smoke
from supervisor.sharding import shard_for

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


# ---------------------------------------------------------------------------------------------
# Units


def _probe(needed: tuple[str, ...], lacking: str | None) -> smoke.Probe:
    target = smoke.TargetInfo(
        url="http://127.0.0.1:1", instance_id="i", shard_index=0, shard_count=1, pool_size=1,
        config_refresh_ms=300, config_full_refresh_ms=2000, dedup_backend="memory",
    )
    lane = smoke.Lane(target=target, channel="c")
    return smoke.Probe(lane=lane, needed=needed, lacking=lacking, changed_at_s=10.0,
                       period_s=0.1, limit_s=1.4, wait_s=5.0)


def test_probe_presence_seen_on_first_event() -> None:
    probe = _probe(("A", "C"), None)
    probe.sent = ["e1", "e2"]

    probe.observe({"e1:C": 1}, now_s=10.5, settle_s=0.5)
    assert probe.seen_after_s is None

    probe.observe({"e1:C": 1, "e2:A": 1, "e2:C": 1}, now_s=10.8, settle_s=0.5)
    assert probe.seen_after_s == pytest.approx(0.8)


def test_probe_absence_needs_settle_time() -> None:
    probe = _probe(("C",), "A")
    probe.sent = ["e1"]

    probe.observe({"e1:C": 1}, now_s=11.0, settle_s=0.5)
    assert probe.seen_after_s is None

    probe.observe({"e1:C": 1}, now_s=11.6, settle_s=0.5)
    assert probe.seen_after_s == pytest.approx(1.0)


def test_probe_absence_reset_by_late_execution() -> None:
    probe = _probe(("C",), "A")
    probe.sent = ["e1", "e2"]

    probe.observe({"e1:C": 1}, now_s=11.0, settle_s=0.5)
    probe.observe({"e1:C": 1, "e1:A": 1}, now_s=11.2, settle_s=0.5)
    probe.observe({"e1:C": 1, "e1:A": 1, "e2:C": 1}, now_s=11.4, settle_s=0.5)
    assert probe.seen_after_s is None

    probe.observe({"e1:C": 1, "e1:A": 1, "e2:C": 1}, now_s=11.9, settle_s=0.5)
    assert probe.seen_after_s == pytest.approx(1.4)


def test_parse_metrics_reads_refresh_timestamps() -> None:
    text = (
        "# TYPE supervisor_worker_pool_size gauge\n"
        "supervisor_worker_pool_size 4\n"
        "# TYPE supervisor_config_refresh_last_success_timestamp_seconds gauge\n"
        'supervisor_config_refresh_last_success_timestamp_seconds{kind="full"} 1700000000.5\n'
        'supervisor_config_refresh_last_success_timestamp_seconds{kind="incremental"} 1700000001\n'
    )

    samples = smoke.parse_metrics(text)

    assert samples["supervisor_worker_pool_size"][()] == 4.0
    assert smoke.refresh_timestamp(samples, "full") == 1700000000.5
    assert smoke.refresh_timestamp(samples, "incremental") == 1700000001.0


def test_refresh_timestamp_absent_before_success() -> None:
    samples = smoke.parse_metrics("# TYPE supervisor_worker_pool_size gauge\n"
                                  "supervisor_worker_pool_size 4\n")

    assert smoke.refresh_timestamp(samples, "full") is None


@pytest.mark.parametrize(("shard_index", "shard_count"), [(0, 1), (0, 3), (1, 3), (2, 3)])
def test_channel_owned_by_target(shard_index: int, shard_count: int) -> None:
    target = smoke.TargetInfo(
        url="http://127.0.0.1:1", instance_id="i", shard_index=shard_index,
        shard_count=shard_count, pool_size=1, config_refresh_ms=300,
        config_full_refresh_ms=2000, dedup_backend="redis",
    )

    channel = smoke.channel_owned_by("smoke-run1-", target, position=5)

    assert channel.startswith("smoke-run1-t5-")
    assert shard_for(channel, shard_count) == shard_index


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    smoke.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_options_default_to_service_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = _args("--targets", "http://127.0.0.1:1", "--stub-url", "http://127.0.0.1:2")

    options = smoke.build_options(args, environ={})

    assert options.database_url == f"sqlite:///{tmp_path / 'supervisor.db'}"


def test_options_reject_target_without_scheme() -> None:
    args = _args("--targets", "127.0.0.1:1", "--stub-url", "http://127.0.0.1:2",
                 "--database-url", "sqlite:///x.db")

    with pytest.raises(smoke.SmokeOptionError, match=re.escape("'127.0.0.1:1'")):
        smoke.build_options(args, environ={})


def test_options_default_from_environment() -> None:
    args = _args("--targets", "http://127.0.0.1:1/, http://127.0.0.1:3")
    environ = {
        "SUPERVISOR_DATABASE_URL": "sqlite:///x.db",
        "SUPERVISOR_EXECUTION_URL": "http://127.0.0.1:2/",
        "SUPERVISOR_WORKER_POOL_SIZE": "6",
        "SUPERVISOR_DEDUP_KEY_PREFIX": "staging:dedup:",
    }

    options = smoke.build_options(args, environ=environ)

    assert options.targets == ("http://127.0.0.1:1", "http://127.0.0.1:3")
    assert options.stub_url == "http://127.0.0.1:2"
    assert options.expected_pool_size == 6
    assert options.dedup_key_prefix == "staging:dedup:"
    assert options.redis_url is None


class _RecordingStore:
    def __init__(self) -> None:
        self.rows: dict[str, str] = {}

    def add(self, *, channel: str, user_id: str) -> str:
        config_id = f"cfg_{len(self.rows)}"
        self.rows[config_id] = channel
        return config_id

    def disable(self, config_id: str) -> None:
        pass

    def delete(self, config_ids: Sequence[str]) -> int:
        present = [config_id for config_id in config_ids if config_id in self.rows]
        for config_id in present:
            del self.rows[config_id]
        return len(present)

    def close(self) -> None:
        pass


def test_interrupt_still_cleans_up() -> None:
    options = smoke.build_options(
        _args("--targets", "http://127.0.0.1:1", "--stub-url", "http://127.0.0.1:2",
              "--database-url", "sqlite:///x.db", "--run-id", "r1"),
        environ={},
    )
    store = _RecordingStore()
    run = smoke.SmokeRun(options, http=smoke.HttpClient(1.0), store=store, dedup_keys=None,
                         clock=smoke.SystemSmokeClock())

    def interrupted_steps() -> None:
        run.config_ids.append(store.add(channel="smoke-r1-t0-0", user_id="u"))
        raise KeyboardInterrupt

    run.run_steps = interrupted_steps  # type: ignore[method-assign]

    exit_code = smoke.execute(run)

    assert exit_code == smoke.EXIT_INTERRUPTED
    assert store.rows == {}
    assert [r.step for r in run.results] == ["interrupted", "cleanup"]
    assert run.results[-1].status is smoke.Status.PASS


# ---------------------------------------------------------------------------------------------
# Processes


@pytest.fixture
def processes() -> Iterator[contextlib.ExitStack]:
    """Stops every process a test started, in reverse order, even when the test fails."""
    with contextlib.ExitStack() as stack:
        yield stack


@pytest.fixture(scope="module")
def config_database(postgres_server_url: str) -> str:
    """The session's PostgreSQL database, migrated with `supervisor migrate`."""
    migrate(postgres_server_url)
    return postgres_server_url


def _start_stub(processes: contextlib.ExitStack, log_dir: Path) -> RunningProcess:
    return processes.enter_context(running_stub(log_dir))


def _start_supervisor(
    processes: contextlib.ExitStack, log_dir: Path, database_url: str, stub: RunningProcess,
    **settings: str | int,
) -> RunningProcess:
    env = {
        "SUPERVISOR_DATABASE_URL": database_url,
        "SUPERVISOR_EXECUTION_URL": stub.url,
        "SUPERVISOR_WORKER_POOL_SIZE": "4",
        "SUPERVISOR_CONFIG_REFRESH_MS": "300",
        "SUPERVISOR_CONFIG_FULL_REFRESH_MS": "2000",
        "SUPERVISOR_REDIS_URL": "",
    }
    env.update({f"SUPERVISOR_{key.upper()}": str(value) for key, value in settings.items()})
    return processes.enter_context(running_supervisor(log_dir, env))


def _run_smoke(
    capsys: pytest.CaptureFixture[str], targets: Sequence[RunningProcess], stub: RunningProcess,
    database_url: str, *extra: str,
) -> tuple[int, dict[str, Any]]:
    from supervisor.cli import main

    capsys.readouterr()
    exit_code = main([
        "smoke", "--targets", ",".join(t.url for t in targets), "--stub-url", stub.url,
        "--database-url", database_url, "--json", "--max-wait-s", "20", *extra,
    ])
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    return exit_code, report


def _statuses(report: dict[str, Any], step: str) -> list[str]:
    return [s["status"] for s in report["steps"] if s["step"] == step]


def _configs_of_run(database_url: str, run_id: str) -> list[str]:
    from supervisor import db

    engine = db.create_engine_from_url(database_url)
    try:
        return [row.id for row in db.list_configs(engine) if run_id in row.channel]
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------------
# Whole runs


@pytest.mark.integration
@pytest.mark.e2e
def test_smoke_passes_on_two_shards(
    processes: contextlib.ExitStack, tmp_path: Path, config_database: str, redis_server_url: str,
    redis_key_prefix: str, capsys: pytest.CaptureFixture[str],
) -> None:
    stub = _start_stub(processes, tmp_path)
    shards = [
        _start_supervisor(processes, tmp_path, config_database, stub, shard_count=2,
                          shard_index=index, redis_url=redis_server_url,
                          dedup_key_prefix=redis_key_prefix)
        for index in range(2)
    ]

    exit_code, report = _run_smoke(
        capsys, shards, stub, config_database, "--redis-url", redis_server_url,
        "--dedup-key-prefix", redis_key_prefix, "--expected-pool-size", "4",
    )

    failed = [s for s in report["steps"] if s["status"] != "PASS"]
    assert failed == []
    assert exit_code == smoke.EXIT_OK
    for step in ("discover", "pickup", "disable", "delete", "dedup", "dedup_repeat", "metrics"):
        assert _statuses(report, step) == ["PASS", "PASS"], step
    assert _statuses(report, "dedup_counters") == ["PASS"]
    assert _statuses(report, "cleanup") == ["PASS"]
    assert _configs_of_run(config_database, report["run_id"]) == []
    assert _redis_keys(redis_server_url, redis_key_prefix, report["run_id"]) == []


def _redis_keys(redis_url: str, prefix: str, run_id: str) -> list[bytes]:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return list(client.scan_iter(match=f"{prefix}*{run_id}*", count=1000))
    finally:
        client.close()


@pytest.mark.integration
@pytest.mark.e2e
def test_smoke_fails_dedup_when_both_own_everything(
    processes: contextlib.ExitStack, tmp_path: Path, config_database: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stub = _start_stub(processes, tmp_path)
    instances = [
        _start_supervisor(processes, tmp_path, config_database, stub, shard_count=1,
                          shard_index=0)
        for index in range(2)
    ]

    exit_code, report = _run_smoke(capsys, instances, stub, config_database)

    assert exit_code == smoke.EXIT_FAILED
    assert _statuses(report, "pickup") == ["PASS", "PASS"]
    assert _statuses(report, "dedup") == ["FAIL", "FAIL"]
    executions = [s["measured"]["executions"] for s in report["steps"] if s["step"] == "dedup"]
    assert executions == [2, 2]
    assert _statuses(report, "dedup_counters") == ["FAIL"]
    assert _statuses(report, "cleanup") == ["PASS"]
    assert _configs_of_run(config_database, report["run_id"]) == []


@pytest.mark.integration
@pytest.mark.e2e
def test_smoke_fails_pickup_on_slow_refresh(
    processes: contextlib.ExitStack, tmp_path: Path, config_database: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stub = _start_stub(processes, tmp_path)
    instance = _start_supervisor(processes, tmp_path, config_database, stub,
                                 config_refresh_ms=120_000, config_full_refresh_ms=240_000)

    exit_code, report = _run_smoke(
        capsys, [instance], stub, config_database, "--expected-refresh-ms", "300",
        "--expected-full-refresh-ms", "2000", "--tolerance-ms", "500",
    )

    assert exit_code == smoke.EXIT_FAILED
    pickup = [s for s in report["steps"] if s["step"] == "pickup"]
    assert [s["status"] for s in pickup] == ["FAIL"]
    assert pickup[0]["measured"]["seen_after_s"] is None
    assert _statuses(report, "disable") == ["SKIPPED"]
    assert _statuses(report, "cleanup") == ["PASS"]
    assert _configs_of_run(config_database, report["run_id"]) == []


@pytest.mark.integration
@pytest.mark.e2e
def test_sigterm_during_run_cleans_up(
    processes: contextlib.ExitStack, tmp_path: Path, config_database: str,
) -> None:
    stub = _start_stub(processes, tmp_path)
    instance = _start_supervisor(processes, tmp_path, config_database, stub,
                                 config_refresh_ms=120_000, config_full_refresh_ms=240_000)
    run_id = uuid.uuid4().hex[:12]
    log_path = tmp_path / "smoke.log"

    with log_path.open("wb") as log:
        smoke_process = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "smoke", "--targets", instance.url,
             "--stub-url", stub.url, "--database-url", config_database, "--run-id", run_id,
             "--json"],
            stdout=subprocess.PIPE, stderr=log,
        )
    try:
        _wait_for_configs(config_database, run_id, smoke_process)
        smoke_process.send_signal(signal.SIGTERM)
        stdout, _ = smoke_process.communicate(timeout=STOP_TIMEOUT_S)
    finally:
        if smoke_process.poll() is None:
            smoke_process.kill()
            smoke_process.wait()

    assert smoke_process.returncode == smoke.EXIT_INTERRUPTED, log_path.read_text()
    report = json.loads(stdout)
    assert _statuses(report, "interrupted") == ["SKIPPED"]
    assert _statuses(report, "cleanup") == ["PASS"]
    assert len(report["created"]["config_ids"]) == 3
    assert _configs_of_run(config_database, run_id) == []


def _wait_for_configs(database_url: str, run_id: str, process: subprocess.Popen[bytes]) -> None:
    deadline_s = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline_s:
        if process.poll() is not None:
            pytest.fail(f"the smoke run exited early with {process.returncode}")
        if len(_configs_of_run(database_url, run_id)) == 3:
            return
        time.sleep(0.1)
    pytest.fail(f"the smoke run created no configs within {START_TIMEOUT_S} s")


class _HtmlHandler(http.server.BaseHTTPRequestHandler):
    """Replies to every request with a 200 HTML page, as a proxy or a wrong port might."""

    def _reply(self) -> None:
        body = b"<html><body>not a supervisor</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._reply()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._reply()

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def html_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HtmlHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_client_rejects_non_json_body(html_server: str) -> None:
    from supervisor.smoke.http_client import HttpClient

    client = HttpClient(timeout_s=2.0)

    with pytest.raises(smoke.TargetError, match=r"GET .*/stats returned a body that is not JSON"):
        client.get_json(html_server + "/stats")
    with pytest.raises(smoke.TargetError, match=r"POST .*/events returned a body that is not JSON"):
        client.post_json(html_server + "/events", {"event_id": "e1"})
    assert "not a supervisor" in client.get_text(html_server + "/metrics")
