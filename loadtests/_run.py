"""State of one Locust process during a load run, and the master's end-of-run work.

Every process (local, master or worker) keeps a `ProcessState`: the plan, its seed, the
shared origin time and the pacing figures of its users. Workers send their figures to the
master once a second as a custom message; the master (or the local runner) scrapes the
supervisors, and at quit writes the bundle's metadata and sets the exit code from the checks.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gevent
from _bundle import default_bundle_dir, git_commit, own_cpu_seconds, package_versions
from _configs_db import (
    ConfigSummary,
    database_url,
    read_configs,
    resolve_channels,
    write_configs_csv,
)
from _event_source import EventSource, ZipfChannelChooser, derive_seed
from _options import RunPlan, build_plan, resolve_profile
from _pacing import LatenessStats, UserPacer
from _profiles import ArrivalClock, expected_events, total_duration_s
from _scraper import Scraper
from _series import counter_delta, executions_total
from _verdict import Check, RunFigures, evaluate, format_summary, passed
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

logger = logging.getLogger(__name__)

REPORT_MESSAGE = "supervisor_load_report"
REPORT_INTERVAL_S = 1.0
# Locust workers send their request stats to the master every 3 s, so the drain after the last
# send lasts longer than that for the master's totals to be complete at quit.
WORKER_STATS_INTERVAL_S = 3.0
EXIT_FAILED_CHECKS = 1


def drain_s(plan: RunPlan) -> float:
    """Return the idle time after the last send before the run stops.

    It outlasts the request timeout, so no request is in flight when users are stopped and
    every event the supervisor received has a matching Locust request.
    """
    return max(plan.request_timeout_s, WORKER_STATS_INTERVAL_S) + 1.0


def run_length_s(plan: RunPlan) -> float:
    return plan.lead_in_s + total_duration_s(plan.steps) + drain_s(plan)


@dataclass
class ProcessState:
    """What one Locust process knows about the run; users read it when they start."""

    plan: RunPlan | None = None
    channels: list[str] = field(default_factory=list)
    run_id: str = ""
    base_seed: int = 0
    worker_index: int = 0
    worker_seed: int = 0
    origin_unix_s: float = 0.0
    origin_monotonic_s: float = 0.0
    clock: ArrivalClock | None = None
    lateness: LatenessStats = field(default_factory=lambda: LatenessStats(0.1))
    new_events: int = 0
    duplicate_events: int = 0
    users_started: int = 0
    cpu_seconds_at_start: float = 0.0

    def load_time_s(self) -> float:
        """Return seconds since the first load step began (negative during the lead-in)."""
        assert self.plan is not None
        return time.monotonic() - self.origin_monotonic_s - self.plan.lead_in_s

    def set_origin(self, origin_unix_s: float) -> None:
        self.origin_unix_s = origin_unix_s
        self.origin_monotonic_s = time.monotonic() - (time.time() - origin_unix_s)

    def new_user(self) -> tuple[UserPacer, EventSource]:
        """Give a starting user its pacer and event source, each from its own seed."""
        assert self.plan is not None and self.clock is not None
        user_index = self.users_started
        self.users_started += 1
        rng = random.Random(derive_seed(self.worker_seed, "user", user_index))
        pacer = UserPacer(
            self.clock,
            user_count=self.plan.user_count,
            batch_size=self.plan.batch_size,
            phase=rng.random(),
        )
        source = EventSource(
            id_prefix=f"{self.run_id}-w{self.worker_index}-u{user_index}",
            chooser=ZipfChannelChooser(self.channels, self.plan.zipf_exponent),
            duplicate_ratio=self.plan.duplicate_ratio,
            rng=rng,
        )
        return pacer, source

    def report(self) -> dict[str, Any]:
        return {
            "worker_index": self.worker_index,
            "seed": self.worker_seed,
            "lateness": asdict(self.lateness),
            "new_events": self.new_events,
            "duplicate_events": self.duplicate_events,
            "users_started": self.users_started,
            "cpu_seconds": own_cpu_seconds() - self.cpu_seconds_at_start,
        }


STATE = ProcessState()


def prepare_process(environment: Environment) -> None:
    """Build the plan from the options as they are now (workers: after the master's)."""
    options = environment.parsed_options
    assert options is not None
    plan = build_plan(options)
    STATE.plan = plan
    STATE.clock = ArrivalClock(plan.steps)
    STATE.lateness = LatenessStats(plan.late_threshold_s)
    STATE.channels = [c for c in options.channels.split(",") if c]
    STATE.run_id = options.run_id
    STATE.base_seed = options.seed
    runner = environment.runner
    STATE.worker_index = runner.worker_index if isinstance(runner, WorkerRunner) else 0
    STATE.worker_seed = derive_seed(STATE.base_seed, "worker", STATE.worker_index)
    STATE.set_origin(options.load_origin_unix_s or time.time())
    STATE.cpu_seconds_at_start = own_cpu_seconds()


def start_worker_reports(environment: Environment) -> None:
    runner = environment.runner
    assert isinstance(runner, WorkerRunner)

    def loop() -> None:
        while True:
            gevent.sleep(REPORT_INTERVAL_S)
            runner.send_message(REPORT_MESSAGE, STATE.report())

    gevent.spawn(loop)


@dataclass
class MasterRun:
    """The master's (or local runner's) side of one run: bundle, scraper and verdict."""

    environment: Environment
    plan: RunPlan
    bundle_dir: Path
    configs: list[ConfigSummary] | None
    scraper: Scraper
    csv_writer: Any
    csv_greenlet: gevent.Greenlet
    started_at_unix_s: float = 0.0
    worker_reports: dict[int, dict[str, Any]] = field(default_factory=dict)

    def on_worker_report(self, data: dict[str, Any]) -> None:
        self.worker_reports[int(data["worker_index"])] = data

    def pacing_reports(self) -> list[dict[str, Any]]:
        if isinstance(self.environment.runner, MasterRunner):
            return [self.worker_reports[index] for index in sorted(self.worker_reports)]
        return [STATE.report()]


def setup_master(environment: Environment) -> MasterRun:
    """Resolve options, create the bundle, read configs and take the scraper's baseline."""
    from locust import stats as locust_stats

    options = environment.parsed_options
    assert options is not None
    options.load_profile = resolve_profile(options)
    options.seed = secrets.randbits(31) if options.seed is None else options.seed
    options.run_id = options.run_id or uuid.uuid4().hex[:10]

    STATE.base_seed = options.seed
    STATE.cpu_seconds_at_start = own_cpu_seconds()

    url = database_url(options.database_url)
    configs = read_configs(url)
    channels = resolve_channels(
        options.channels, options.channel_count, options.channel_prefix, configs
    )
    options.channels = ",".join(channels)
    plan = build_plan(options)

    bundle_dir = Path(options.bundle_dir or default_bundle_dir(plan.profile))
    bundle_dir.mkdir(parents=True, exist_ok=True)
    options.bundle_dir = str(bundle_dir)
    options.html_file = str(bundle_dir / "report.html")
    if configs is not None:
        write_configs_csv(bundle_dir / "configs.csv", configs)
    csv_writer = locust_stats.StatsCSVFileWriter(
        environment,
        locust_stats.PERCENTILES_TO_REPORT,
        str(bundle_dir / "locust"),
        full_history=True,
    )
    csv_greenlet = gevent.spawn(csv_writer.stats_writer)

    scraper = Scraper(targets=plan.targets, stub_url=plan.stub_url, bundle_dir=bundle_dir)
    scraper.origin_unix_s = time.time()
    scraper.take_baseline()
    logger.info(
        "Load run %s: profile %s, %d users, %d channels, bundle %s",
        options.run_id,
        plan.profile,
        plan.user_count,
        len(channels),
        bundle_dir,
    )
    return MasterRun(environment, plan, bundle_dir, configs, scraper, csv_writer, csv_greenlet)


def start_master(run: MasterRun) -> None:
    options = run.environment.parsed_options
    assert options is not None
    run.started_at_unix_s = time.time()
    options.load_origin_unix_s = run.started_at_unix_s
    run.scraper.start(run.started_at_unix_s)


def _load_steps(run: MasterRun) -> list[dict[str, Any]]:
    """Return the steps in Unix time with the rate each target's `received` counter measured."""
    origin = run.started_at_unix_s + run.plan.lead_in_s
    steps = []
    for step in run.plan.steps:
        start, end = origin + step.start_s, origin + step.end_s
        steps.append(
            {
                "step": step.step,
                "start_unix_s": start,
                "end_unix_s": end,
                "rate_per_s": step.rate_per_s,
                "received_rate_per_s": _received_rate(run.bundle_dir, start, end),
            }
        )
    return steps


def _received_rate(bundle_dir: Path, start_unix_s: float, end_unix_s: float) -> float | None:
    """Return the first target's received events per second between two scrapes in a step."""
    import csv

    path = bundle_dir / "supervisor_series.csv"
    rows = []
    with path.open(newline="") as file:
        for row in csv.DictReader(file):
            timestamp = float(row["timestamp"])
            if start_unix_s <= timestamp <= end_unix_s + 0.5 and row["received_total"]:
                rows.append((timestamp, row["target"], float(row["received_total"])))
    if not rows:
        return None
    first_target = rows[0][1]
    points = [(t, received) for t, target, received in rows if target == first_target]
    if len(points) < 2 or points[-1][0] <= points[0][0]:
        return None
    return (points[-1][1] - points[0][1]) / (points[-1][0] - points[0][0])


EVENT_COUNTERS = (
    "received", "processed", "failed", "dropped", "duplicate", "not_owned", "rejected",
)


def _supervisor_totals(run: MasterRun) -> dict[str, int]:
    totals = dict.fromkeys((*EVENT_COUNTERS, "executions", "execution_errors"), 0)
    for target, last in run.scraper.last.items():
        first = run.scraper.first[target]
        for key in EVENT_COUNTERS:
            totals[key] += counter_delta(first, last, "events", key)
        last_total, last_errors = executions_total(last)
        first_total, first_errors = executions_total(first)
        totals["executions"] += last_total - first_total
        totals["execution_errors"] += last_errors - first_errors
    return totals


def _merged_lateness(reports: list[dict[str, Any]], threshold_s: float) -> LatenessStats:
    merged = LatenessStats(threshold_s)
    for report in reports:
        merged.merge(LatenessStats(**report["lateness"]))
    return merged


def _cpu_warning(run: MasterRun) -> bool:
    runner = run.environment.runner
    assert runner is not None
    return bool(runner.cpu_warning_emitted or getattr(runner, "worker_cpu_warning_emitted", False))


def finish_master(run: MasterRun) -> int:
    """Write the rest of the bundle, print the verdict and return the exit code."""
    run.scraper.finish()
    run.csv_greenlet.kill(block=True)
    run.csv_writer.close_files()
    ended_at_unix_s = time.time()

    runner = run.environment.runner
    assert runner is not None
    total = runner.stats.total
    plan = run.plan
    reports = run.pacing_reports()
    lateness = _merged_lateness(reports, plan.late_threshold_s)
    totals = _supervisor_totals(run)
    load_elapsed_s = ended_at_unix_s - run.started_at_unix_s - plan.lead_in_s
    expected = expected_events(plan.steps, max(0.0, load_elapsed_s))
    sent_events = total.num_requests * plan.batch_size // len(plan.targets)
    owned = totals["received"] - totals["not_owned"] - totals["duplicate"] - totals["rejected"]
    figures = RunFigures(
        expected_events=expected,
        sent_events=sent_events,
        requests=total.num_requests,
        request_failures=total.num_failures,
        owned_events=owned,
        dropped_events=totals["dropped"],
        e2e_p95_s=run.scraper.histogram.quantile_s(0.95),
        executions=totals["executions"],
        execution_errors=totals["execution_errors"],
        late_sends=lateness.late_sends,
        sends=lateness.sends,
        cpu_warning=_cpu_warning(run),
    )
    checks = evaluate(figures, plan.thresholds)

    metadata = _metadata(run, checks, figures, totals, lateness, reports, ended_at_unix_s)
    from _bundle import write_metadata

    write_metadata(run.bundle_dir, metadata)
    print(format_summary(checks))
    print(f"Run bundle: {run.bundle_dir}")
    return 0 if passed(checks) else EXIT_FAILED_CHECKS


def _metadata(
    run: MasterRun,
    checks: list[Check],
    figures: RunFigures,
    totals: dict[str, int],
    lateness: LatenessStats,
    reports: list[dict[str, Any]],
    ended_at_unix_s: float,
) -> dict[str, Any]:
    options = run.environment.parsed_options
    plan = run.plan
    scraper = run.scraper
    stub_cpu = None
    if scraper.stub_first is not None and scraper.stub_last is not None:
        stub_cpu = _cpu_delta(scraper.stub_first, scraper.stub_last)
    return {
        "run_id": options.run_id if options else None,
        "profile": plan.profile,
        "profile_parameters": asdict(plan.parameters),
        "rate_per_s": _mean_rate(plan),
        "batch_size": plan.batch_size,
        "duplicate_ratio": plan.duplicate_ratio,
        "zipf_exponent": plan.zipf_exponent,
        "user_count": plan.user_count,
        "lead_in_s": plan.lead_in_s,
        "drain_s": drain_s(plan),
        "seeds": {
            "base_seed": STATE.base_seed,
            "workers": {str(r["worker_index"]): r["seed"] for r in reports},
        },
        "locust_version": _locust_version(),
        "locust_options": vars(options) if options else {},
        "package_versions": package_versions(),
        "git_commit": git_commit(),
        "targets": plan.targets,
        "supervisor_settings": {t: dict(s.get("instance", {})) for t, s in scraper.last.items()},
        "stub_url": plan.stub_url or None,
        "stub_settings": dict(scraper.stub_last.get("settings", {})) if scraper.stub_last else None,
        "start_unix_s": run.started_at_unix_s,
        "end_unix_s": ended_at_unix_s,
        "load_steps": _load_steps(run),
        "expected_events": figures.expected_events,
        "sent_events": figures.sent_events,
        "requests": figures.requests,
        "request_failures": figures.request_failures,
        "supervisor_events": totals,
        "e2e_p95_s": figures.e2e_p95_s,
        "lateness": {
            **asdict(lateness),
            "late_ratio": lateness.late_ratio,
            "mean_lateness_s": lateness.mean_lateness_s,
        },
        "timings": {
            p.target: {
                "events": p.events_read,
                "executions": p.executions_read,
                "dropped_records": p.dropped_records,
                "skipped_before_run": p.skipped_before_run,
            }
            for p in scraper.pagers
        },
        "scrape_failures": scraper.scrape_failures,
        "cpu_seconds": {
            "locust_master": own_cpu_seconds() - STATE.cpu_seconds_at_start,
            "locust_workers": {str(r["worker_index"]): r["cpu_seconds"] for r in reports}
            if isinstance(run.environment.runner, MasterRunner)
            else {},
            "supervisors": {t: _cpu_delta(scraper.first[t], s) for t, s in scraper.last.items()},
            "stub": stub_cpu,
        },
        "cpu_warning": figures.cpu_warning,
        "verdict": {"passed": passed(checks), "checks": [c.as_dict() for c in checks]},
        "written_at": datetime.now(UTC).isoformat(),
    }


def _cpu_delta(first: dict[str, Any] | Any, last: dict[str, Any] | Any) -> float | None:
    def cpu(snapshot: Any) -> float | None:
        process = snapshot.get("process")
        value = process.get("cpu_seconds") if isinstance(process, dict) else None
        value = snapshot.get("cpu_seconds") if value is None else value
        return None if value is None else float(value)

    before, after = cpu(first), cpu(last)
    return None if before is None or after is None else after - before


def _mean_rate(plan: RunPlan) -> float:
    duration = total_duration_s(plan.steps)
    return expected_events(plan.steps, duration) / duration if duration > 0 else 0.0


def _locust_version() -> str:
    import locust

    return str(locust.__version__)
