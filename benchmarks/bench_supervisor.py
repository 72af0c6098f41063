"""Supervisor benchmark: ingest capacity, whole-path throughput and added latency on one machine.

The benchmark starts, on loopback only, a zero-latency execution stub, one supervisor instance
(SQLite configs, the machine's Redis for dedup) and the minimal handler in
`benchmarks/minimal_handler.py`, then measures:

- ingest capacity, with single-event posts and with batches of 100: events accepted (2xx) per
  second. The events go to a channel without configs and the queue is large, so workers keep up
  and no event is dropped. The run notes any event that was dropped.
- whole-path throughput: events per second that the supervisor finished as `processed`, each on
  a channel with exactly one config (fan-out 1), so one execution call per event.
- added latency at a low and at a moderate offered rate: worker start minus receipt, from the
  supervisor's `/timings` (`started_unix_s - received_unix_s`), and consumer take minus receipt
  in the minimal handler.

Capacity runs use `wrk` (Debian's package) with a Lua script that gives every event a unique
`event_id`, because one C thread drives tens of thousands of requests per second on one core and
leaves the other core to the servers. Latency runs need a paced (open-loop) rate, which `wrk`
cannot do, so they use an aiohttp client in a separate process that sends each event at its
scheduled time. Every run is bounded by a duration or a count and a deadline.

Run: `python benchmarks/bench_supervisor.py [--quick] [--write-docs]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import multiprocessing
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from paced_client import paced_load

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCS_PATH = REPO_ROOT / "docs" / "benchmarks.md"
PLOT_PATH = REPO_ROOT / "docs" / "figures" / "supervisor-added-latency.png"
SECTION_TITLE = "## Supervisor"
SHARED_REDIS_URL = "redis://127.0.0.1:6379/0"
NO_CONFIG_CHANNEL = "bench-no-config"
# A profile during a scrape showed encoding 10,000-record `/timings` pages taking about a tenth
# of the supervisor's loop, so the benchmark reads smaller pages.
TIMINGS_PAGE_LIMIT = 2000

# The same as `supervisor run`, without building the parsers of the other commands.
SUPERVISOR_ARGV = [sys.executable, "-m", "supervisor.service"]

TARGETS = {
    "ingest_single_per_s": 3000.0,
    "ingest_batch_per_s": 15000.0,
    "whole_path_per_s": 1500.0,
    "p99_added_latency_ms": 5.0,
    "single_ingest_ratio": 0.3,
}


@dataclass
class Figures:
    """Measured figures of one server; None where a figure does not apply or was not run."""

    name: str
    ingest_single_per_s: float | None = None
    ingest_batch_per_s: float | None = None
    whole_path_per_s: float | None = None
    latency: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --- processes -------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class CpuLayout:
    """CPUs of the server under test and of everything else the benchmark starts.

    `None` leaves every process free to run on any CPU.
    """

    server: set[int] | None = None
    others: set[int] | None = None

    def describe(self) -> str:
        if self.server is None or self.others is None:
            return "no CPU pinning: every process may run on any CPU"
        return (f"server under test pinned to CPU {_cpus(self.server)}; stub, wrk, paced "
                f"client and a Redis the benchmark starts pinned to CPU {_cpus(self.others)}")


def _cpus(cpus: set[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


def cpu_layout(pin: bool) -> CpuLayout:
    """Give the server under test the first allowed CPU and the rest to the other processes."""
    if not pin or not hasattr(os, "sched_setaffinity"):
        return CpuLayout()
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return CpuLayout()
    return CpuLayout(server={allowed[0]}, others=set(allowed[1:]))


@contextlib.contextmanager
def started(name: str, argv: list[str], env: dict[str, str], log_dir: Path,
            cpus: set[int] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server process with its output in `log_dir`, and stop it on exit.

    With `cpus`, the process runs only on those CPUs.
    """
    log_file = (log_dir / f"{name}.log").open("wb")
    pin = None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))
    process = subprocess.Popen(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                               cwd=REPO_ROOT, preexec_fn=pin)
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log_file.close()


