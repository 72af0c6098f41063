"""The load tests' own Locust options and the validated run plan built from them.

Every option is also read from a `LOCUST_<NAME>` environment variable (dashes become
underscores). Locust 2.47 already defines `--profile` (a free-form label for grouping runs)
without an environment variable, so the load profile is read from Locust's `--profile` when
given, else from `--load-profile` / `LOCUST_PROFILE`, else `constant`. The master resolves
it into `load_profile`, which Locust forwards to workers with the other custom options.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

from _pacing import user_count_for
from _profiles import (
    PROFILE_NAMES,
    LoadStep,
    ProfileError,
    ProfileParameters,
    build_load_steps,
    peak_rate_per_s,
)

DEFAULT_TARGET = "http://127.0.0.1:8080"


class OptionError(ValueError):
    """An option holds a value the run cannot start with; the message names the fix."""


def _env(name: str) -> str:
    return "LOCUST_" + name.upper().replace("-", "_")


def _default_max_p95_e2e_ms() -> float:
    raw = os.environ.get("SUPERVISOR_TARGET_LATENCY_MS", "").strip()
    try:
        return float(raw) if raw else 250.0
    except ValueError:
        return 250.0


# (option, type, default, help); `None` defaults mean "derived from another option".
_OPTIONS: tuple[tuple[str, type, object, str], ...] = (
    ("rate-per-s", float, 100.0, "offered events per second for the whole run (all users)"),
    ("duration-s", float, 60.0, "length of the constant and spike profiles, in seconds"),
    ("step-count", int, 5, "number of steps of the step profile"),
    ("step-duration-s", float, 60.0, "length of each step, in seconds"),
    ("step-start-rate-per-s", float, None, "rate of the first step (default --rate-per-s)"),
    ("step-rate-increment-per-s", float, 100.0, "rate added at each further step"),
    ("spike-base-rate-per-s", float, None, "rate outside the spike (default --rate-per-s)"),
    ("spike-rate-per-s", float, None, "rate during the spike (default 5 x the base rate)"),
    ("spike-start-s", float, 30.0, "run time at which the spike starts, in seconds"),
    ("spike-duration-s", float, 10.0, "length of the spike, in seconds"),
    ("soak-rate-per-s", float, None, "rate of the soak profile (default --rate-per-s)"),
    ("soak-duration-s", float, 3600.0, "length of the soak profile, in seconds"),
    ("duplicate-ratio", float, 0.0, "fraction of sends that repeat a recent event id"),
    ("targets", str, DEFAULT_TARGET, "comma-separated supervisor URLs; each gets every event"),
    ("stub-url", str, "", "execution stub URL whose /stats is scraped (empty: none)"),
    ("bundle-dir", str, "", "run bundle folder (default bundles/<UTC time>-<profile>)"),
    ("batch-size", int, 1, "events per POST /events request"),
    ("seed", int, None, "base seed; each worker derives its own (default: random)"),
    ("channels", str, "", "comma-separated channel names (default: from the config database)"),
    ("channel-count", int, 0, "use channels <prefix>0 .. <prefix>N-1 instead of the database"),
    ("channel-prefix", str, "ch-", "channel name prefix used with --channel-count"),
    (
        "database-url",
        str,
        "",
        "config database (default SUPERVISOR_DATABASE_URL or ./supervisor.db)",
    ),
    ("zipf-exponent", float, 1.0, "channel popularity exponent; 0 makes channels equally likely"),
    ("user-count", int, 0, "users in the whole run (default: from the peak rate and budget)"),
    ("response-budget-ms", float, 250.0, "response time each user can absorb without lateness"),
    ("min-users", int, 10, "lower bound of the derived user count"),
    ("request-timeout-s", float, 2.0, "HTTP timeout of each POST, in seconds"),
    ("lead-in-s", float, 2.0, "time between the test start and the first step, for spawning"),
    ("late-threshold-ms", float, 100.0, "a send later than this counts as late"),
    ("max-late-ratio", float, 0.05, "fail when more sends than this fraction were late"),
    ("max-drop-rate", float, 0.01, "fail above this fraction of owned events dropped"),
    (
        "max-p95-e2e-ms",
        float,
        None,
        "fail above this p95 end-to-end latency (default SUPERVISOR_TARGET_LATENCY_MS or 250)",
    ),
    ("max-execution-error-rate", float, 0.02, "fail above this fraction of failed executions"),
    ("max-request-failure-rate", float, 0.01, "fail above this fraction of failed POSTs"),
    (
        "max-offered-shortfall",
        float,
        0.05,
        "fail when the offered events miss the profile by more than this fraction",
    ),
)


def add_arguments(parser: Any) -> None:
    """Register the options on Locust's parser (an `init_command_line_parser` listener)."""
    group = parser.add_argument_group("supervisor load test")
    group.add_argument(
        "--load-profile",
        type=str,
        default=None,
        env_var="LOCUST_PROFILE",
        help=f"load profile: {', '.join(PROFILE_NAMES)} (Locust's --profile wins when given)",
    )
    for name, kind, default, help_text in _OPTIONS:
        group.add_argument(
            f"--{name}", type=kind, default=default, env_var=_env(name), help=help_text
        )
    # Set by the master and forwarded to the workers; not meant to be given by hand.
    group.add_argument("--run-id", type=str, default="", help=argparse.SUPPRESS)
    group.add_argument("--load-origin-unix-s", type=float, default=0.0, help=argparse.SUPPRESS)


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """Pass/fail limits checked at the end of the run."""

    max_drop_rate: float
    max_p95_e2e_ms: float
    max_execution_error_rate: float
    max_request_failure_rate: float
    max_offered_shortfall: float
    max_late_ratio: float


