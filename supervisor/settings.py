"""Settings of one supervisor instance, read from `SUPERVISOR_*` environment variables.

Every variable is read and validated here and nowhere else. A bad value raises
`SettingsError` whose message names the variable, the value and the valid range, so the
command line can print it as one line and exit non-zero. Durations keep their unit in the
field name (`_ms`) as the variables do; convert them where they are used.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ENV_PREFIX = "SUPERVISOR_"


class SettingsError(ValueError):
    """An environment variable holds a value the supervisor cannot start with."""


def mask_url(url: str | None) -> str | None:
    """Return `url` with its password replaced by `***`, for logs and printed settings."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    # The text after the last "@" keeps IPv6 brackets and the port as written.
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def default_database_url() -> str:
    """Return the SQLite file in the working directory used when no database URL is set."""
    return f"sqlite:///{Path.cwd() / 'supervisor.db'}"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Validated settings; build one with `Settings.from_env()` or keyword arguments in tests."""

    worker_pool_size: int = 8
    queue_max_size: int = 1000
    config_refresh_ms: int = 5000
    config_full_refresh_ms: int = 300_000
    config_refresh_overlap_ms: int = 5000
    config_refresh_page_size: int = 1000
    shard_count: int = 1
    shard_index: int = 0
    database_url: str = field(default_factory=default_database_url, repr=False)
    redis_url: str | None = field(default=None, repr=False)
    dedup_ttl_ms: int = 86_400_000
    dedup_claim_ttl_ms: int = 30_000
    dedup_key_prefix: str = "supervisor:dedup:"
    execution_url: str = "http://127.0.0.1:8090"
    execution_timeout_ms: int = 2000
    execution_max_attempts: int = 3
    execution_backoff_ms: int = 50
    execution_max_connections: int = 256
    target_latency_ms: int = 250
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    ingest_token: str | None = field(default=None, repr=False)
    max_batch_events: int = 1000
    max_body_bytes: int = 1_048_576
    shutdown_drain_ms: int = 10_000
    timings_buffer_size: int = 100_000

    def __post_init__(self) -> None:
        if self.shard_index >= self.shard_count:
            raise SettingsError(
                f"SUPERVISOR_SHARD_INDEX={self.shard_index} is invalid: it must be below "
                f"SUPERVISOR_SHARD_COUNT={self.shard_count} (valid range 0 to "
                f"{self.shard_count - 1})"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every `SUPERVISOR_*` variable; unset ones keep their defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for spec in _SPECS:
            raw = env.get(spec.variable)
            if raw is None or raw.strip() == "":
                continue
            values[spec.name] = spec.parse(raw.strip())
        return cls(**values)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.public_items())
        return f"Settings({shown})"

    def public_items(self) -> list[tuple[str, object]]:
        """Return (name, value) pairs with URL passwords masked and the ingest token hidden."""
        items: list[tuple[str, object]] = []
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.name in ("database_url", "redis_url"):
                value = mask_url(value)
            elif spec.name == "ingest_token" and value is not None:
                value = "***"
            items.append((spec.name, value))
        return items

    @property
    def dedup_backend(self) -> str:
        """`redis` when dedup is shared through Redis, `memory` when it stays in process."""
        return "redis" if self.redis_url else "memory"


@dataclass(frozen=True)
class _Spec:
    name: str
    kind: str
    low: int = 0
    high: int = 0

    @property
    def variable(self) -> str:
        return ENV_PREFIX + self.name.upper()

    def parse(self, raw: str) -> object:
        if self.kind == "str":
            return raw
        if self.kind == "url":
            if "://" not in raw:
                raise SettingsError(
                    f"{self.variable}={raw!r} is invalid: expected a URL such as "
                    f"{_URL_EXAMPLES.get(self.name, 'scheme://host:port')}"
                )
            if self.name == "execution_url" and urlsplit(raw).scheme not in ("http", "https"):
                raise SettingsError(
                    f"{self.variable}={mask_url(raw)!r} is invalid: the execution service is "
                    "called over HTTP, so use an http:// or https:// URL"
                )
            if self.name == "redis_url":
                from supervisor.resp import RedisUrlError, parse_redis_url

                try:
                    parse_redis_url(raw)
                except RedisUrlError as error:
                    raise SettingsError(
                        f"{self.variable}={mask_url(raw)!r} is invalid: {error}"
                    ) from None
            return raw
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(
                f"{self.variable}={raw!r} is not an integer: set a whole number from "
                f"{self.low} to {self.high}"
            ) from None
        if not self.low <= value <= self.high:
            raise SettingsError(
                f"{self.variable}={value} is out of range: set a whole number from "
                f"{self.low} to {self.high}"
            )
        return value


_URL_EXAMPLES = {
    "database_url": "postgresql+psycopg://user:password@127.0.0.1:5432/test or sqlite:///supervisor.db",
    "redis_url": "redis://127.0.0.1:6379/0",
    "execution_url": "http://127.0.0.1:8090",
}

_DAY_MS = 86_400_000

_SPECS = (
    _Spec("worker_pool_size", "int", 1, 10_000),
    _Spec("queue_max_size", "int", 1, 10_000_000),
    _Spec("config_refresh_ms", "int", 10, _DAY_MS),
    _Spec("config_full_refresh_ms", "int", 100, 7 * _DAY_MS),
    _Spec("config_refresh_overlap_ms", "int", 0, _DAY_MS),
    _Spec("config_refresh_page_size", "int", 1, 1_000_000),
    _Spec("shard_count", "int", 1, 4096),
    _Spec("shard_index", "int", 0, 4095),
    _Spec("database_url", "url"),
    _Spec("redis_url", "url"),
    _Spec("dedup_ttl_ms", "int", 1000, 30 * _DAY_MS),
    _Spec("dedup_claim_ttl_ms", "int", 100, _DAY_MS),
    _Spec("dedup_key_prefix", "str"),
    _Spec("execution_url", "url"),
    _Spec("execution_timeout_ms", "int", 1, 600_000),
    _Spec("execution_max_attempts", "int", 1, 20),
    _Spec("execution_backoff_ms", "int", 0, 60_000),
    _Spec("execution_max_connections", "int", 1, 100_000),
    _Spec("target_latency_ms", "int", 1, 600_000),
    _Spec("http_host", "str"),
    _Spec("http_port", "int", 0, 65_535),
    _Spec("ingest_token", "str"),
    _Spec("max_batch_events", "int", 1, 100_000),
    _Spec("max_body_bytes", "int", 1024, 1_073_741_824),
    _Spec("shutdown_drain_ms", "int", 0, 600_000),
    _Spec("timings_buffer_size", "int", 0, 10_000_000),
)

VARIABLES: tuple[str, ...] = tuple(spec.variable for spec in _SPECS)