async def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Poll `url` until it returns 200; raise when the process exits or after `timeout_s`."""
    deadline_s = time.monotonic() + timeout_s
    last_error = "no response"
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline_s:
            if process.poll() is not None:
                raise RuntimeError(f"the server for {url} exited with code {process.returncode}")
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
                    last_error = f"status {response.status}"
            except aiohttp.ClientError as error:
                last_error = str(error)
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} was not ready after {timeout_s} s ({last_error}); see the logs")


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        response.raise_for_status()
        return await response.json()


async def post_json(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.post(url) as response:
        response.raise_for_status()
        return await response.json()


def delete_redis_keys(url: str, prefix: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=5000))
        for start in range(0, len(keys), 5000):
            client.delete(*keys[start:start + 5000])
        return len(keys)
    finally:
        client.close()


def prepare_configs(database_url: str, channels: int) -> list[str]:
    """Create the config table and one active, auto-executing config per channel."""
    from supervisor import db, migrate

    migrate.upgrade(database_url)
    engine = db.create_engine_from_url(database_url)
    names = [f"bench-{index}" for index in range(channels)]
    try:
        for index, channel in enumerate(names):
            db.add_config(engine, channel=channel, user_id=f"bench-user-{index}")
    finally:
        engine.dispose()
    return names


# --- wrk -------------------------------------------------------------------------------------

_WRK_SCRIPT = """
local batch = %(batch)d
local run = "%(run)s"
local channels = {%(channels)s}
local counter = 0
local next_thread = 0

function setup(thread)
  thread:set("thread_index", next_thread)
  next_thread = next_thread + 1
end

function request()
  local parts = {}
  for i = 1, batch do
    counter = counter + 1
    local channel = channels[(counter %% #channels) + 1]
    parts[i] = string.format(
      '{"event_id":"%%s-%%d-%%d","channel":"%%s","symbol":"BTCUSDT","side":"buy","quantity":1.0}',
      run, thread_index, counter, channel)
  end
  local body = parts[1]
  if batch > 1 then body = '{"events":[' .. table.concat(parts, ",") .. ']}' end
  return wrk.format("POST", "/events", {["Content-Type"] = "application/json"}, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests":%%d,"duration_us":%%d,"status_errors":%%d,"connect_errors":%%d,' ..
    '"read_errors":%%d,"write_errors":%%d,"timeouts":%%d,"p50_us":%%d,"p99_us":%%d}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def run_wrk(url: str, *, batch: int, run_id: str, channels: list[str], connections: int,
            duration_s: float, work_dir: Path) -> dict[str, Any]:
    """Run wrk for `duration_s` and return its summary plus the 2xx rate in requests/s."""
    script = work_dir / f"{run_id}.lua"
    quoted = ",".join(f'"{channel}"' for channel in channels)
    script.write_text(_WRK_SCRIPT % {"batch": batch, "run": run_id, "channels": quoted})
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{int(duration_s)}s", "--timeout", "5s",
            "-s", str(script), url + "/events"]
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60,
                               check=True)
    line = next(ln for ln in completed.stdout.splitlines() if ln.startswith("WRK_RESULT "))
    result: dict[str, Any] = json.loads(line.removeprefix("WRK_RESULT "))
    failed = sum(result[key] for key in ("status_errors", "read_errors", "write_errors",
                                          "timeouts"))
    result["ok_requests_per_s"] = (result["requests"] - failed) / (result["duration_us"] / 1e6)
    return result


# --- paced load (separate process) -----------------------------------------------------------


def run_paced(url: str, run_id: str, channels: list[str], rate_per_s: float,
              count: int) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        async_result = pool.apply_async(paced_load,
                                        (url + "/events", run_id, channels, rate_per_s, count))
        result: dict[str, Any] = async_result.get(timeout=2.0 * count / rate_per_s + 60.0)
    return result


def _percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# --- supervisor figures ----------------------------------------------------------------------


async def supervisor_stats(base_url: str) -> dict[str, Any]:
    stats: dict[str, Any] = await get_json(base_url + "/stats")
    return stats


async def wait_idle(base_url: str, timeout_s: float) -> dict[str, Any]:
    """Wait until the supervisor has no event in flight; return its last stats."""
    deadline_s = time.monotonic() + timeout_s
    while True:
        stats = await supervisor_stats(base_url)
        if stats["events"]["in_flight"] == 0 or time.monotonic() > deadline_s:
            return stats
        await asyncio.sleep(0.2)


