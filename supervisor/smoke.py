"""The staging smoke test: `supervisor smoke --targets URL[,URL...]`.

It runs the rollout's verification steps against live supervisor instances and reports each
step as PASS, FAIL or SKIPPED with its measured time:

1. `pickup`: a config created in the config database reaches its owner's cache within the
   incremental refresh interval.
2. `disable` and `delete`: a disabled config stops receiving copy trades after the next
   incremental refresh, and a deleted one after the full refresh.
3. `dedup` and `dedup_repeat`: an event sent to every target is executed once, by its owner,
   and the same event id sent again is not executed again.
4. `metrics`: pool size, refresh timestamps and queue metrics on each target's `/metrics`.
5. `cleanup`: the configs and dedup keys of this run are removed, also after a failure or
   SIGINT/SIGTERM.

Evidence of a copy trade comes from the execution service's `GET /keys`, which counts
executions per idempotency key `<event_id>:<config_id>`. A probe event is sent to the owner
every probe period, and a change counts as seen when the stub shows (or stops showing) the
watched config for a probe event. Times are measured from the database commit to the poll that
saw the change, so they overstate the true delay by at most one probe period.

Every config, channel and event id contains the run id, so the run never touches other data.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from types import FrameType
from typing import Any, Protocol, TypeVar

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID_OPTION = 2
EXIT_CLEANUP_FAILED = 3
EXIT_INTERRUPTED = 130

DEFAULT_TOLERANCE_MS = 1000
DEFAULT_MAX_WAIT_S = 400.0
DEFAULT_SETTLE_MS = 500
DEFAULT_HTTP_TIMEOUT_S = 5.0
MIN_PROBE_PERIOD_S = 0.1
MAX_PROBE_PERIOD_S = 2.0
PROBES_PER_INTERVAL = 10
LATE_WAIT_FACTOR = 3.0
"""A change still unseen at its limit is waited for up to this many limits to report how late."""

QUEUE_METRICS = (
    "supervisor_queue_depth",
    "supervisor_queue_capacity",
    "supervisor_queue_lag_seconds",
)
REFRESH_TIMESTAMP_METRIC = "supervisor_config_refresh_last_success_timestamp_seconds"
POOL_SIZE_METRIC = "supervisor_worker_pool_size"
FINISHED_OUTCOMES = ("processed", "failed", "dropped", "duplicate", "not_owned", "rejected")


_Number = TypeVar("_Number", int, float)


class SmokeError(Exception):
    """Base of the smoke test's errors."""


class SmokeOptionError(SmokeError):
    """An option has a value the smoke test cannot run with."""


class TargetError(SmokeError):
    """A target or the execution service did not respond as the interface describes."""


class ConfigStoreError(SmokeError):
    """A write to the config database failed."""


class SmokeInterrupted(BaseException):
    """SIGTERM arrived; raised like KeyboardInterrupt so cleanup still runs."""