@dataclass(frozen=True, kw_only=True)
class RunPlan:
    """Everything one run needs, validated; built the same way on the master and workers."""

    profile: str
    parameters: ProfileParameters
    steps: list[LoadStep]
    targets: list[str]
    stub_url: str
    batch_size: int
    duplicate_ratio: float
    zipf_exponent: float
    user_count: int
    request_timeout_s: float
    lead_in_s: float
    late_threshold_s: float
    thresholds: Thresholds


def resolve_profile(options: argparse.Namespace) -> str:
    locust_profile = getattr(options, "profile", None)
    profile = locust_profile or options.load_profile or "constant"
    if profile not in PROFILE_NAMES:
        raise OptionError(
            f"--profile={profile!r} is not a load profile: choose one of {', '.join(PROFILE_NAMES)}"
        )
    return str(profile)


def parse_targets(raw: str) -> list[str]:
    targets = [part.strip().rstrip("/") for part in raw.split(",") if part.strip()]
    if not targets:
        raise OptionError(
            f"--targets={raw!r} is empty: give supervisor URLs such as {DEFAULT_TARGET}"
        )
    for target in targets:
        if not target.startswith(("http://", "https://")):
            raise OptionError(
                f"--targets entry {target!r} is invalid: expected an http:// or https:// URL"
            )
    return targets


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise OptionError(f"--{name}={value} is out of range: set a value from {low} to {high}")


def _parameters(options: argparse.Namespace) -> ProfileParameters:
    return ProfileParameters(
        rate_per_s=options.rate_per_s,
        duration_s=options.duration_s,
        step_count=options.step_count,
        step_duration_s=options.step_duration_s,
        step_start_rate_per_s=options.step_start_rate_per_s,
        step_rate_increment_per_s=options.step_rate_increment_per_s,
        spike_base_rate_per_s=options.spike_base_rate_per_s,
        spike_rate_per_s=options.spike_rate_per_s,
        spike_start_s=options.spike_start_s,
        spike_duration_s=options.spike_duration_s,
        soak_rate_per_s=options.soak_rate_per_s,
        soak_duration_s=options.soak_duration_s,
    )


def _thresholds(options: argparse.Namespace) -> Thresholds:
    max_p95 = options.max_p95_e2e_ms
    thresholds = Thresholds(
        max_drop_rate=options.max_drop_rate,
        max_p95_e2e_ms=_default_max_p95_e2e_ms() if max_p95 is None else max_p95,
        max_execution_error_rate=options.max_execution_error_rate,
        max_request_failure_rate=options.max_request_failure_rate,
        max_offered_shortfall=options.max_offered_shortfall,
        max_late_ratio=options.max_late_ratio,
    )
    for name in (
        "max_drop_rate",
        "max_execution_error_rate",
        "max_request_failure_rate",
        "max_offered_shortfall",
        "max_late_ratio",
    ):
        _check_range(name.replace("_", "-"), getattr(thresholds, name), 0.0, 1.0)
    if thresholds.max_p95_e2e_ms <= 0:
        raise OptionError(f"--max-p95-e2e-ms={thresholds.max_p95_e2e_ms} is invalid: set above 0")
    return thresholds


def build_plan(options: argparse.Namespace) -> RunPlan:
    """Validate the options and build the run plan; raise OptionError naming the bad value."""
    profile = resolve_profile(options)
    parameters = _parameters(options)
    try:
        steps = build_load_steps(profile, parameters)
    except ProfileError as error:
        raise OptionError(str(error)) from error

    if options.batch_size < 1:
        raise OptionError(f"--batch-size={options.batch_size} is invalid: set 1 or more")
    _check_range("duplicate-ratio", options.duplicate_ratio, 0.0, 1.0)
    for name in ("request_timeout_s", "response_budget_ms"):
        if getattr(options, name) <= 0:
            raise OptionError(
                f"--{name.replace('_', '-')}={getattr(options, name)} is invalid: "
                "set a number above 0"
            )
    if options.lead_in_s < 0:
        raise OptionError(f"--lead-in-s={options.lead_in_s} is invalid: set 0 or more")
    if options.user_count < 0:
        raise OptionError(f"--user-count={options.user_count} is invalid: set 0 (derive) or more")

    user_count = options.user_count or user_count_for(
        peak_rate_per_s(steps), options.batch_size, options.response_budget_ms, options.min_users
    )
    return RunPlan(
        profile=profile,
        parameters=parameters,
        steps=steps,
        targets=parse_targets(options.targets),
        stub_url=options.stub_url.strip().rstrip("/"),
        batch_size=options.batch_size,
        duplicate_ratio=options.duplicate_ratio,
        zipf_exponent=options.zipf_exponent,
        user_count=user_count,
        request_timeout_s=options.request_timeout_s,
        lead_in_s=options.lead_in_s,
        late_threshold_s=options.late_threshold_ms / 1000.0,
        thresholds=_thresholds(options),
    )