async def wait_minimal_idle(base_url: str, timeout_s: float) -> None:
    """Wait until the minimal handler has no request in progress and an empty queue."""
    deadline_s = time.monotonic() + timeout_s
    while True:
        stats = await get_json(base_url + "/stats")
        if stats["queue_depth"] == 0 and stats["requests_in_progress"] == 0:
            return
        if time.monotonic() > deadline_s:
            raise RuntimeError(f"the minimal handler's queue did not drain in {timeout_s} s")
        await asyncio.sleep(0.2)


async def supervisor_lags_s(base_url: str, event_prefix: str) -> list[float]:
    """Page through `/timings` and return worker start minus receipt of matching events."""
    lags_s: list[float] = []
    after = 0
    for _ in range(1000):
        page = await get_json(f"{base_url}/timings?after={after}&limit={TIMINGS_PAGE_LIMIT}")
        for record in page["events"]:
            if record["event_id"].startswith(event_prefix) and record["started_unix_s"]:
                lags_s.append(record["started_unix_s"] - record["received_unix_s"])
        if not page["events"] or page["next"] == after:
            break
        after = page["next"]
    return lags_s


def summarize_lags_ms(lags_s: list[float]) -> dict[str, float | int | None]:
    if not lags_s:
        return {"count": 0, "p50_ms": None, "p99_ms": None}
    ordered = sorted(lags_s)
    return {"count": len(ordered), "p50_ms": 1000.0 * statistics.median(ordered),
            "p99_ms": 1000.0 * _percentile(ordered, 0.99)}


async def measure_ingest(base_url: str, figures: Figures, options: argparse.Namespace,
                         run_id: str, work_dir: Path, stats_path: str | None) -> None:
    for batch in (1, 100):
        before = await get_json(base_url + stats_path) if stats_path else None
        result = run_wrk(base_url, batch=batch, run_id=f"{run_id}-ingest{batch}",
                         channels=[NO_CONFIG_CHANNEL], connections=options.connections,
                         duration_s=options.duration_s, work_dir=work_dir)
        events_per_s = result["ok_requests_per_s"] * batch
        if batch == 1:
            figures.ingest_single_per_s = events_per_s
        else:
            figures.ingest_batch_per_s = events_per_s
        failed = result["status_errors"] + result["timeouts"]
        if failed:
            figures.notes.append(f"batch {batch}: {failed} requests failed or timed out")
        if stats_path and before is not None:
            after = await wait_idle(base_url, 60.0)
            dropped = after["events"]["dropped"] - before["events"]["dropped"]
            if dropped:
                figures.notes.append(f"batch {batch}: {dropped} events dropped (queue full)")
        print(f"  {figures.name} ingest batch={batch}: {events_per_s:,.0f} events/s "
              f"(p99 request {result['p99_us'] / 1000:.1f} ms)", flush=True)


async def measure_whole_path(base_url: str, stub_url: str, figures: Figures,
                             options: argparse.Namespace, run_id: str, work_dir: Path,
                             channels: list[str]) -> None:
    await wait_idle(base_url, 60.0)
    before = await supervisor_stats(base_url)
    stub_before = await get_json(stub_url + "/stats")
    started_s = time.monotonic()
    run_wrk(base_url, batch=1, run_id=f"{run_id}-path", channels=channels,
            connections=options.connections, duration_s=options.duration_s, work_dir=work_dir)
    after = await wait_idle(base_url, 120.0)
    elapsed_s = time.monotonic() - started_s
    stub_after = await get_json(stub_url + "/stats")

    processed = after["events"]["processed"] - before["events"]["processed"]
    executions = stub_after["executions_total"] - stub_before["executions_total"]
    figures.whole_path_per_s = processed / elapsed_s
    failed = after["events"]["failed"] - before["events"]["failed"]
    dropped = after["events"]["dropped"] - before["events"]["dropped"]
    if failed or dropped:
        figures.notes.append(f"whole path: {failed} failed and {dropped} dropped events")
    if executions != processed:
        figures.notes.append(f"whole path: {processed} processed events but {executions} "
                             "stub executions")
    print(f"  supervisor whole path: {figures.whole_path_per_s:,.0f} events/s "
          f"({processed} events in {elapsed_s:.1f} s until idle)", flush=True)