class Status(StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    SKIPPED = "SKIPPED"


# ---------------------------------------------------------------------------------------------
# Options


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
    parser.add_argument(
        "--targets", required=True,
        help="comma-separated base URLs of the supervisor instances, e.g. http://10.0.0.5:8080",
    )
    parser.add_argument(
        "--database-url", default=None,
        help="config database the instances read (default: SUPERVISOR_DATABASE_URL)",
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
    targets = tuple(url.strip().rstrip("/") for url in args.targets.split(",") if url.strip())
    if not targets:
        raise SmokeOptionError("--targets is empty: give one or more URLs separated by commas")
    for url in targets:
        _require_http_url("--targets", url)

    database_url = args.database_url or env.get("SUPERVISOR_DATABASE_URL")
    if not database_url:
        raise SmokeOptionError(
            "no config database: pass --database-url or set SUPERVISOR_DATABASE_URL to the "
            "database the instances read"
        )
    stub_url = (args.stub_url or env.get("SUPERVISOR_EXECUTION_URL") or "").rstrip("/")
    if not stub_url:
        raise SmokeOptionError(
            "no execution service: pass --stub-url or set SUPERVISOR_EXECUTION_URL to the "
            "execution service (stub) the instances call"
        )
    _require_http_url("--stub-url", stub_url)

    redis_url = args.redis_url or env.get("SUPERVISOR_REDIS_URL") or None
    if redis_url and not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise SmokeOptionError(
            f"--redis-url {redis_url.split('@')[-1]!r} is invalid: expected "
            "redis://host:port/db, rediss:// or unix://"
        )

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


# ---------------------------------------------------------------------------------------------
# Collaborators: clock, HTTP, config database, dedup keys


class SmokeClock(Protocol):
    """Monotonic time for intervals, wall-clock time for metric timestamps, and sleeping."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemSmokeClock:
    """The process's real clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


class HttpClient:
    """Blocking JSON and text requests with one timeout; errors become `TargetError`."""

    def __init__(self, timeout_s: float, token: str | None = None) -> None:
        self._timeout_s = timeout_s
        self._token = token

    def get_json(self, url: str) -> Any:
        return json.loads(self._request(url, None))

    def get_text(self, url: str) -> str:
        return self._request(url, None).decode("utf-8")

    def post_json(self, url: str, body: Any) -> Any:
        answer = self._request(url, json.dumps(body).encode("utf-8"))
        return json.loads(answer) if answer.strip() else None

    def _request(self, url: str, data: bytes | None) -> bytes:
        request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
        if data is not None:
            request.add_header("Content-Type", "application/json")
            if self._token:
                request.add_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                body: bytes = response.read()
                return body
        except urllib.error.HTTPError as error:
            detail = error.read()[:300].decode("utf-8", "replace")
            raise TargetError(
                f"{request.method} {url} returned HTTP {error.code}: {detail}"
            ) from error
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            raise TargetError(f"{request.method} {url} failed: {error}") from error


class ConfigStore(Protocol):
    """The writes the smoke test makes to the config database."""

    def add(self, *, channel: str, user_id: str) -> str: ...

    def disable(self, config_id: str) -> None: ...

    def delete(self, config_ids: Sequence[str]) -> int: ...

    def close(self) -> None: ...


class DedupKeyStore(Protocol):
    """Deletes dedup keys by event id."""

    def delete_events(self, event_ids: Sequence[str]) -> int: ...

    def close(self) -> None: ...


class RedisDedupKeys:
    """This run's dedup keys in Redis: `<prefix><event_id>`, as the instances write them."""

    def __init__(self, redis_url: str, key_prefix: str, timeout_s: float) -> None:
        import redis

        self._client = redis.Redis.from_url(
            redis_url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
        )
        self._prefix = key_prefix

    def delete_events(self, event_ids: Sequence[str]) -> int:
        import redis

        keys = [self._prefix + event_id for event_id in event_ids]
        if not keys:
            return 0
        try:
            deleted: int = self._client.delete(*keys)
        except redis.RedisError as error:
            raise SmokeError(f"failed to delete dedup keys in Redis: {error}") from error
        return deleted

    def close(self) -> None:
        self._client.close()


class DbConfigStore:
    """Config writes through `supervisor.db`, on the database the instances read.

    Database errors become `ConfigStoreError`, so a failed write fails the step, not the run.
    """

    def __init__(self, database_url: str) -> None:
        import sqlalchemy as sa

        from supervisor import db
        from supervisor.settings import mask_url

        self._db = db
        self._errors = (sa.exc.SQLAlchemyError, db.DatabaseError)
        shown_url = mask_url(database_url)
        try:
            self._engine = db.create_engine_from_url(database_url)
            has_table = db.table_exists(self._engine)
        except db.DatabaseUrlError as error:
            raise SmokeOptionError(f"--database-url is invalid: {error}") from error
        except sa.exc.SQLAlchemyError as error:
            raise SmokeOptionError(
                f"cannot connect to the config database {shown_url}: {error}"
            ) from error
        if not has_table:
            self._engine.dispose()
            raise SmokeOptionError(
                f'the database {shown_url} has no "{db.TABLE_NAME}" table; point '
                "--database-url at the database the instances read"
            )

    def add(self, *, channel: str, user_id: str) -> str:
        with self._translate_errors("insert a config"):
            config_id: str = self._db.add_config(self._engine, channel=channel, user_id=user_id)
        return config_id

    def disable(self, config_id: str) -> None:
        with self._translate_errors(f"disable config {config_id}"):
            self._db.disable_config(self._engine, config_id)

    def delete(self, config_ids: Sequence[str]) -> int:
        deleted = 0
        for config_id in config_ids:
            with self._translate_errors(f"delete config {config_id}"):
                try:
                    self._db.delete_config(self._engine, config_id)
                except self._db.ConfigNotFoundError:
                    continue
            deleted += 1
        return deleted

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def _translate_errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except self._errors as error:
            raise ConfigStoreError(f"failed to {action} in the config database: {error}") from error


# ---------------------------------------------------------------------------------------------
# Targets and results


@dataclass(frozen=True, kw_only=True)
class TargetInfo:
    """Settings a target reports about itself in the `instance` part of `/stats`."""

    url: str
    instance_id: str
    shard_index: int
    shard_count: int
    pool_size: int
    config_refresh_ms: int
    config_full_refresh_ms: int
    dedup_backend: str

    @classmethod
    def from_stats(cls, url: str, stats: Any) -> TargetInfo:
        try:
            instance = stats["instance"]
            return cls(
                url=url,
                instance_id=str(instance["instance_id"]),
                shard_index=int(instance["shard_index"]),
                shard_count=int(instance["shard_count"]),
                pool_size=int(instance["pool_size"]),
                config_refresh_ms=int(instance["config_refresh_ms"]),
                config_full_refresh_ms=int(instance["config_full_refresh_ms"]),
                dedup_backend=str(instance.get("dedup_backend", "unknown")),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise TargetError(
                f"GET {url}/stats has no valid 'instance' object ({error!r})"
            ) from error


@dataclass
class StepResult:
    """One reported step on one target; `measured` contains the step's figures in seconds."""

    step: str
    target: str | None
    status: Status
    duration_s: float
    detail: str
    measured: dict[str, float | int | None] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        return data


@dataclass
class Lane:
    """The configs of one target's test channel: `A` is disabled, `B` deleted, `C` stays."""

    target: TargetInfo
    channel: str
    config_a: str = ""
    config_b: str = ""
    config_c: str = ""
    picked_up: bool = False


@dataclass
class Probe:
    """Waits for the stub to show, for one probe event, every `needed` config and not `lacking`.

    Without `lacking` the first such event is the evidence. With it, the watched trade must stay
    absent for the settle time, because the configs of one event may execute in any order.
    """

    lane: Lane
    needed: tuple[str, ...]
    lacking: str | None
    changed_at_s: float
    period_s: float
    limit_s: float
    wait_s: float
    sent: list[str] = field(default_factory=list)
    absent_since_s: dict[str, float] = field(default_factory=dict)
    seen_after_s: float | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.seen_after_s is not None or self.error is not None

    def observe(self, counts: dict[str, int], now_s: float, settle_s: float) -> None:
        for event_id in self.sent:
            if not all(counts.get(f"{event_id}:{config}", 0) for config in self.needed):
                continue
            if self.lacking is None:
                self.seen_after_s = now_s - self.changed_at_s
                return
            if counts.get(f"{event_id}:{self.lacking}", 0):
                self.absent_since_s.pop(event_id, None)
                continue
            since_s = self.absent_since_s.setdefault(event_id, now_s)
            if now_s - since_s >= settle_s:
                self.seen_after_s = since_s - self.changed_at_s
                return


@dataclass
class Snapshot:
    """Event outcome counters of one target's `/stats`."""

    received: int
    outcomes: dict[str, int]

    @classmethod
    def from_stats(cls, stats: Any) -> Snapshot:
        events = stats["events"]
        return cls(
            received=int(events["received"]),
            outcomes={name: int(events[name]) for name in FINISHED_OUTCOMES},
        )

    def delta(self, before: Snapshot) -> Snapshot:
        return Snapshot(
            received=self.received - before.received,
            outcomes={k: v - before.outcomes[k] for k, v in self.outcomes.items()},
        )

    @property
    def finished(self) -> int:
        return sum(self.outcomes.values())


def parse_metrics(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Parse Prometheus text into sample name -> sorted label pairs -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = float(sample.value)
    return samples


def refresh_timestamp(
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]], kind: str
) -> float | None:
    """Return the last-success timestamp of refresh `kind`, or None while it is absent."""
    return samples.get(REFRESH_TIMESTAMP_METRIC, {}).get((("kind", kind),))


def channel_owned_by(prefix: str, target: TargetInfo, position: int) -> str:
    """Return the first channel `PREFIXt<position>-<k>` that the target's shard owns."""
    from supervisor.sharding import shard_for

    for attempt in range(100_000):
        channel = f"{prefix}t{position}-{attempt}"
        if shard_for(channel, target.shard_count) == target.shard_index:
            return channel
    raise SmokeError(f"no channel found for shard {target.shard_index} of {target.shard_count}")


# ---------------------------------------------------------------------------------------------
# The run


class SmokeRun:
    """One smoke run: its steps, the resources it created, and its report."""

    def __init__(
        self,
        options: SmokeOptions,
        *,
        http: HttpClient,
        store: ConfigStore,
        dedup_keys: DedupKeyStore | None,
        clock: SmokeClock,
    ) -> None:
        self.options = options
        self.http = http
        self.store = store
        self.dedup_keys = dedup_keys
        self.clock = clock
        self.results: list[StepResult] = []
        self.targets: list[TargetInfo] = []
        self.lanes: list[Lane] = []
        self.config_ids: list[str] = []
        self.event_ids: list[str] = []
        self.name_prefix = f"{options.channel_prefix}{options.run_id}-"
        self._event_sequence = 0
        self._discovered_at_s = 0.0
        self._full_refresh_at_discovery: dict[str, float | None] = {}

    # -- reporting ------------------------------------------------------------------------

    def record(
        self,
        step: str,
        target: str | None,
        status: Status,
        started_s: float,
        detail: str,
        **measured: float | int | None,
    ) -> StepResult:
        result = StepResult(
            step=step,
            target=target,
            status=status,
            duration_s=round(self.clock.monotonic() - started_s, 3),
            detail=detail,
            measured=measured,
        )
        self.results.append(result)
        log = logger.warning if status is Status.FAIL else logger.info
        log("Smoke step %s on %s: %s (%s)", step, target or "all targets", status.value, detail)
        return result

    def skip_all(self, step: str, reason: str) -> None:
        self.record(step, None, Status.SKIPPED, self.clock.monotonic(), reason)

    @property
    def failed(self) -> bool:
        return any(result.status is Status.FAIL for result in self.results)

    # -- helpers ----------------------------------------------------------------------------

    def limit_s(self, interval_ms: int, period_s: float) -> float:
        """Return how long a change may take: the interval, the tolerance and one probe period."""
        return interval_ms / 1000.0 + self.options.tolerance_s + period_s

    def refresh_ms(self, target: TargetInfo) -> int:
        return self.options.expected_refresh_ms or target.config_refresh_ms

    def full_refresh_ms(self, target: TargetInfo) -> int:
        return self.options.expected_full_refresh_ms or target.config_full_refresh_ms

    def new_event_id(self) -> str:
        self._event_sequence += 1
        event_id = f"{self.name_prefix}e{self._event_sequence}"
        self.event_ids.append(event_id)
        return event_id

    def send_event(self, target_url: str, event_id: str, channel: str) -> None:
        event = {
            "event_id": event_id,
            "channel": channel,
            "symbol": "SMOKEUSDT",
            "side": "buy",
            "quantity": 1.0,
        }
        self.http.post_json(f"{target_url}/events", event)

    def stub_counts(self) -> dict[str, int]:
        answer = self.http.get_json(f"{self.options.stub_url}/keys")
        try:
            counts = answer["counts"]
            return {str(key): int(value) for key, value in counts.items()}
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            raise TargetError(
                f"GET {self.options.stub_url}/keys did not return {{'counts': {{...}}}}"
            ) from error

    def snapshot(self, target: TargetInfo) -> Snapshot:
        stats = self.http.get_json(f"{target.url}/stats")
        try:
            return Snapshot.from_stats(stats)
        except (KeyError, TypeError, ValueError) as error:
            raise TargetError(f"GET {target.url}/stats has no valid 'events' object") from error

    def metrics(self, target: TargetInfo) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        text = self.http.get_text(f"{target.url}/metrics")
        try:
            return parse_metrics(text)
        except ValueError as error:
            raise TargetError(
                f"GET {target.url}/metrics is not Prometheus text: {error}"
            ) from error

    def probe_period_s(self, interval_ms: int) -> float:
        """Return the probe period: a tenth of the interval within fixed bounds."""
        period_s = interval_ms / 1000.0 / PROBES_PER_INTERVAL
        return min(MAX_PROBE_PERIOD_S, max(MIN_PROBE_PERIOD_S, period_s))

    # -- step 0: discover -------------------------------------------------------------------

    def discover(self) -> bool:
        """Read every target's `/stats` and `/metrics`; return False when one is unusable."""
        ok = True
        for url in self.options.targets:
            started_s = self.clock.monotonic()
            try:
                stats = self.http.get_json(f"{url}/stats")
                target = TargetInfo.from_stats(url, stats)
                ready = bool(stats["instance"].get("ready", True))
                samples = self.metrics(target)
            except TargetError as error:
                self.record("discover", url, Status.FAIL, started_s, str(error))
                ok = False
                continue
            if not ready:
                self.record("discover", url, Status.FAIL, started_s, "the instance is not ready")
                ok = False
                continue
            self.targets.append(target)
            self._full_refresh_at_discovery[url] = refresh_timestamp(samples, "full")
            self.record(
                "discover", url, Status.PASS, started_s,
                f"instance {target.instance_id}, shard {target.shard_index} of "
                f"{target.shard_count}, refresh {target.config_refresh_ms} ms, full refresh "
                f"{target.config_full_refresh_ms} ms, pool {target.pool_size}, dedup "
                f"{target.dedup_backend}",
            )
        self._discovered_at_s = self.clock.monotonic()
        return ok

    # -- step 1: pickup ----------------------------------------------------------------------

    def pickup(self) -> None:
        """Create three configs on a channel each target owns and wait for the owner to use them."""
        probes: list[Probe] = []
        for position, target in enumerate(self.targets):
            lane = Lane(target=target, channel=channel_owned_by(self.name_prefix, target, position))
            self.lanes.append(lane)
            user_id = f"{self.name_prefix}user"
            for name in ("config_a", "config_b", "config_c"):
                config_id = self.store.add(channel=lane.channel, user_id=user_id)
                self.config_ids.append(config_id)
                setattr(lane, name, config_id)
            probes.append(self._probe(lane, (lane.config_a, lane.config_b, lane.config_c), None,
                                      self.refresh_ms(target)))

        started_s = self.clock.monotonic()
        self.run_probes(probes)
        for probe in probes:
            probe.lane.picked_up = self._judge(
                "pickup", probe, started_s, "the owner's cache had the 3 new configs",
                self.refresh_ms(probe.lane.target), "incremental refresh",
            )

    def _probe(self, lane: Lane, needed: tuple[str, ...], lacking: str | None,
               interval_ms: int) -> Probe:
        period_s = self.probe_period_s(interval_ms)
        limit_s = self.limit_s(interval_ms, period_s)
        wait_s = min(LATE_WAIT_FACTOR * limit_s, self.options.max_wait_s) + self.options.settle_s
        return Probe(lane=lane, needed=needed, lacking=lacking,
                     changed_at_s=self.clock.monotonic(), period_s=period_s, limit_s=limit_s,
                     wait_s=wait_s)

    def run_probes(self, probes: Sequence[Probe]) -> None:
        """Send probe events to each pending probe's owner and poll the stub until all are done."""
        while True:
            now_s = self.clock.monotonic()
            for probe in probes:
                if not probe.done and now_s - probe.changed_at_s > probe.wait_s:
                    probe.error = f"not seen within {probe.wait_s:.2f} s"
            pending = [probe for probe in probes if not probe.done]
            if not pending:
                return

            self._send_probe_events(pending)
            self.clock.sleep(min(probe.period_s for probe in pending))
            try:
                counts = self.stub_counts()
            except TargetError as error:
                for probe in pending:
                    probe.error = str(error)
                return
            now_s = self.clock.monotonic()
            for probe in pending:
                probe.observe(counts, now_s, self.options.settle_s)

    def _send_probe_events(self, pending: Sequence[Probe]) -> None:
        by_lane: dict[int, list[Probe]] = {}
        for probe in pending:
            by_lane.setdefault(id(probe.lane), []).append(probe)
        for lane_probes in by_lane.values():
            lane = lane_probes[0].lane
            event_id = self.new_event_id()
            try:
                self.send_event(lane.target.url, event_id, lane.channel)
            except TargetError as error:
                for probe in lane_probes:
                    probe.error = str(error)
                continue
            for probe in lane_probes:
                probe.sent.append(event_id)

    def _judge(self, step: str, probe: Probe, started_s: float, what: str,
               interval_ms: int, refresh_kind: str) -> bool:
        target = probe.lane.target.url
        measured = {"seen_after_s": probe.seen_after_s, "limit_s": round(probe.limit_s, 3),
                    "interval_ms": interval_ms, "probe_events": len(probe.sent)}
        if probe.seen_after_s is None:
            self.record(step, target, Status.FAIL, started_s,
                        f"{what}: {probe.error}; the {refresh_kind} interval is {interval_ms} ms "
                        f"and the limit {probe.limit_s:.2f} s", **measured)
            return False
        if probe.seen_after_s > probe.limit_s:
            self.record(step, target, Status.FAIL, started_s,
                        f"{what} only after {probe.seen_after_s:.2f} s, later than the limit "
                        f"{probe.limit_s:.2f} s ({refresh_kind} every {interval_ms} ms)",
                        **measured)
            return False
        self.record(step, target, Status.PASS, started_s,
                    f"{what} after {probe.seen_after_s:.2f} s (limit {probe.limit_s:.2f} s)",
                    **measured)
        return True

    # -- step 2: disable and delete ----------------------------------------------------------

    def disable_and_delete(self) -> None:
        """Disable config A and delete config B of each lane, then wait until both stop trading.

        Both changes start together, so the disable check (one incremental refresh) finishes
        while the delete check still waits for a full refresh.
        """
        probes: list[Probe] = []
        kinds: dict[int, str] = {}
        for lane in self.lanes:
            if not lane.picked_up:
                self.record("disable", lane.target.url, Status.SKIPPED, self.clock.monotonic(),
                            "its configs were never picked up (see pickup)")
                self.record("delete", lane.target.url, Status.SKIPPED, self.clock.monotonic(),
                            "its configs were never picked up (see pickup)")
                continue
            self.store.disable(lane.config_a)
            probe = self._probe(lane, (lane.config_c,), lane.config_a, self.refresh_ms(lane.target))
            probes.append(probe)
            kinds[id(probe)] = "disable"

            full_ms = self.full_refresh_ms(lane.target)
            needed_s = self.limit_s(full_ms, self.probe_period_s(full_ms)) + self.options.settle_s
            if needed_s > self.options.max_wait_s:
                self.record(
                    "delete", lane.target.url, Status.SKIPPED, self.clock.monotonic(),
                    f"a deleted config disappears only at the next full refresh, up to "
                    f"{needed_s:.0f} s with full refresh every {full_ms} ms; that is longer "
                    f"than --max-wait-s {self.options.max_wait_s:g}, so raise it to "
                    f"{needed_s:.0f} to run this check",
                    needed_s=round(needed_s, 3),
                )
                continue
            self.store.delete([lane.config_b])
            probe = self._probe(lane, (lane.config_c,), lane.config_b, full_ms)
            probes.append(probe)
            kinds[id(probe)] = "delete"

        started_s = self.clock.monotonic()
        self.run_probes(probes)
        for probe in probes:
            if kinds[id(probe)] == "disable":
                self._judge("disable", probe, started_s, "the disabled config stopped trading",
                            self.refresh_ms(probe.lane.target), "incremental refresh")
            else:
                self._judge("delete", probe, started_s, "the deleted config stopped trading",
                            self.full_refresh_ms(probe.lane.target), "full refresh")

    # -- step 3: dedup across shards ---------------------------------------------------------

    def dedup(self) -> None:
        """Send one event per lane to every target; each must execute once, by its owner."""
        lanes = [lane for lane in self.lanes if lane.picked_up]
        if not lanes:
            self.skip_all("dedup", "no lane's configs were picked up, so no copy trade can show")
            self.skip_all("dedup_repeat", "the dedup step did not run")
            return

        event_ids = {id(lane): self.new_event_id() for lane in lanes}
        executed_once = self._broadcast("dedup", lanes, event_ids, None)
        if executed_once is None:
            self.skip_all("dedup_repeat", "the dedup step could not send its events")
            return
        self._broadcast("dedup_repeat", lanes, event_ids, executed_once)

    def _broadcast(self, step: str, lanes: Sequence[Lane], event_ids: dict[int, str],
                   earlier: dict[str, int] | None) -> dict[str, int] | None:
        """Send each lane's event to every target and judge executions and counter deltas.

        `earlier` contains the execution counts after the first broadcast; a repeat must leave
        them unchanged. Returns this broadcast's execution counts, or None when sending failed.
        """
        started_s = self.clock.monotonic()
        try:
            before = {target.url: self.snapshot(target) for target in self.targets}
            for lane in lanes:
                for target in self.targets:
                    self.send_event(target.url, event_ids[id(lane)], lane.channel)
            counts, deltas = self._await_accounting(lanes, event_ids, before, earlier is None)
        except TargetError as error:
            self.record(step, None, Status.FAIL, started_s, str(error))
            return None

        executions = {
            lane.target.url: counts.get(f"{event_ids[id(lane)]}:{lane.config_c}", 0)
            for lane in lanes
        }
        for lane in lanes:
            self._judge_executions(step, lane, executions, earlier, started_s)
        self._judge_counters(step, deltas, len(lanes), repeat=earlier is not None,
                             started_s=started_s)
        return executions

    def _await_accounting(
        self, lanes: Sequence[Lane], event_ids: dict[int, str], before: dict[str, Snapshot],
        expect_execution: bool,
    ) -> tuple[dict[str, int], dict[str, Snapshot]]:
        """Poll until every target finished the events (and, first time, the stub shows them).

        Then wait the settle time once more, so a second execution has time to show.
        """
        wait_s = min(self.options.max_wait_s, max(5.0, 5 * self.options.tolerance_s))
        deadline_s = self.clock.monotonic() + wait_s
        while True:
            self.clock.sleep(MIN_PROBE_PERIOD_S)
            counts = self.stub_counts()
            deltas = {t.url: self.snapshot(t).delta(before[t.url]) for t in self.targets}
            finished = all(d.finished >= len(lanes) for d in deltas.values())
            shown = not expect_execution or all(
                counts.get(f"{event_ids[id(lane)]}:{lane.config_c}", 0) for lane in lanes
            )
            if (finished and shown) or self.clock.monotonic() >= deadline_s:
                break
        self.clock.sleep(self.options.settle_s)
        counts = self.stub_counts()
        deltas = {t.url: self.snapshot(t).delta(before[t.url]) for t in self.targets}
        return counts, deltas

    def _judge_executions(self, step: str, lane: Lane, executions: dict[str, int],
                          earlier: dict[str, int] | None, started_s: float) -> None:
        url = lane.target.url
        count = executions[url]
        expected = 1 if earlier is None else earlier[url]
        what = "sent to every target" if earlier is None else "sent again to every target"
        if count == expected == 1:
            self.record(step, url, Status.PASS, started_s,
                        f"the event on {lane.channel}, {what}, was executed once",
                        executions=count)
        elif earlier is not None and count == expected:
            self.record(step, url, Status.PASS, started_s,
                        f"the event on {lane.channel}, {what}, was not executed again "
                        f"({count} executions before and after)", executions=count)
        else:
            self.record(step, url, Status.FAIL, started_s,
                        f"the event on {lane.channel}, {what}, has {count} executions of config "
                        f"{lane.config_c} at the stub; expected {expected}", executions=count)

    def _judge_counters(self, step: str, deltas: dict[str, Snapshot], events: int, *,
                        repeat: bool, started_s: float) -> None:
        """Check the outcome deltas when only this run's events reached the targets."""
        summary = "; ".join(
            f"{url}: received +{d.received}, processed +{d.outcomes['processed']}, not_owned "
            f"+{d.outcomes['not_owned']}, duplicate +{d.outcomes['duplicate']}"
            for url, d in deltas.items()
        )
        if any(d.received != events for d in deltas.values()):
            self.record(f"{step}_counters", None, Status.SKIPPED, started_s,
                        f"other traffic reached the targets, so the deltas are not this run's "
                        f"alone ({summary})")
            return

        processed = sum(d.outcomes["processed"] for d in deltas.values())
        skipped = sum(d.outcomes["not_owned"] + d.outcomes["duplicate"] for d in deltas.values())
        expected_processed = 0 if repeat else events
        expected_skipped = events * len(deltas) - expected_processed
        status = Status.PASS
        if processed != expected_processed or skipped != expected_skipped:
            status = Status.FAIL
        self.record(f"{step}_counters", None, status, started_s,
                    f"processed +{processed} (expected {expected_processed}), not_owned or "
                    f"duplicate +{skipped} (expected {expected_skipped}); {summary}",
                    processed=processed, not_owned_or_duplicate=skipped)

    # -- step 4: metrics ---------------------------------------------------------------------

    def check_metrics(self) -> None:
        """Check pool size, queue metrics and both refresh timestamps on every target."""
        for target in self.targets:
            started_s = self.clock.monotonic()
            try:
                problems, notes, measured = self._metric_findings(target)
            except TargetError as error:
                self.record("metrics", target.url, Status.FAIL, started_s, str(error))
                continue
            status = Status.FAIL if problems else Status.PASS
            self.record("metrics", target.url, status, started_s,
                        "; ".join(problems + notes), **measured)

    def _metric_findings(
        self, target: TargetInfo
    ) -> tuple[list[str], list[str], dict[str, float | int | None]]:
        samples = self.metrics(target)
        problems: list[str] = []
        notes: list[str] = []

        pool = samples.get(POOL_SIZE_METRIC, {}).get(())
        expected_pool = self.options.expected_pool_size
        if pool is None:
            problems.append(f"{POOL_SIZE_METRIC} is missing")
        elif expected_pool is None:
            notes.append(f"pool size {pool:g} (no expected value given)")
        elif int(pool) != expected_pool:
            problems.append(f"{POOL_SIZE_METRIC} is {pool:g}, expected {expected_pool}")
        else:
            notes.append(f"pool size {pool:g} as expected")

        missing = [name for name in QUEUE_METRICS if not _has_family(samples, name)]
        if missing:
            problems.append(f"queue metrics missing: {', '.join(missing)}")
        else:
            notes.append("queue metrics present")

        incremental_s = self._incremental_advance(target, samples, problems)
        if incremental_s is not None:
            notes.append(f"incremental refresh advanced after {incremental_s:.2f} s")
        full_age_s = self._full_refresh_age(target, samples, problems, notes)
        measured: dict[str, float | int | None] = {
            "pool_size": pool, "incremental_advance_s": incremental_s, "full_age_s": full_age_s,
        }
        return problems, notes, measured

    def _incremental_advance(self, target: TargetInfo, samples: Any,
                             problems: list[str]) -> float | None:
        """Wait for the incremental timestamp to advance; return how long that took."""
        interval_ms = self.refresh_ms(target)
        period_s = self.probe_period_s(interval_ms)
        limit_s = self.limit_s(interval_ms, period_s)
        first = refresh_timestamp(samples, "incremental")
        started_s = self.clock.monotonic()
        while self.clock.monotonic() - started_s <= min(limit_s, self.options.max_wait_s):
            self.clock.sleep(period_s)
            latest = refresh_timestamp(self.metrics(target), "incremental")
            if latest is not None and (first is None or latest > first):
                return round(self.clock.monotonic() - started_s, 3)
        problems.append(
            f"incremental refresh timestamp did not advance within {limit_s:.2f} s "
            f"(interval {interval_ms} ms; last success {_describe_timestamp(first)})"
        )
        return None

    def _full_refresh_age(self, target: TargetInfo, samples: Any, problems: list[str],
                          notes: list[str]) -> float | None:
        """Check the full refresh's age and, when the budget allows, that it advanced."""
        interval_ms = self.full_refresh_ms(target)
        limit_s = interval_ms / 1000.0 + self.options.tolerance_s
        latest = refresh_timestamp(samples, "full")
        if latest is None:
            problems.append("full refresh timestamp is missing: no full refresh succeeded")
            return None
        age_s = self.clock.time() - latest
        if age_s > limit_s:
            problems.append(
                f"last full refresh is {age_s:.1f} s old, over the limit {limit_s:.1f} s"
            )
            return round(age_s, 3)

        at_discovery = self._full_refresh_at_discovery.get(target.url)
        remaining_s = limit_s - (self.clock.monotonic() - self._discovered_at_s)
        if at_discovery is None or latest > at_discovery:
            notes.append(f"full refresh {age_s:.1f} s ago and advanced during the run")
        elif remaining_s > self.options.max_wait_s:
            notes.append(f"full refresh {age_s:.1f} s ago; its advance was not checked because "
                         f"that needs {remaining_s:.0f} s more than --max-wait-s allows")
        elif self._wait_full_advance(target, at_discovery, remaining_s):
            notes.append(f"full refresh {age_s:.1f} s ago and advanced during the run")
        else:
            problems.append(f"full refresh timestamp did not advance within {limit_s:.1f} s "
                            f"(interval {interval_ms} ms)")
        return round(age_s, 3)

    def _wait_full_advance(self, target: TargetInfo, first: float, wait_s: float) -> bool:
        period_s = self.probe_period_s(self.full_refresh_ms(target))
        deadline_s = self.clock.monotonic() + max(0.0, wait_s)
        while self.clock.monotonic() < deadline_s:
            self.clock.sleep(period_s)
            latest = refresh_timestamp(self.metrics(target), "full")
            if latest is not None and latest > first:
                return True
        return False

    # -- step 5: cleanup ---------------------------------------------------------------------

    def cleanup(self) -> bool:
        """Delete this run's configs and dedup keys; return False when something was left."""
        started_s = self.clock.monotonic()
        problems: list[str] = []
        deleted_configs = deleted_keys = 0
        try:
            deleted_configs = self.store.delete(self.config_ids)
        except SmokeError as error:
            problems.append(f"configs {', '.join(self.config_ids)} may remain: {error}")
        if self.dedup_keys is not None:
            try:
                deleted_keys = self.dedup_keys.delete_events(self.event_ids)
            except SmokeError as error:
                problems.append(f"dedup keys of {len(self.event_ids)} events may remain: {error}")

        detail = (f"deleted {deleted_configs} remaining of {len(self.config_ids)} configs and "
                  f"{deleted_keys} dedup keys of {len(self.event_ids)} events")
        if self.dedup_keys is None:
            detail += "; no Redis URL given, so dedup keys expire by their TTL"
        status = Status.FAIL if problems else Status.PASS
        self.record("cleanup", None, status, started_s, "; ".join([detail, *problems]),
                    configs_deleted=deleted_configs, dedup_keys_deleted=deleted_keys)
        return not problems

    # -- whole run ---------------------------------------------------------------------------

    def run_steps(self) -> None:
        if not self.discover():
            self.skip_all("pickup", "a target could not be read (see discover)")
            return
        try:
            self.pickup()
            self.disable_and_delete()
            self.dedup()
        except SmokeError as error:
            self.record("steps", None, Status.FAIL, self.clock.monotonic(),
                        f"the steps stopped early: {error}")
        self.check_metrics()


def _has_family(samples: dict[str, Any], name: str) -> bool:
    return any(key == name or key.startswith(name + "_") for key in samples)


def _describe_timestamp(unix_s: float | None) -> str:
    if unix_s is None:
        return "never"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_s))


