"""Start the execution stub and supervisor instances as processes, and stop them.

Smoke tests, load tests and end-to-end tests share these helpers. Every process writes its
output to a log file, listens on 127.0.0.1 only and is stopped by `stop_process` (SIGTERM, then
SIGKILL after a grace period), which the context managers call even when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import free_port

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
POLL_S = 0.05


@dataclass
class RunningProcess:
    """A started process, its base URL and the file its output goes to."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log_text(self) -> str:
        """Return everything the process has written so far."""
        return self.log_path.read_text(errors="replace")


def http_json(url: str, data: Any = None, timeout_s: float = 5.0) -> tuple[int, Any]:
    """Send a GET (or a POST of `data` as JSON) to a loopback URL; return status and JSON."""
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(url, data=body, method="GET" if body is None else "POST")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def wait_until(url: str, process: RunningProcess, timeout_s: float = START_TIMEOUT_S) -> None:
    """Poll `url` until it returns 200; raise with the process log if it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.process.poll() is not None:
            raise RuntimeError(
                f"process exited with {process.process.returncode} before {url} answered:\n"
                f"{process.log_text()}"
            )
        with contextlib.suppress(OSError):
            status, _ = http_json(url, timeout_s=1.0)
            if status == 200:
                return
        time.sleep(POLL_S)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s} s:\n{process.log_text()}")


def start_process(
    args: list[str], port: int, log_path: Path, env: Mapping[str, str] | None = None
) -> RunningProcess:
    """Start `python -m supervisor ARGS` with its output in `log_path`."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "supervisor", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
    return RunningProcess(process, f"http://127.0.0.1:{port}", log_path)


def stop_process(running: RunningProcess, timeout_s: float = STOP_TIMEOUT_S) -> int:
    """Send SIGTERM, wait up to `timeout_s`, then SIGKILL; return the exit code."""
    process = running.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def start_stub(log_dir: Path, *stub_args: str) -> RunningProcess:
    """Start `supervisor execution-stub` on a free port and wait for its `/healthz`."""
    port = free_port()
    stub = start_process(
        ["execution-stub", "--port", str(port), *stub_args], port, log_dir / f"stub-{port}.log"
    )
    wait_until(stub.url + "/healthz", stub)
    return stub


def start_supervisor(
    log_dir: Path, env: Mapping[str, str], *, wait_ready: bool = True
) -> RunningProcess:
    """Start `supervisor run` on a free port with `SUPERVISOR_*` variables from `env`."""
    port = free_port()
    full_env = {"SUPERVISOR_HTTP_HOST": "127.0.0.1", "SUPERVISOR_HTTP_PORT": str(port), **env}
    supervisor = start_process(["run"], port, log_dir / f"supervisor-{port}.log", full_env)
    if wait_ready:
        wait_until(supervisor.url + "/readyz", supervisor)
    return supervisor


@contextlib.contextmanager
def running_stub(log_dir: Path, *stub_args: str) -> Iterator[RunningProcess]:
    """Run the stub for the duration of a `with` block."""
    stub = start_stub(log_dir, *stub_args)
    try:
        yield stub
    finally:
        stop_process(stub)


@contextlib.contextmanager
def running_supervisor(
    log_dir: Path, env: Mapping[str, str], *, wait_ready: bool = True
) -> Iterator[RunningProcess]:
    """Run one supervisor instance for the duration of a `with` block."""
    supervisor = start_supervisor(log_dir, env, wait_ready=wait_ready)
    try:
        yield supervisor
    finally:
        stop_process(supervisor)


def wait_idle(url: str, timeout_s: float = 30.0) -> dict[str, Any]:
    """Poll `/stats` until nothing is in flight; return the last snapshot."""
    deadline = time.monotonic() + timeout_s
    while True:
        _, stats = http_json(url + "/stats")
        if stats["events"]["in_flight"] == 0:
            return dict(stats)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} still has events in flight after {timeout_s} s: {stats}")
        time.sleep(POLL_S)


def migrate(database_url: str) -> None:
    """Create the config table with `supervisor migrate`."""
    subprocess.run(
        [sys.executable, "-m", "supervisor", "migrate", "--database-url", database_url],
        check=True,
        capture_output=True,
    )