async def server_cpu_s(base_url: str, is_supervisor: bool) -> float:
    """Return the CPU seconds that the server under test has used so far."""
    stats = await get_json(base_url + "/stats")
    cpu_s: float = stats["process"]["cpu_seconds"] if is_supervisor else stats["cpu_seconds"]
    return cpu_s


async def measure_latency(base_url: str, figures: Figures, rate_per_s: float, count: int,
                          run_id: str, channels: list[str], is_supervisor: bool,
                          repeats: int) -> None:
    """Run the latency run at `rate_per_s` `repeats` times and keep the one with the median p99.

    Other services on the machine sometimes take the server's CPU for 5 to 10 ms, and one such
    episode in a run of a few seconds sets that run's p99. The median over repeats is robust
    to it, and the entry keeps every run's p99 so the table's notes can show the spread.
    """
    entries = []
    for repeat in range(repeats):
        entries.append(await _latency_run(base_url, figures.name, rate_per_s, count,
                                          f"{run_id}-lat{int(rate_per_s)}r{repeat}", channels,
                                          is_supervisor))  # fmt: skip
    ranked = sorted(entries, key=lambda entry: entry["p99_ms"] or 0.0)
    chosen = dict(ranked[(len(ranked) - 1) // 2])
    chosen["p99_runs_ms"] = [entry["p99_ms"] for entry in entries]
    figures.latency.append(chosen)


async def _latency_run(base_url: str, name: str, rate_per_s: float, count: int,
                       event_prefix: str, channels: list[str],
                       is_supervisor: bool) -> dict[str, Any]:  # fmt: skip
    if not is_supervisor:
        await wait_minimal_idle(base_url, 60.0)
        await post_json(f"{base_url}/reset?lag_prefix={event_prefix}-")
    cpu_before_s = await server_cpu_s(base_url, is_supervisor)
    load = run_paced(base_url, event_prefix, channels, rate_per_s, count)
    cpu_share = (await server_cpu_s(base_url, is_supervisor) - cpu_before_s) / load["elapsed_s"]
    if is_supervisor:
        await wait_idle(base_url, 60.0)
        lags = summarize_lags_ms(await supervisor_lags_s(base_url, event_prefix + "-"))
    else:
        stats = await get_json(base_url + "/stats")
        lags = {"count": stats["lag_count"], "p50_ms": 1000.0 * (stats["lag_p50_s"] or 0.0),
                "p99_ms": 1000.0 * (stats["lag_p99_s"] or 0.0)}
    entry = {"offered_per_s": rate_per_s, "achieved_per_s": load["achieved_rate_per_s"],
             "statuses": load["statuses"], "generator_late_p99_ms": load["late_p99_ms"],
             "generator_cpu_s": load["cpu_s"], "generator_extra_connections":
             load["extra_connections"], "server_cpu_share": cpu_share, **lags}
    print(f"  {name} latency at {rate_per_s:,.0f}/s: p50 / p99 {_latency_cell(entry)} ms "
          f"over {lags['count']} events (server CPU {cpu_share:.0%} of a core; client: "
          f"{load['cpu_s']:.1f} s CPU, "
          f"p99 {load['late_p99_ms']:.2f} ms late, {load['extra_connections']} extra "
          "connections)", flush=True)
    return entry


# --- orchestration ---------------------------------------------------------------------------


def supervisor_env(options: argparse.Namespace, *, port: int, stub_port: int, database_url: str,
                   dedup_prefix: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "SUPERVISOR_HTTP_HOST": "127.0.0.1",
        "SUPERVISOR_HTTP_PORT": str(port),
        "SUPERVISOR_DATABASE_URL": database_url,
        "SUPERVISOR_REDIS_URL": options.redis_url,
        "SUPERVISOR_DEDUP_KEY_PREFIX": dedup_prefix,
        "SUPERVISOR_EXECUTION_URL": f"http://127.0.0.1:{stub_port}",
        "SUPERVISOR_WORKER_POOL_SIZE": str(options.pool_size),
        "SUPERVISOR_QUEUE_MAX_SIZE": "1000000",
        "SUPERVISOR_TIMINGS_BUFFER_SIZE": "200000",
        "SUPERVISOR_MAX_BATCH_EVENTS": "1000",
    })
    return env


async def redis_for_run(options: argparse.Namespace, work_dir: Path,
                        stack: contextlib.ExitStack) -> tuple[str, str]:
    """Return the Redis URL of the run and a line describing it.

    Without `--redis-url` the benchmark starts its own redis-server, which runs on the helper
    CPUs like the stub. The machine's own Redis is not pinned, moved between CPUs and sometimes
    ran on the server's CPU. Its round trips then had a p99 of 8 to 12 ms, where a pinned Redis
    had about 4 ms.
    """
    options.redis_owned = False
    if options.redis_url:
        return options.redis_url, f"{options.redis_url} (given; not pinned)"
    server = shutil.which("redis-server")
    if server is None:
        return SHARED_REDIS_URL, (f"{SHARED_REDIS_URL} (redis-server is not installed, so the "
                                  "benchmark cannot start its own; not pinned)")
    port = free_port()
    argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
            "no", "--dir", str(work_dir)]
    layout: CpuLayout = options.layout
    process = stack.enter_context(started("redis", argv, dict(os.environ), work_dir,
                                          layout.others))
    url = f"redis://127.0.0.1:{port}/0"
    await wait_redis(url, process, 15.0)
    options.redis_owned = True
    where = "not pinned" if layout.others is None else f"on CPU {_cpus(layout.others)}"
    return url, f"{url} (started by the benchmark, {where})"


