"""`supervisor run` as a process: start log, readiness, ingest and drain on SIGTERM."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from helpers_processes import (
    http_json,
    migrate,
    running_stub,
    start_supervisor,
    stop_process,
    wait_idle,
)

from supervisor.db import add_config, create_engine_from_url

pytestmark = pytest.mark.e2e


def seeded_database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'configs.db'}"
    migrate(url)
    engine = create_engine_from_url(url)
    for user in ("u1", "u2"):
        add_config(engine, channel="alpha", user_id=user)
    engine.dispose()
    return url


def test_run_serves_and_drains_on_sigterm(tmp_path: Path) -> None:
    database_url = seeded_database(tmp_path)
    with running_stub(tmp_path, "--latency-ms", "1") as stub:
        env = {
            "SUPERVISOR_DATABASE_URL": database_url,
            "SUPERVISOR_EXECUTION_URL": stub.url,
            "SUPERVISOR_WORKER_POOL_SIZE": "3",
            "SUPERVISOR_SHUTDOWN_DRAIN_MS": "5000",
        }
        supervisor = start_supervisor(tmp_path, env)
        try:
            events = [{"event_id": f"e{i}", "channel": "alpha", "symbol": "BTC",
                       "side": "buy", "quantity": 1} for i in range(20)]  # fmt: skip
            status, body = http_json(supervisor.url + "/events", {"events": events})
            assert status == 202
            assert body["counts"]["accepted"] == 20
            stats = wait_idle(supervisor.url)
        finally:
            exit_code = stop_process(supervisor)

        _, keys = http_json(stub.url + "/keys")

    log = supervisor.log_text()
    assert exit_code == 0
    assert "Worker pool size: 3" in log
    assert "Refreshed (full)" in log
    assert re.search(r"Stopped: received=20 processed=20 failed=0 dropped=0", log)
    assert stats["events"]["processed"] == 20
    assert stats["instance"]["pool_size"] == 3
    assert len(keys["counts"]) == 40
    assert set(keys["counts"].values()) == {1}


def test_bad_setting_stops_the_start(tmp_path: Path) -> None:
    supervisor = start_supervisor(
        tmp_path, {"SUPERVISOR_WORKER_POOL_SIZE": "0"}, wait_ready=False
    )
    exit_code = supervisor.process.wait(timeout=30)

    assert exit_code == 2
    assert "SUPERVISOR_WORKER_POOL_SIZE=0" in supervisor.log_text()


def test_port_in_use_stops_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        supervisor = start_supervisor(
            tmp_path, {"SUPERVISOR_HTTP_PORT": str(port)}, wait_ready=False
        )
        exit_code = supervisor.process.wait(timeout=30)

    log = supervisor.log_text()
    assert exit_code == 1
    assert f"supervisor: cannot listen on 127.0.0.1:{port}" in log
    assert "SUPERVISOR_HTTP_PORT" in log
    assert "Traceback" not in log


def test_not_ready_without_config_table(tmp_path: Path) -> None:
    env = {"SUPERVISOR_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}",
           "SUPERVISOR_CONFIG_REFRESH_MS": "100"}  # fmt: skip
    supervisor = start_supervisor(tmp_path, env, wait_ready=False)
    try:
        from helpers_processes import wait_until

        wait_until(supervisor.url + "/healthz", supervisor)
        status, body = http_json(supervisor.url + "/readyz")
    finally:
        stop_process(supervisor)

    assert status == 503
    assert "config refresh" in body["reason"]
