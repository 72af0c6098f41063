"""Highest offered rate one Locust process (and `--processes 2`) sustains on this machine.

Starts its own execution stub and supervisor on free loopback ports, then runs
`locust -f loadtests --headless` at rising constant rates. Events go to channels without
configs, so the supervisor does little work per event and the generator is what is measured. A
rate is sustained when the run has no Locust CPU warning and sends within 5% of the profile.
The search stops at the first rate that is not sustained.

Usage: python benchmarks/bench_locust.py [--rates 250,500,1000,2000] [--duration-s 15]
Prints one JSON line per run and a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not respond within {timeout_s} s")


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "supervisor", *args],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def _run_once(
    target: str, stub_url: str, rate: int, duration_s: int, processes: int, work: Path
) -> dict[str, Any]:
    bundle = work / f"bundle-{processes}-{rate}"
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(REPO / "loadtests"),
        "--headless",
        "--only-summary",
        "--targets",
        target,
        "--stub-url",
        stub_url,
        "--rate-per-s",
        str(rate),
        "--duration-s",
        str(duration_s),
        "--bundle-dir",
        str(bundle),
        "--channels",
        "bench-empty-0,bench-empty-1",
        "--max-p95-e2e-ms",
        "1000000",
        "--max-drop-rate",
        "1",
        "--max-late-ratio",
        "1",
    ]
    if processes > 1:
        command += ["--processes", str(processes)]
    subprocess.run(command, capture_output=True, timeout=duration_s + 120, check=False)
    metadata = json.loads((bundle / "metadata.json").read_text())
    checks = {c["name"]: c for c in metadata["verdict"]["checks"]}
    sustained = checks["cpu_warning"]["passed"] and checks["offered_rate_error"]["passed"]
    return {
        "processes": processes,
        "rate_per_s": rate,
        "sent_events": metadata["sent_events"],
        "expected_events": metadata["expected_events"],
        "late_ratio": metadata["lateness"]["late_ratio"],
        "cpu_warning": metadata["cpu_warning"],
        "locust_cpu_seconds": metadata["cpu_seconds"],
        "sustained": sustained,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="250,500,1000,2000,4000")
    parser.add_argument("--duration-s", type=int, default=15)
    parser.add_argument("--processes", default="1,2", help="Locust process counts to try")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {**os.environ, "SUPERVISOR_DATABASE_URL": f"sqlite:///{work / 'configs.db'}"}
        subprocess.run(
            [sys.executable, "-m", "supervisor", "migrate"],
            env=env,
            check=True,
            capture_output=True,
        )
        stub_port, supervisor_port = _free_port(), _free_port()
        stub = _start(["execution-stub", "--port", str(stub_port)], env, work / "stub.log")
        supervisor_env = {
            **env,
            "SUPERVISOR_HTTP_PORT": str(supervisor_port),
            "SUPERVISOR_EXECUTION_URL": f"http://127.0.0.1:{stub_port}",
            "SUPERVISOR_QUEUE_MAX_SIZE": "100000",
        }
        supervisor = _start(["run"], supervisor_env, work / "supervisor.log")
        try:
            target, stub_url = (
                f"http://127.0.0.1:{supervisor_port}",
                f"http://127.0.0.1:{stub_port}",
            )
            _wait(f"{stub_url}/stats")
            _wait(f"{target}/readyz")
            for processes in (int(p) for p in args.processes.split(",")):
                for rate in rates:
                    result = _run_once(target, stub_url, rate, args.duration_s, processes, work)
                    print(json.dumps(result), flush=True)
                    results.append(result)
                    if not result["sustained"]:
                        break
        finally:
            for process in (supervisor, stub):
                process.terminate()
                process.wait(timeout=15)

    print(
        f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )
    print(
        "| Locust processes | offered rate (events/s) | sent / expected | late ratio | "
        "CPU warning | sustained |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(
            f"| {r['processes']} | {r['rate_per_s']} | {r['sent_events']} / "
            f"{r['expected_events']:.0f} | {r['late_ratio']:.3f} | {r['cpu_warning']} | "
            f"{r['sustained']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