async def wait_redis(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    import redis.asyncio as aioredis

    deadline = time.monotonic() + timeout_s
    client = aioredis.Redis.from_url(url)
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {process.returncode} at start")
            try:
                await client.ping()
                return
            except (aioredis.ConnectionError, OSError) as error:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server did not respond to PING within {timeout_s:.0f} s: {error}"
                    ) from error
                await asyncio.sleep(0.05)
    finally:
        await client.aclose()


async def bench_supervisor(options: argparse.Namespace, run_id: str, work_dir: Path,
                           channels: list[str], database_url: str) -> Figures:
    layout: CpuLayout = options.layout
    figures = Figures("supervisor")
    port, stub_port = free_port(), free_port()
    base_url, stub_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{stub_port}"
    stub_argv = [sys.executable, "-m", "supervisor.stub", "--port", str(stub_port),
                 "--latency", "fixed", "--latency-ms", "0", "--seed", "1"]
    env = supervisor_env(options, port=port, stub_port=stub_port, database_url=database_url,
                         dedup_prefix=f"bench:{run_id}:sup:")
    with started("stub", stub_argv, dict(os.environ), work_dir) as stub, \
            started("supervisor", SUPERVISOR_ARGV, env, work_dir, layout.server) as service:
        await wait_ready(stub_url + "/healthz", stub, 30.0)
        await wait_ready(base_url + "/readyz", service, 60.0)
        cpu_before = (await supervisor_stats(base_url))["process"]["cpu_seconds"]

        await measure_ingest(base_url, figures, options, run_id, work_dir, "/stats")
        await measure_whole_path(base_url, stub_url, figures, options, run_id, work_dir,
                                 channels)
        for rate_per_s in latency_rates(options, figures.whole_path_per_s):
            await measure_latency(base_url, figures, rate_per_s,
                                  latency_count(options, rate_per_s), run_id, channels,
                                  is_supervisor=True, repeats=options.latency_repeats)

        cpu_after = (await supervisor_stats(base_url))["process"]["cpu_seconds"]
        figures.notes.append(f"supervisor CPU over all runs: {cpu_after - cpu_before:.1f} s")
    return figures


async def bench_minimal(options: argparse.Namespace, run_id: str, work_dir: Path,
                        channels: list[str], latency_rates_per_s: list[float]) -> Figures:
    layout: CpuLayout = options.layout
    figures = Figures("minimal handler")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, str(REPO_ROOT / "benchmarks" / "minimal_handler.py"),
            "--port", str(port), "--redis-url", options.redis_url,
            "--key-prefix", f"bench:{run_id}:min:"]
    with started("minimal_handler", argv, dict(os.environ), work_dir, layout.server) as handler:
        await wait_ready(base_url + "/healthz", handler, 30.0)
        await measure_ingest(base_url, figures, options, f"{run_id}m", work_dir, None)
        for rate_per_s in latency_rates_per_s:
            await measure_latency(base_url, figures, rate_per_s,
                                  latency_count(options, rate_per_s), f"{run_id}m", channels,
                                  is_supervisor=False, repeats=options.latency_repeats)
    return figures


