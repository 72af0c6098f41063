"""`supervisor preflight`: the checks to pass before a rollout, one line each.

Each check ends as PASS, WARN (passes, but the operator should know) or FAIL. The command exits
1 when any check fails. The database and Redis checks connect to the servers the settings name.
The settings checks insist that the rollout's key variables are set explicitly, because a
default that silently applies is what a preflight is there to catch. Passwords in URLs are
masked in every line, including error text passed through from drivers.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from supervisor.settings import Settings, SettingsError, default_database_url, mask_url

if TYPE_CHECKING:
    import sqlalchemy as sa

Status = Literal["PASS", "WARN", "FAIL"]

EXPLICIT_VARIABLES = (
    "SUPERVISOR_WORKER_POOL_SIZE",
    "SUPERVISOR_CONFIG_REFRESH_MS",
    "SUPERVISOR_CONFIG_FULL_REFRESH_MS",
    "SUPERVISOR_TARGET_LATENCY_MS",
)
REDIS_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one preflight check."""

    name: str
    status: Status
    detail: str

    @property
    def passed(self) -> bool:
        return self.status != "FAIL"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `supervisor preflight`."""
    parser.add_argument(
        "--database-url",
        help="database to check (default: SUPERVISOR_DATABASE_URL, else ./supervisor.db)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def main(args: argparse.Namespace) -> int:
    """Run every check, print the results, and return 1 if any failed."""
    results = run_preflight(os.environ, database_url=args.database_url)
    passed = all(result.passed for result in results)
    if args.json:
        payload = {"passed": passed, "checks": [asdict(result) for result in results]}
        print(json.dumps(payload, indent=2))
    else:
        width = max(len(result.name) for result in results)
        for result in results:
            print(f"{result.status:<4}  {result.name:<{width}}  {result.detail}")
        failed = sum(1 for result in results if not result.passed)
        print(f"Preflight {'passed' if passed else f'failed: {failed} checks failed'}")
    return 0 if passed else 1


def run_preflight(
    environ: Mapping[str, str], *, database_url: str | None = None
) -> list[CheckResult]:
    """Run every check against the variables in `environ` and the servers they name."""
    database_url = database_url or environ.get("SUPERVISOR_DATABASE_URL") or default_database_url()
    redis_url = environ.get("SUPERVISOR_REDIS_URL") or None
    results = [check_settings(environ)]
    results.extend(check_explicit_variable(environ, name) for name in EXPLICIT_VARIABLES)
    results.append(check_shards(environ))
    results.append(check_refresh_intervals(environ))
    results.extend(check_database(database_url))
    results.append(check_redis(redis_url))
    secrets = _passwords([database_url, redis_url])
    return [_scrubbed(result, secrets) for result in results]


def check_settings(environ: Mapping[str, str]) -> CheckResult:
    """Check that every `SUPERVISOR_*` variable contains a valid value."""
    try:
        Settings.from_env(environ)
    except SettingsError as error:
        return CheckResult("settings", "FAIL", str(error))
    return CheckResult("settings", "PASS", "every SUPERVISOR_* value is valid")


def check_explicit_variable(environ: Mapping[str, str], variable: str) -> CheckResult:
    """Check that `variable` is set in the environment and valid, not left to its default."""
    raw = environ.get(variable, "").strip()
    if not raw:
        default = _parse_int(variable, None)
        return CheckResult(
            variable, "FAIL", f"not set; set it explicitly (the default {default} would apply)"
        )
    try:
        value = _parse_int(variable, raw)
    except SettingsError as error:
        return CheckResult(variable, "FAIL", str(error))
    return CheckResult(variable, "PASS", f"set to {value}")


def check_shards(environ: Mapping[str, str]) -> CheckResult:
    """Check that shard count and index are valid and the index is set when sharding."""
    count_raw = environ.get("SUPERVISOR_SHARD_COUNT", "").strip()
    index_raw = environ.get("SUPERVISOR_SHARD_INDEX", "").strip()
    subset = {"SUPERVISOR_SHARD_COUNT": count_raw, "SUPERVISOR_SHARD_INDEX": index_raw}
    try:
        settings = Settings.from_env(subset)
    except SettingsError as error:
        return CheckResult("shards", "FAIL", str(error))
    if settings.shard_count > 1 and not index_raw:
        return CheckResult(
            "shards",
            "FAIL",
            f"SUPERVISOR_SHARD_COUNT={settings.shard_count} but SUPERVISOR_SHARD_INDEX is not "
            f"set, so every instance would own shard 0; set it from 0 to "
            f"{settings.shard_count - 1}",
        )
    return CheckResult(
        "shards",
        "PASS",
        f"this instance owns shard {settings.shard_index} of {settings.shard_count}",
    )


def check_refresh_intervals(environ: Mapping[str, str]) -> CheckResult:
    """Check that the full refresh interval is longer than the incremental one."""
    incremental_variable = "SUPERVISOR_CONFIG_REFRESH_MS"
    full_variable = "SUPERVISOR_CONFIG_FULL_REFRESH_MS"
    try:
        incremental_ms = _parse_int(incremental_variable, environ.get(incremental_variable))
        full_ms = _parse_int(full_variable, environ.get(full_variable))
    except SettingsError as error:
        return CheckResult("refresh_intervals", "FAIL", f"cannot compare the intervals: {error}")
    if full_ms <= incremental_ms:
        return CheckResult(
            "refresh_intervals",
            "FAIL",
            f"SUPERVISOR_CONFIG_FULL_REFRESH_MS={full_ms} must be larger than "
            f"SUPERVISOR_CONFIG_REFRESH_MS={incremental_ms}",
        )
    return CheckResult(
        "refresh_intervals",
        "PASS",
        f"full every {full_ms} ms, incremental every {incremental_ms} ms",
    )


def check_database(database_url: str) -> list[CheckResult]:
    """Check that the database responds, has the refresh index and, when Prisma manages it,
    has finished the Prisma migration that adds the index."""
    import sqlalchemy as sa

    from supervisor.db import DatabaseUrlError, create_engine_from_url

    shown_url = mask_url(database_url)
    missing_file = _missing_sqlite_file(database_url)
    if missing_file is not None:
        # Connecting would create an empty file, so report the missing file instead.
        return _database_unreachable(
            f"SQLite file {missing_file} does not exist; create it with `supervisor migrate`"
        )
    try:
        engine = create_engine_from_url(database_url)
    except DatabaseUrlError as error:
        return _database_unreachable(str(error))
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
            version = conn.dialect.server_version_info or ()
            reachable = CheckResult(
                "database",
                "PASS",
                f"{shown_url} reachable ({conn.dialect.name} "
                f"{'.'.join(str(part) for part in version)})",
            )
            return [reachable, _check_refresh_index(conn), _check_prisma_migration(conn)]
    except sa.exc.SQLAlchemyError as error:
        return _database_unreachable(f"{shown_url} unreachable: {_first_line(error)}")
    finally:
        engine.dispose()


def _database_unreachable(detail: str) -> list[CheckResult]:
    skipped = "not checked because the database is unreachable"
    return [
        CheckResult("database", "FAIL", detail),
        CheckResult("refresh_index", "FAIL", skipped),
        CheckResult("prisma_migration", "FAIL", skipped),
    ]


def _missing_sqlite_file(database_url: str) -> str | None:
    if not database_url.startswith("sqlite"):
        return None
    path = database_url.partition(":///")[2].split("?", 1)[0]
    if not path or path == ":memory:" or Path(path).exists():
        return None
    return path


def _check_refresh_index(conn: sa.Connection) -> CheckResult:
    import sqlalchemy as sa

    from supervisor.db import REFRESH_INDEX_NAME

    if conn.dialect.name == "postgresql":
        query = sa.text(
            "SELECT i.indisvalid FROM pg_indexes p "
            "JOIN pg_class c ON c.relname = p.indexname "
            "JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = p.schemaname "
            "JOIN pg_index i ON i.indexrelid = c.oid "
            "WHERE p.indexname = :name"
        )
    else:
        query = sa.text("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = :name")
    found = conn.execute(query, {"name": REFRESH_INDEX_NAME}).first()
    if found is None:
        return CheckResult(
            "refresh_index",
            "FAIL",
            f"index {REFRESH_INDEX_NAME} not found; run `supervisor migrate` or the platform's "
            "Prisma migration 20260206111203_add_config_refresh_index",
        )
    if found[0] is False:
        return CheckResult(
            "refresh_index",
            "FAIL",
            f"index {REFRESH_INDEX_NAME} exists but is INVALID (an interrupted CREATE INDEX "
            "CONCURRENTLY); drop it and migrate again",
        )
    return CheckResult("refresh_index", "PASS", f"index {REFRESH_INDEX_NAME} present")


def _check_prisma_migration(conn: sa.Connection) -> CheckResult:
    import sqlalchemy as sa

    from supervisor.db import PRISMA_REFRESH_INDEX_MIGRATION

    if not sa.inspect(conn).has_table("_prisma_migrations"):
        return CheckResult(
            "prisma_migration",
            "PASS",
            "no _prisma_migrations table; the supervisor's own migrations manage this database",
        )
    rows = conn.execute(
        sa.text(
            'SELECT finished_at, rolled_back_at FROM "_prisma_migrations" '
            "WHERE migration_name = :name"
        ),
        {"name": PRISMA_REFRESH_INDEX_MIGRATION},
    ).all()
    if any(finished is not None and rolled_back is None for finished, rolled_back in rows):
        return CheckResult(
            "prisma_migration", "PASS", f"{PRISMA_REFRESH_INDEX_MIGRATION} finished"
        )
    if not rows:
        state = "has no row, so it was never applied"
    elif any(rolled_back is not None for _, rolled_back in rows):
        state = "was rolled back"
    else:
        state = "has not finished (finished_at is empty)"
    return CheckResult(
        "prisma_migration",
        "FAIL",
        f"{PRISMA_REFRESH_INDEX_MIGRATION} {state}; apply it with `prisma migrate deploy`",
    )


def check_redis(redis_url: str | None) -> CheckResult:
    """Check that Redis replies to PING; without a URL, warn that dedup is not shared."""
    if not redis_url:
        return CheckResult(
            "redis",
            "WARN",
            "SUPERVISOR_REDIS_URL is not set; dedup stays in process and is not shared between "
            "instances, so run only one instance",
        )
    import redis

    shown_url = mask_url(redis_url)
    client = redis.Redis.from_url(
        redis_url, socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S
    )
    try:
        client.ping()
    except (redis.RedisError, OSError, ValueError) as error:
        return CheckResult("redis", "FAIL", f"{shown_url} did not answer PING: {error}")
    finally:
        client.close()
    return CheckResult("redis", "PASS", f"{shown_url} answered PING")


def _parse_int(variable: str, raw: str | None) -> int:
    """Return the validated value of one integer variable, or its default when `raw` is None."""
    name = variable.removeprefix("SUPERVISOR_").lower()
    environ = {} if raw is None else {variable: raw}
    value = getattr(Settings.from_env(environ), name)
    if not isinstance(value, int):
        raise TypeError(f"{variable} is not an integer setting")
    return value


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _passwords(urls: Iterable[str | None]) -> list[str]:
    secrets: list[str] = []
    for url in urls:
        if url:
            password = urlsplit(url).password
            if password:
                secrets.append(password)
    return secrets


def _scrubbed(result: CheckResult, secrets: list[str]) -> CheckResult:
    detail = result.detail
    for secret in secrets:
        detail = detail.replace(secret, "***")
    return CheckResult(result.name, result.status, detail)