# ---------------------------------------------------------------------------------------------
# Signals, report and entry point


@contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into `SmokeInterrupted` while the steps run, so cleanup still happens."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupted(signal_number: int, _frame: FrameType | None) -> None:
        raise SmokeInterrupted(signal.Signals(signal_number).name)

    previous = signal.signal(signal.SIGTERM, raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def deferred_signals() -> Iterator[list[int]]:
    """Hold SIGINT and SIGTERM during cleanup; the yielded list collects what arrived."""
    arrived: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield arrived
        return

    def remember(signal_number: int, _frame: FrameType | None) -> None:
        arrived.append(signal_number)
        logger.warning("Received %s during cleanup; finishing cleanup first",
                       signal.Signals(signal_number).name)

    previous = {number: signal.signal(number, remember)
                for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield arrived
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def execute(run: SmokeRun) -> int:
    """Run every step, then clean up whatever happened; return the exit code."""
    interrupted = False
    try:
        with interrupt_on_sigterm():
            run.run_steps()
    except (KeyboardInterrupt, SmokeInterrupted) as error:
        interrupted = True
        logger.warning("Smoke run %s interrupted (%s); cleaning up", run.options.run_id,
                       type(error).__name__)
        run.skip_all("interrupted", "the run was interrupted before its steps finished")
    finally:
        with deferred_signals():
            cleaned = run.cleanup()

    if not cleaned:
        return EXIT_CLEANUP_FAILED
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if run.failed else EXIT_OK


def format_report(run: SmokeRun, exit_code: int) -> str:
    """Return the report as text: one line per step, then the result."""
    lines = [f"supervisor smoke, run {run.options.run_id}, {len(run.options.targets)} target(s)"]
    for result in run.results:
        lines.append(
            f"{result.status.value:<8} {result.step:<22} {result.target or '-':<28} "
            f"{result.duration_s:8.3f} s  {result.detail}"
        )
    counts = {status: sum(r.status is status for r in run.results) for status in Status}
    verdict = "PASS" if exit_code == EXIT_OK else "FAIL"
    lines.append(
        f"Result: {verdict} ({counts[Status.PASS]} passed, {counts[Status.FAIL]} failed, "
        f"{counts[Status.SKIPPED]} skipped); exit code {exit_code}"
    )
    return "\n".join(lines)


def report_json(run: SmokeRun, exit_code: int) -> dict[str, Any]:
    """Return the report as a JSON-ready object."""
    return {
        "run_id": run.options.run_id,
        "result": "PASS" if exit_code == EXIT_OK else "FAIL",
        "exit_code": exit_code,
        "targets": [asdict(target) for target in run.targets],
        "steps": [result.to_json() for result in run.results],
        "created": {"config_ids": run.config_ids, "event_ids": run.event_ids},
    }


def main(args: argparse.Namespace) -> int:
    """Run the smoke test, print its report and return the exit code (0 when it passed)."""
    try:
        options = build_options(args)
        store = DbConfigStore(options.database_url)
    except SmokeOptionError as error:
        print(f"supervisor smoke: {error}", file=sys.stderr)
        return EXIT_INVALID_OPTION

    dedup_keys: DedupKeyStore | None = None
    if options.redis_url:
        dedup_keys = RedisDedupKeys(options.redis_url, options.dedup_key_prefix,
                                    options.http_timeout_s)
    run = SmokeRun(options, http=HttpClient(options.http_timeout_s, options.token), store=store,
                   dedup_keys=dedup_keys, clock=SystemSmokeClock())
    try:
        exit_code = execute(run)
    finally:
        store.close()
        if dedup_keys is not None:
            dedup_keys.close()

    if options.json_output:
        print(json.dumps(report_json(run, exit_code), indent=2))
    else:
        print(format_report(run, exit_code))
    return exit_code