def latency_rates(options: argparse.Namespace, capacity_per_s: float | None) -> list[float]:
    """Return the low rate and, when capacity is known, each load fraction of it."""
    rates = [options.low_rate_per_s]
    if capacity_per_s:
        rates += [round(fraction * capacity_per_s, -1) for fraction in options.load_fractions]
    return rates


def latency_count(options: argparse.Namespace, rate_per_s: float) -> int:
    """Return the events of one latency run: `--latency-s` worth, and at least 1,000."""
    return max(1000, round(rate_per_s * options.latency_s))


def parse_fractions(text: str) -> list[float]:
    """Parse `--load-fractions`: comma-separated fractions of capacity, each above 0 and below 1."""
    try:
        fractions = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        fractions = []
    if not fractions or not all(0.0 < fraction < 1.0 for fraction in fractions):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of load fractions: give numbers above 0 and below 1, "
            "separated by commas, such as 0.3,0.5,0.7")
    return sorted(fractions)


def machine_description() -> dict[str, str]:
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu_model,
        "python": platform.python_version(),
        "load_before": f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        "wrk": subprocess.run(["wrk", "--version"], capture_output=True, text=True)
        .stdout.splitlines()[0].split(" [")[0] if shutil.which("wrk") else "not installed",
    }


# --- report ----------------------------------------------------------------------------------


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _verdict(passed: bool | None) -> str:
    if passed is None:
        return "n/a"
    return "met" if passed else "missed"


def result_rows(supervisor: Figures, minimal: Figures | None) -> list[list[str]]:
    """Build the table rows: figure, target, supervisor, minimal handler, verdict."""
    rows: list[list[str]] = []
    for label, attribute, target in (
        ("ingest, single events (events/s)", "ingest_single_per_s", "ingest_single_per_s"),
        ("ingest, batches of 100 (events/s)", "ingest_batch_per_s", "ingest_batch_per_s"),
        ("whole path, fan-out 1 (events/s)", "whole_path_per_s", "whole_path_per_s"),
    ):
        value = getattr(supervisor, attribute)
        ceiling = getattr(minimal, attribute) if minimal else None
        passed = None if value is None else value >= TARGETS[target]
        rows.append([label, f">= {TARGETS[target]:,.0f}", _rate(value), _rate(ceiling),
                     _verdict(passed)])

    for index, entry in enumerate(supervisor.latency):
        ceiling_entry = minimal.latency[index] if minimal and index < len(minimal.latency) else None
        p99 = entry["p99_ms"]
        load = ""
        if supervisor.whole_path_per_s:
            load = f", {entry['offered_per_s'] / supervisor.whole_path_per_s:.0%} of capacity"
        rows.append([
            f"added latency p50 / p99 at {entry['offered_per_s']:,.0f} events/s{load} (ms)",
            f"p99 < {TARGETS['p99_added_latency_ms']:.0f}",
            _latency_cell(entry),
            _latency_cell(ceiling_entry) if ceiling_entry else "n/a",
            _verdict(None if p99 is None else p99 < TARGETS["p99_added_latency_ms"]),
        ])

    ratio = None
    if minimal and supervisor.ingest_single_per_s and minimal.ingest_single_per_s:
        ratio = supervisor.ingest_single_per_s / minimal.ingest_single_per_s
    rows.append(["single-event ingest / minimal handler", f">= {TARGETS['single_ingest_ratio']}",
                 "n/a" if ratio is None else f"{ratio:.2f}", "1",
                 _verdict(None if ratio is None else ratio >= TARGETS["single_ingest_ratio"])])
    return rows


def _latency_cell(entry: dict[str, Any] | None) -> str:
    if entry is None or entry["p50_ms"] is None:
        return "n/a"
    return f"{entry['p50_ms']:.2f} / {entry['p99_ms']:.2f}"


