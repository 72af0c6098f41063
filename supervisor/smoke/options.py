"""Options of `supervisor smoke`: the command line, its `SUPERVISOR_*` defaults and validation.

`build_options` validates the values and converts durations to seconds, so the steps only see a
valid `SmokeOptions`. Whether the config database can be reached is checked by `DbConfigStore`.
"""

from __future__ import annotations

import argparse
import os
import uuid
from dataclasses import dataclass, field
from typing import TypeVar

from supervisor.settings import default_database_url
from supervisor.smoke.errors import SmokeOptionError

DEFAULT_TOLERANCE_MS = 1000
DEFAULT_MAX_WAIT_S = 400.0
DEFAULT_SETTLE_MS = 500
DEFAULT_HTTP_TIMEOUT_S = 5.0

_Number = TypeVar("_Number", int, float)


@dataclass(frozen=True, kw_only=True)
class SmokeOptions:
    """Validated options of one smoke run; durations converted to seconds."""

    targets: tuple[str, ...]
    database_url: str
    stub_url: str
    redis_url: str | None
    dedup_key_prefix: str
    expected_pool_size: int | None
    expected_refresh_ms: int | None
    expected_full_refresh_ms: int | None
    tolerance_s: float
    settle_s: float
    max_wait_s: float
    http_timeout_s: float
    channel_prefix: str
    token: str | None = field(repr=False)
    run_id: str
    json_output: bool


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the smoke test's options to its subparser."""
    _add_service_arguments(parser)
    _add_expectation_arguments(parser)
    _add_timing_arguments(parser)
    _add_run_arguments(parser)


def _add_service_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the services the run talks to: targets, config database, stub and Redis."""
    parser.add_argument(
        "--targets", required=True,
        help="comma-separated base URLs of the supervisor instances, e.g. http://10.0.0.5:8080",
    )
    parser.add_argument(
        "--database-url", default=None,
        help="config database the instances read (default: SUPERVISOR_DATABASE_URL, else "
        "./supervisor.db as the service uses)",
    )
    parser.add_argument(
        "--stub-url", default=None,
        help="execution service whose GET /keys counts executions per idempotency key "
        "(default: SUPERVISOR_EXECUTION_URL)",
    )
    parser.add_argument(
        "--redis-url", default=None,
        help="Redis holding the dedup keys, to delete this run's keys (default: "
        "SUPERVISOR_REDIS_URL; without it dedup keys expire by their TTL)",
    )
    parser.add_argument(
        "--dedup-key-prefix", default=None,
        help="dedup key prefix of the instances (default: SUPERVISOR_DEDUP_KEY_PREFIX or its "
        "default)",
    )


def _add_expectation_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the values the instances are held to."""
    parser.add_argument(
        "--expected-pool-size", type=int, default=None,
        help="expected supervisor_worker_pool_size (default: SUPERVISOR_WORKER_POOL_SIZE; "
        "unset skips that check)",
    )
    parser.add_argument(
        "--expected-refresh-ms", type=int, default=None,
        help="incremental refresh interval to hold the instances to, in ms (default: each "
        "target's config_refresh_ms from /stats)",
    )
    parser.add_argument(
        "--expected-full-refresh-ms", type=int, default=None,
        help="full refresh interval to hold the instances to, in ms (default: each target's "
        "config_full_refresh_ms from /stats)",
    )


def _add_timing_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the time allowances and the wait and request limits."""
    parser.add_argument(
        "--tolerance-ms", type=int, default=DEFAULT_TOLERANCE_MS,
        help="time allowed beyond a refresh interval, plus one probe period, before a change "
        f"counts as late, in ms (default {DEFAULT_TOLERANCE_MS})",
    )
    parser.add_argument(
        "--settle-ms", type=int, default=DEFAULT_SETTLE_MS,
        help="time a copy trade must stay absent before it counts as absent, in ms "
        f"(default {DEFAULT_SETTLE_MS})",
    )
    parser.add_argument(
        "--max-wait-s", type=float, default=DEFAULT_MAX_WAIT_S,
        help="longest single wait; a check that needs longer is SKIPPED with the reason "
        f"(default {DEFAULT_MAX_WAIT_S:g})",
    )
    parser.add_argument(
        "--http-timeout-s", type=float, default=DEFAULT_HTTP_TIMEOUT_S,
        help=f"timeout of each HTTP request, in seconds (default {DEFAULT_HTTP_TIMEOUT_S:g})",
    )


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the run's names, the ingest token and the report format."""
    parser.add_argument(
        "--channel-prefix", default="smoke-",
        help="prefix of this run's channels, config users and event ids (default smoke-)",
    )
    parser.add_argument(
        "--token", default=None,
        help="bearer token for POST /events (default: SUPERVISOR_INGEST_TOKEN)",
    )
    parser.add_argument(
        "--run-id", default=None,
        help="id placed in every name this run creates (default: random 12 hex digits)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")


