"""Run scenarios: the settings of one measured run, and `record_run`, which records its bundle.

A scenario fixes everything that shapes a run: the execution stub's latency, capacity and error
rate, the supervisor's pool size, queue capacity and refresh intervals, the configs seeded into a
fresh database, and the step load profile. `record_run` starts the stub and one supervisor as
processes on loopback ports, runs `locust -f loadtests` against them, and stops every process it
started, also when the run fails. The bundle it writes is the only input of the analysis.

The quick scenario is sized so that the worker pool saturates, not the CPU of this shared
machine. It has eight workers, a stub with a lognormal latency of median 50 ms, a fan-out of about
1.7 calls per event, and eight steps from about 40% to 140% of the pool's capacity (about
115 events/s), with one step near 100% and one well past it for the calibration.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
LOADTESTS_DIR = REPO_ROOT / "loadtests"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
POLL_INTERVAL_S = 0.1
LOCUST_EXIT_VERDICT_FAILED = 1

Progress = Callable[[str], object]


class ScenarioError(RuntimeError):
    """A scenario is invalid, or a process of the run failed to start or finish."""


@dataclass(frozen=True, kw_only=True)
class RunScenario:
    """Settings of one measured run.

    Glossary: `stub_*` configure `supervisor execution-stub` (latency distribution, capacity `C`
    before calls slow down, injected error probability); `pool_size` and `queue_max` are
    `SUPERVISOR_WORKER_POOL_SIZE` and `SUPERVISOR_QUEUE_MAX_SIZE`; `config_count` configs are
    seeded over `channel_count` channels with popularity exponent `config_zipf_s`;
    `profile_steps` is the load profile as `(duration_s, rate_per_s)` steps, which must have
    equal durations and a constant rate increment (the load tests' step profile);
    `event_zipf_exponent` is the channel popularity of the offered events.
    """

    name: str = "custom"
    stub_latency_median_ms: float = 20.0
    stub_latency_sigma: float = 0.5
    stub_capacity: int = 0
    stub_error_rate: float = 0.0
    pool_size: int = 4
    queue_max: int = 300
    config_refresh_ms: int = 5000
    config_full_refresh_ms: int = 60_000
    execution_timeout_ms: int = 2000
    config_count: int = 24
    channel_count: int = 12
    config_zipf_s: float = 1.1
    event_zipf_exponent: float = 1.0
    profile_steps: tuple[tuple[float, float], ...] = ((30.0, 60.0), (30.0, 90.0))
    duplicate_ratio: float = 0.02
    lead_in_s: float = 2.0
    seed: int = 1
    timings_buffer_size: int = 200_000

    def __post_init__(self) -> None:
        if self.pool_size < 1:
            raise ScenarioError(f"pool_size={self.pool_size} is invalid: use 1 or more")
        if self.queue_max < 0:
            raise ScenarioError(f"queue_max={self.queue_max} is invalid: use 0 or more")
        if not 0.0 <= self.duplicate_ratio < 1.0:
            raise ScenarioError(
                f"duplicate_ratio={self.duplicate_ratio} is invalid: use a value in [0, 1)"
            )
        if self.config_count < 1 or self.channel_count < 1:
            raise ScenarioError(
                f"config_count={self.config_count}, channel_count={self.channel_count} are "
                "invalid: seed at least one config on at least one channel"
            )
        locust_step_arguments(self.profile_steps)

    @property
    def duration_s(self) -> float:
        """Length of the load profile, without lead-in and drain."""
        return sum(duration_s for duration_s, _ in self.profile_steps)


def quick_scenario() -> RunScenario:
    """Return the scenario of `capacity-plan --quick`: eight 22 s steps, about 3 minutes.

    Eight workers, a stub with median 50 ms, and 16 configs over 12 channels (a fan-out of
    about 1.7) give a capacity near 115 events/s and 1,000 to 3,000 events per step. The
    supervisor, the stub and Locust together use about a quarter of one core. The rates rise
    by a constant increment (the load tests' step profile) from about 40% to 140% of capacity,
    so that one step sits near 100% and one well past it; calibration uses those two and the
    lowest (see `capacity.calibrate.choose_calibration_steps`) and the others judge the model.
    """
    return _pool_eight_scenario("quick", step_duration_s=22.0)


def full_scenario() -> RunScenario:
    """Return the full scenario: the quick scenario's setting and rates with 120 s steps."""
    return _pool_eight_scenario("full", step_duration_s=120.0)


def _pool_eight_scenario(name: str, step_duration_s: float) -> RunScenario:
    rates_per_s = tuple(45.0 + 17.0 * index for index in range(8))
    return RunScenario(
        name=name,
        profile_steps=tuple((step_duration_s, rate) for rate in rates_per_s),
        stub_latency_median_ms=50.0,
        stub_capacity=24,
        stub_error_rate=0.005,
        pool_size=8,
        queue_max=200,
        config_count=16,
        channel_count=12,
        config_zipf_s=0.5,
    )


def verification_scenario(
    base: RunScenario, pool_size: int, rate_per_s: float, duration_s: float
) -> RunScenario:
    """Return `base` with the recommended pool size and one constant step, for the closing run."""
    return replace(
        base,
        name=f"{base.name}-verification",
        pool_size=pool_size,
        profile_steps=((duration_s, rate_per_s),),
    )


def locust_step_arguments(steps: Sequence[tuple[float, float]]) -> list[str]:
    """Translate profile steps into the load tests' `constant` or `step` profile options."""
    if not steps:
        raise ScenarioError("profile_steps is empty: give at least one (duration_s, rate) step")
    for duration_s, rate_per_s in steps:
        if duration_s <= 0 or rate_per_s <= 0:
            raise ScenarioError(
                f"profile step ({duration_s}, {rate_per_s}) is invalid: use a duration and a "
                "rate above 0"
            )
    durations_s = {duration_s for duration_s, _ in steps}
    if len(durations_s) != 1:
        raise ScenarioError(
            f"profile step durations {sorted(durations_s)} differ: the load tests' step "
            "profile needs one step duration"
        )
    duration_s = steps[0][0]
    if len(steps) == 1:
        return ["--duration-s", f"{duration_s:g}", "--rate-per-s", f"{steps[0][1]:g}"]
    increments = {round(b[1] - a[1], 9) for a, b in itertools.pairwise(steps)}
    if len(increments) != 1:
        raise ScenarioError(
            f"profile step rates {[rate for _, rate in steps]} do not rise by one increment: "
            "the load tests' step profile needs a constant increment"
        )
    return [
        "--step-count", str(len(steps)),
        "--step-duration-s", f"{duration_s:g}",
        "--step-start-rate-per-s", f"{steps[0][1]:g}",
        "--step-rate-increment-per-s", f"{increments.pop():g}",
    ]


def stub_arguments(scenario: RunScenario, port: int) -> list[str]:
    """Return the `supervisor execution-stub` command-line options of a scenario."""
    return [
        "execution-stub", "--port", str(port),
        "--latency", "lognormal",
        "--latency-median-ms", f"{scenario.stub_latency_median_ms:g}",
        "--latency-sigma", f"{scenario.stub_latency_sigma:g}",
        "--capacity", str(scenario.stub_capacity),
        "--error-rate", f"{scenario.stub_error_rate:g}",
        "--seed", str(scenario.seed),
    ]


def supervisor_environment(
    scenario: RunScenario,
    *,
    port: int,
    database_url: str,
    execution_url: str,
    redis_url: str | None,
    dedup_key_prefix: str,
) -> dict[str, str]:
    """Return the `SUPERVISOR_*` variables of a scenario's supervisor."""
    env = {
        "SUPERVISOR_HTTP_HOST": "127.0.0.1",
        "SUPERVISOR_HTTP_PORT": str(port),
        "SUPERVISOR_WORKER_POOL_SIZE": str(scenario.pool_size),
        "SUPERVISOR_QUEUE_MAX_SIZE": str(scenario.queue_max),
        "SUPERVISOR_CONFIG_REFRESH_MS": str(scenario.config_refresh_ms),
        "SUPERVISOR_CONFIG_FULL_REFRESH_MS": str(scenario.config_full_refresh_ms),
        "SUPERVISOR_EXECUTION_TIMEOUT_MS": str(scenario.execution_timeout_ms),
        "SUPERVISOR_DATABASE_URL": database_url,
        "SUPERVISOR_EXECUTION_URL": execution_url,
        "SUPERVISOR_TIMINGS_BUFFER_SIZE": str(scenario.timings_buffer_size),
        "SUPERVISOR_DEDUP_KEY_PREFIX": dedup_key_prefix,
    }
    if redis_url:
        env["SUPERVISOR_REDIS_URL"] = redis_url
    return env


@dataclass
class _Process:
    name: str
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    extra: dict[str, str] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        return error.code


def _wait_ready(running: _Process, path: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            raise ScenarioError(
                f"{running.name} exited with {running.process.returncode} before "
                f"{running.url}{path} responded; see {running.log_path}"
            )
        try:
            if _status(running.url + path) == 200:
                return
        except OSError:
            pass
        time.sleep(POLL_INTERVAL_S)
    raise ScenarioError(
        f"{running.name} at {running.url}{path} timed out: no 200 response within "
        f"{START_TIMEOUT_S} s; see {running.log_path}"
    )


def _stop(running: _Process) -> None:
    process = running.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            logger.warning("%s (pid %d) ignored SIGTERM; killing it", running.name, process.pid)
            process.kill()
            process.wait()
    logger.info("Stopped %s (pid %d), exit code %s", running.name, process.pid,
                process.returncode)


@contextmanager
def _running(
    name: str, args: list[str], port: int, log_path: Path, ready_path: str,
    env: dict[str, str] | None = None,
) -> Iterator[_Process]:
    full_env = {**os.environ, **(env or {})}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "supervisor", *args],
            stdout=log, stderr=subprocess.STDOUT, env=full_env,
        )
    running = _Process(name, process, f"http://127.0.0.1:{port}", log_path)
    try:
        _wait_ready(running, ready_path)
        logger.info("Started %s (pid %d) at %s", name, process.pid, running.url)
        yield running
    finally:
        _stop(running)


def _supervisor_command(args: list[str], timeout_s: float = 120.0) -> None:
    command = [sys.executable, "-m", "supervisor", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if result.returncode != 0:
        raise ScenarioError(
            f"`supervisor {' '.join(args[:2])}` failed with exit code {result.returncode}: "
            f"{result.stderr.strip()[-2000:]}"
        )


def prepare_database(scenario: RunScenario, database_url: str) -> None:
    """Migrate the config database and seed the scenario's configs."""
    _supervisor_command(["migrate", "--database-url", database_url])
    _supervisor_command([
        "configs", "seed", "--database-url", database_url,
        "--configs", str(scenario.config_count), "--channels", str(scenario.channel_count),
        "--zipf-s", f"{scenario.config_zipf_s:g}", "--seed", str(scenario.seed),
    ])


def locust_command(
    scenario: RunScenario, *, target: str, stub_url: str, bundle_dir: Path
) -> list[str]:
    """Return the `locust -f loadtests` command line of a scenario.

    The verdict's latency, drop and lateness limits are opened wide, because a capacity run
    crosses saturation on purpose; the verdict is still recorded in the bundle.
    """
    return [
        sys.executable, "-m", "locust", "-f", str(LOADTESTS_DIR), "--headless", "--only-summary",
        *locust_step_arguments(scenario.profile_steps),
        "--targets", target, "--stub-url", stub_url, "--bundle-dir", str(bundle_dir),
        "--seed", str(scenario.seed), "--duplicate-ratio", f"{scenario.duplicate_ratio:g}",
        "--zipf-exponent", f"{scenario.event_zipf_exponent:g}",
        "--lead-in-s", f"{scenario.lead_in_s:g}",
        "--max-drop-rate", "1", "--max-p95-e2e-ms", "3600000", "--max-late-ratio", "1",
        "--max-execution-error-rate", "1",
    ]


def _run_locust(
    scenario: RunScenario, command: list[str], database_url: str, log_path: Path
) -> None:
    profile = "constant" if len(scenario.profile_steps) == 1 else "step"
    env = {**os.environ, "SUPERVISOR_DATABASE_URL": database_url, "LOCUST_PROFILE": profile}
    limit_s = scenario.duration_s + scenario.lead_in_s + 120.0
    with log_path.open("w") as log:
        try:
            result = subprocess.run(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=limit_s,
                cwd=log_path.parent,
            )
        except subprocess.TimeoutExpired as error:
            raise ScenarioError(
                f"locust did not finish within {limit_s:.0f} s; see {log_path}"
            ) from error
    if result.returncode == LOCUST_EXIT_VERDICT_FAILED:
        logger.warning("Load test verdict FAIL (expected past saturation); see %s", log_path)
    elif result.returncode != 0:
        raise ScenarioError(
            f"locust failed with exit code {result.returncode}; see {log_path}"
        )


def _delete_redis_keys(redis_url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.RedisError as error:
        logger.warning("Could not delete the run's dedup keys %s*: %s", prefix, error)
    finally:
        client.close()


def record_run(
    scenario: RunScenario,
    bundle_dir: str | Path,
    *,
    redis_url: str | None = None,
    database_url: str | None = None,
    pool_size: int | None = None,
    profile_override: Sequence[tuple[float, float]] | None = None,
    progress: Progress = print,
) -> Path:
    """Record one run of `scenario` into `bundle_dir` and return the bundle path.

    Processes, logs and (when `database_url` is None) a fresh SQLite database go in
    `bundle_dir/work`. With `redis_url`, dedup keys get a prefix of their own, deleted at the end.
    """
    if pool_size is not None:
        scenario = replace(scenario, pool_size=pool_size)
    if profile_override is not None:
        steps = tuple((float(duration_s), float(rate)) for duration_s, rate in profile_override)
        scenario = replace(scenario, profile_steps=steps)
    bundle = Path(bundle_dir).resolve()
    work = bundle / "work"
    work.mkdir(parents=True, exist_ok=True)
    database = database_url or f"sqlite:///{work / 'configs.db'}"
    prefix = f"capacity:{uuid.uuid4().hex[:12]}:"
    (work / "scenario.json").write_text(json.dumps(scenario_to_dict(scenario), indent=2))

    progress(f"Preparing the config database for scenario {scenario.name!r}")
    prepare_database(scenario, database)

    stub_port, supervisor_port = _free_port(), _free_port()
    with ExitStack() as stack:
        if redis_url:
            stack.callback(_delete_redis_keys, redis_url, prefix)
        stub = stack.enter_context(_running(
            "execution stub", stub_arguments(scenario, stub_port), stub_port,
            work / "stub.log", "/healthz",
        ))
        env = supervisor_environment(
            scenario, port=supervisor_port, database_url=database, execution_url=stub.url,
            redis_url=redis_url, dedup_key_prefix=prefix,
        )
        supervisor = stack.enter_context(_running(
            "supervisor", ["run"], supervisor_port, work / "supervisor.log", "/readyz", env,
        ))
        progress(
            f"Running the load test: {len(scenario.profile_steps)} steps, "
            f"{scenario.duration_s:.0f} s, pool size {scenario.pool_size}"
        )
        command = locust_command(scenario, target=supervisor.url, stub_url=stub.url,
                                 bundle_dir=bundle)
        _run_locust(scenario, command, database, work / "locust.log")
    progress(f"Run bundle written to {bundle}")
    return bundle


def scenario_to_dict(scenario: RunScenario) -> dict[str, object]:
    """Return the scenario as plain JSON-ready values."""
    values = {name: getattr(scenario, name) for name in scenario.__dataclass_fields__}
    values["profile_steps"] = [list(step) for step in scenario.profile_steps]
    return values