def markdown_table(rows: list[list[str]]) -> str:
    header = ["figure", "target", "supervisor", "minimal handler", "verdict"]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def section_text(machine: dict[str, str], options: argparse.Namespace, table: str,
                 notes: list[str]) -> str:
    settings = (f"pool size {options.pool_size}, queue capacity 1,000,000, {options.connections} "
                f"wrk connections, {options.duration_s:.0f} s per capacity run, "
                f"{options.latency_s:.0f} s (at least 1,000 events) per latency run, "
                f"{options.latency_repeats} runs per latency load (the table shows the run with "
                "the median p99)")
    lines = [
        SECTION_TITLE,
        "",
        "Produced by `python benchmarks/bench_supervisor.py --write-docs`; see "
        "`benchmarks/README.md` for what each figure measures.",
        "",
        f"- date: {machine['date']}",
        f"- machine: {machine['nproc']} CPUs, {machine['cpu']}; Python {machine['python']}; "
        f"{machine['wrk']}",
        f"- load average before the run: {machine['load_before']} (other work shared the CPUs)",
        f"- settings: {settings}",
        "- load generator, Redis, the zero-latency stub and the server under test share the "
        "machine",
        f"- CPUs: {options.layout.describe()}",
        f"- Redis: {options.redis_note}",
        "",
        table,
        "",
        "![p50 and p99 added latency against load](figures/supervisor-added-latency.png)",
        "",
    ]
    if notes:
        lines += ["Notes:", ""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(lines)


def write_latency_plot(supervisor: Figures, minimal: Figures | None, path: Path) -> None:
    """Plot p50 and p99 added latency against the offered rate as a share of capacity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    capacity = supervisor.whole_path_per_s or 1.0
    figure, axes = plt.subplots(figsize=(7.0, 4.2), layout="constrained")
    for figures, color in ((supervisor, "tab:blue"), (minimal, "tab:gray")):
        entries = [e for e in figures.latency if e["p50_ms"] is not None] if figures else []
        if not figures or not entries:
            continue
        loads = [100.0 * e["offered_per_s"] / capacity for e in entries]
        p99s = [e["p99_ms"] for e in entries]
        axes.plot(loads, p99s, "o-", color=color, label=f"{figures.name}, p99 (median run)")
        runs = [e.get("p99_runs_ms") or [e["p99_ms"]] for e in entries]
        low = [p99 - min(each) for p99, each in zip(p99s, runs, strict=True)]
        high = [max(each) - p99 for p99, each in zip(p99s, runs, strict=True)]
        axes.errorbar(loads, p99s, yerr=[low, high], fmt="none", ecolor=color, capsize=3,
                      alpha=0.6)
        axes.plot(loads, [e["p50_ms"] for e in entries], "s--", color=color,
                  label=f"{figures.name}, p50")
    axes.axhline(TARGETS["p99_added_latency_ms"], color="tab:red", linestyle=":",
                 label="p99 target")
    axes.axvline(70.0, color="tab:red", linestyle="-.", linewidth=0.8,
                 label="70% of capacity")
    axes.set_xlabel(f"offered rate, % of the whole-path capacity ({capacity:,.0f} events/s)")
    axes.set_ylabel("added latency, receipt to worker start (ms)")
    axes.set_title("Supervisor added latency against load")
    # A single disturbed run can be ten times the others, so a log axis keeps every point legible.
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_section(section: str) -> None:
    """Replace the Supervisor section of docs/benchmarks.md, leaving other sections untouched."""
    if DOCS_PATH.exists():
        text = DOCS_PATH.read_text()
    else:
        text = ("# Benchmarks\n\nMeasured results of the benchmarks in `benchmarks/`, one "
                "section per part, each with the machine and conditions of its run.\n\n")
    start = text.find(SECTION_TITLE + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(SECTION_TITLE))
        tail = "" if end < 0 else text[end + 1:]
        text = text[:start] + section + ("\n" + tail if tail else "")
    DOCS_PATH.write_text(text.rstrip("\n") + "\n")


# --- main ------------------------------------------------------------------------------------


def parse_options(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 s capacity runs and 2 s latency runs")
    parser.add_argument("--duration-s", type=float, default=8.0, help="length of each wrk run")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--pool-size", type=int, default=32, help="supervisor worker pool size")
    parser.add_argument("--channels", type=int, default=100,
                        help="channels with one config each for the whole-path run")
    parser.add_argument("--latency-s", type=float, default=5.0,
                        help="length of each latency run; a run sends at least 1,000 events")
    parser.add_argument("--latency-repeats", type=int, default=3,
                        help="runs at each latency load; the table shows the one with the "
                        "median p99 (default 3)")
    parser.add_argument("--low-rate-per-s", type=float, default=200.0,
                        help="offered rate of the low-load latency run")
    parser.add_argument("--load-fractions", type=parse_fractions, default=[0.3, 0.5, 0.7],
                        help="latency runs at these fractions of the measured whole-path rate")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="let every process run on any CPU instead of giving the server "
                        "under test a CPU of its own")
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL"),
                        help="use this Redis instead of starting one (default: $BENCH_REDIS_URL; "
                        "without either, the benchmark starts its own redis-server)")
    parser.add_argument("--skip-minimal", action="store_true",
                        help="do not measure the minimal handler")
    parser.add_argument("--write-docs", action="store_true",
                        help="write the results into the Supervisor section of docs/benchmarks.md")
    options = parser.parse_args(argv)
    if options.latency_repeats < 1:
        parser.error(f"--latency-repeats {options.latency_repeats} is invalid: use 1 or more")
    if options.quick:
        options.duration_s = 2.0
        options.latency_s = 2.0
        options.latency_repeats = 1
    return options


async def run(options: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        print("bench_supervisor: wrk is not installed; install it with `apt-get install -y wrk`",
              file=sys.stderr)
        return 2
    machine = machine_description()
    options.layout = cpu_layout(options.pin)
    if options.layout.others is not None:
        # The stub, wrk and the paced client inherit this process's CPUs.
        os.sched_setaffinity(0, options.layout.others)
    run_id = uuid.uuid4().hex[:8]
    print(f"Benchmark run {run_id} on {machine['nproc']} CPUs ({machine['cpu']}), "
          f"load {machine['load_before']}", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-supervisor-") as tmp, \
            contextlib.ExitStack() as stack:
        work_dir = Path(tmp)
        database_url = f"sqlite:///{work_dir / 'configs.db'}"
        channels = prepare_configs(database_url, options.channels)
        try:
            options.redis_url, options.redis_note = await redis_for_run(options, work_dir, stack)
            print(f"Redis: {options.redis_note}", flush=True)
            supervisor = await bench_supervisor(options, run_id, work_dir, channels, database_url)
            minimal = None
            if not options.skip_minimal:
                rates = [entry["offered_per_s"] for entry in supervisor.latency]
                minimal = await bench_minimal(options, run_id, work_dir, channels, rates)
        except (RuntimeError, subprocess.SubprocessError, aiohttp.ClientError,
                multiprocessing.TimeoutError) as error:
            print(f"bench_supervisor: run failed: {error}", file=sys.stderr)
            for log in sorted(work_dir.glob("*.log")):
                print(f"--- {log.name} (last lines)\n" + "\n".join(
                    log.read_text(errors="replace").splitlines()[-20:]), file=sys.stderr)
            return 1
        finally:
            if options.redis_url and not options.redis_owned:
                deleted = delete_redis_keys(options.redis_url, f"bench:{run_id}:")
                print(f"Deleted {deleted} Redis keys of this run", flush=True)

    notes = [f"supervisor: {note}" for note in supervisor.notes]
    if minimal:
        notes += [f"minimal handler: {note}" for note in minimal.notes]
    for figures in (supervisor, minimal):
        for entry in figures.latency if figures else []:
            notes.append(f"{figures.name if figures else ''} latency run at "
                         f"{entry['offered_per_s']:,.0f}/s achieved "
                         f"{entry['achieved_per_s']:,.0f}/s with the server at "
                         f"{entry['server_cpu_share']:.0%} of a core, statuses "
                         f"{entry['statuses']}; p99 of each run "
                         + ", ".join(f"{p99:.2f}" for p99 in entry["p99_runs_ms"]) + " ms")
    table = markdown_table(result_rows(supervisor, minimal))
    print("\n" + table + "\n")
    for note in notes:
        print(f"- {note}")
    if options.write_docs:
        write_section(section_text(machine, options, table, notes))
        write_latency_plot(supervisor, minimal, PLOT_PATH)
        print(f"Wrote the Supervisor section of {DOCS_PATH} and the plot {PLOT_PATH}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run(parse_options(argv)))


if __name__ == "__main__":
    sys.exit(main())