def build_options(args: argparse.Namespace, environ: dict[str, str] | None = None) -> SmokeOptions:
    """Validate the parsed arguments, filling defaults from `SUPERVISOR_*` variables."""
    env = dict(os.environ) if environ is None else environ
    targets = _targets(args.targets)
    database_url = _database_url(args.database_url, env)
    stub_url = _stub_url(args.stub_url, env)
    redis_url = _redis_url(args.redis_url, env)

    return SmokeOptions(
        targets=targets,
        database_url=database_url,
        stub_url=stub_url,
        redis_url=redis_url,
        dedup_key_prefix=_dedup_key_prefix(args.dedup_key_prefix, env),
        expected_pool_size=_expected_pool_size(args.expected_pool_size, env),
        expected_refresh_ms=_positive_or_none("--expected-refresh-ms", args.expected_refresh_ms),
        expected_full_refresh_ms=_positive_or_none(
            "--expected-full-refresh-ms", args.expected_full_refresh_ms
        ),
        tolerance_s=_non_negative("--tolerance-ms", args.tolerance_ms) / 1000.0,
        settle_s=_non_negative("--settle-ms", args.settle_ms) / 1000.0,
        max_wait_s=_positive("--max-wait-s", args.max_wait_s),
        http_timeout_s=_positive("--http-timeout-s", args.http_timeout_s),
        channel_prefix=args.channel_prefix,
        token=args.token or env.get("SUPERVISOR_INGEST_TOKEN") or None,
        run_id=args.run_id or uuid.uuid4().hex[:12],
        json_output=bool(args.json),
    )


def _targets(given: str) -> tuple[str, ...]:
    targets = tuple(url.strip().rstrip("/") for url in given.split(",") if url.strip())
    if not targets:
        raise SmokeOptionError("--targets is empty: give one or more URLs separated by commas")
    for url in targets:
        _require_http_url("--targets", url)
    return targets


def _database_url(given: str | None, env: dict[str, str]) -> str:
    # The same fallback as the service's own setting, so a local set-up needs no option.
    return given or env.get("SUPERVISOR_DATABASE_URL") or default_database_url()


def _stub_url(given: str | None, env: dict[str, str]) -> str:
    stub_url = (given or env.get("SUPERVISOR_EXECUTION_URL") or "").rstrip("/")
    if not stub_url:
        raise SmokeOptionError(
            "no execution service: pass --stub-url or set SUPERVISOR_EXECUTION_URL to the "
            "execution service (stub) the instances call"
        )
    _require_http_url("--stub-url", stub_url)
    return stub_url


def _redis_url(given: str | None, env: dict[str, str]) -> str | None:
    redis_url = given or env.get("SUPERVISOR_REDIS_URL") or None
    if redis_url and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise SmokeOptionError(
            f"--redis-url {redis_url.split('@')[-1]!r} is invalid: expected "
            "redis://host:port/db, rediss:// or unix://"
        )
    return redis_url


def _require_http_url(option: str, url: str) -> None:
    if not url.startswith(("http://", "https://")):
        raise SmokeOptionError(f"{option} {url!r} is invalid: expected http://host:port")


def _dedup_key_prefix(given: str | None, env: dict[str, str]) -> str:
    if given is not None:
        return given
    from supervisor.settings import Settings

    return env.get("SUPERVISOR_DEDUP_KEY_PREFIX") or Settings().dedup_key_prefix


def _expected_pool_size(given: int | None, env: dict[str, str]) -> int | None:
    if given is not None:
        return _positive("--expected-pool-size", given)
    raw = env.get("SUPERVISOR_WORKER_POOL_SIZE", "").strip()
    if not raw:
        return None
    try:
        return _positive("SUPERVISOR_WORKER_POOL_SIZE", int(raw))
    except ValueError:
        raise SmokeOptionError(
            f"SUPERVISOR_WORKER_POOL_SIZE={raw!r} is not an integer: set a whole number of "
            "workers or pass --expected-pool-size"
        ) from None


def _positive_or_none(option: str, value: int | None) -> int | None:
    return None if value is None else int(_positive(option, value))


def _positive(option: str, value: _Number) -> _Number:
    if value <= 0:
        raise SmokeOptionError(f"{option}={value} is invalid: it must be greater than 0")
    return value


def _non_negative(option: str, value: int) -> int:
    if value < 0:
        raise SmokeOptionError(f"{option}={value} is invalid: it must be 0 or more")
    return value

