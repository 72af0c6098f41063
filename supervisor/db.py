"""Database access: the `"CopyTradingConfig"` table, engines, and the writers the CLI uses.

The platform's Prisma schema owns the table, so its table and column names are Prisma's quoted
camelCase and the Python attributes map onto them. Timestamps are naive UTC `datetime` values
truncated to milliseconds, which is what Prisma's `timestamp(3)` columns hold.

Every writer here sets `"updatedAt"` from the application's wall clock (`utc_now_ms`), as
Prisma's `@updatedAt` does, rather than from the database's `now()`, which on PostgreSQL is the
transaction's start time. The refresh loop never compares against any clock: its watermark is
the largest `"updatedAt"` read from the rows themselves.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from supervisor.config_cache import SIZING_MODES, ConfigRow
from supervisor.settings import mask_url

TABLE_NAME = "CopyTradingConfig"
REFRESH_INDEX_NAME = "CopyTradingConfig_updatedAt_isActive_autoExecute_channel_idx"
REFRESH_INDEX_COLUMNS = ("updatedAt", "isActive", "autoExecute", "channel")
PRISMA_REFRESH_INDEX_MIGRATION = "20260206111203_add_config_refresh_index"
VERSION_TABLE = "supervisor_alembic_version"

_SEED_BATCH_SIZE = 1000


class DatabaseError(Exception):
    """Base of the errors raised by the supervisor's database helpers."""


class DatabaseUrlError(DatabaseError, ValueError):
    """A database URL names a backend the supervisor does not support."""


class ConfigNotFoundError(DatabaseError, LookupError):
    """No `"CopyTradingConfig"` row has the requested id."""


class MigrationError(DatabaseError):
    """A migration cannot run safely against the database as it is."""


class InvalidConfigError(DatabaseError, ValueError):
    """Config fields that would make a row the cache cannot use."""


class Base(DeclarativeBase):
    pass


def timestamp_ms_type() -> sa.types.TypeEngine[datetime]:
    """Return the column type of Prisma's `DateTime`: `timestamp(3)` on PostgreSQL."""
    return sa.DateTime().with_variant(postgresql.TIMESTAMP(precision=3), "postgresql")


class CopyTradingConfig(Base):
    """The platform's `"CopyTradingConfig"` table; one row per follower subscription."""

    __tablename__ = TABLE_NAME

    id: Mapped[str] = mapped_column("id", sa.Text, primary_key=True)
    user_id: Mapped[str] = mapped_column("userId", sa.Text)
    channel: Mapped[str] = mapped_column("channel", sa.Text)
    is_active: Mapped[bool] = mapped_column("isActive", sa.Boolean, server_default=sa.true())
    auto_execute: Mapped[bool] = mapped_column(
        "autoExecute", sa.Boolean, server_default=sa.false()
    )
    sizing_mode: Mapped[str] = mapped_column(
        "sizingMode", sa.Text, server_default=sa.text("'multiplier'")
    )
    fixed_quantity: Mapped[float | None] = mapped_column("fixedQuantity", sa.Double)
    multiplier: Mapped[float | None] = mapped_column("multiplier", sa.Double)
    max_quantity: Mapped[float | None] = mapped_column("maxQuantity", sa.Double)
    created_at: Mapped[datetime] = mapped_column(
        "createdAt", timestamp_ms_type(), server_default=sa.func.current_timestamp()
    )
    updated_at: Mapped[datetime] = mapped_column("updatedAt", timestamp_ms_type())


def utc_now_ms(unix_s: float | None = None) -> datetime:
    """Return `unix_s` (default: now) as a naive UTC datetime truncated to milliseconds."""
    moment = datetime.now(UTC) if unix_s is None else datetime.fromtimestamp(unix_s, UTC)
    moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000, tzinfo=None)
    return moment


def new_config_id() -> str:
    """Return a fresh config id, `cfg_` and 32 hex digits."""
    return f"cfg_{uuid.uuid4().hex}"


def normalize_database_url(url: str) -> str:
    """Return `url` with plain PostgreSQL schemes rewritten to the psycopg 3 driver.

    Raises `DatabaseUrlError` for a scheme other than SQLite or PostgreSQL.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        raise DatabaseUrlError(
            f"database URL {mask_url(url)!r} has no scheme; use sqlite:///PATH or "
            "postgresql://USER@HOST:PORT/DB"
        )
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    if scheme in ("postgresql+psycopg", "sqlite", "sqlite+pysqlite"):
        return url
    raise DatabaseUrlError(
        f"database URL scheme {scheme!r} in {mask_url(url)!r} is not supported; use "
        "sqlite:///PATH, postgresql:// or postgresql+psycopg://"
    )


def create_engine_from_url(url: str) -> sa.Engine:
    """Create an engine for a SQLite or PostgreSQL URL, with pool settings for a service.

    PostgreSQL connections are checked before use (`pool_pre_ping`) and recycled after 30
    minutes, so a restarted server or a proxy that drops idle connections costs one retry
    rather than a failed refresh. SQLite files use WAL mode and a 30 s busy timeout, so the
    CLI can write while a supervisor reads.
    """
    normalized = normalize_database_url(url)
    if normalized.startswith("sqlite"):
        engine = sa.create_engine(normalized, connect_args={"timeout": 30})
        sa.event.listen(engine, "connect", _configure_sqlite_connection)
        return engine
    return sa.create_engine(
        normalized,
        pool_size=5,
        max_overflow=5,
        pool_timeout=10,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={"connect_timeout": 5},
    )


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
    finally:
        cursor.close()


def table_exists(engine: sa.Engine) -> bool:
    """Return whether the `"CopyTradingConfig"` table exists in the engine's database."""
    return sa.inspect(engine).has_table(TABLE_NAME)


CONFIG_ROW_COLUMNS = (
    CopyTradingConfig.id.label("id"),
    CopyTradingConfig.user_id.label("user_id"),
    CopyTradingConfig.channel.label("channel"),
    CopyTradingConfig.is_active.label("is_active"),
    CopyTradingConfig.auto_execute.label("auto_execute"),
    CopyTradingConfig.sizing_mode.label("sizing_mode"),
    CopyTradingConfig.fixed_quantity.label("fixed_quantity"),
    CopyTradingConfig.multiplier.label("multiplier"),
    CopyTradingConfig.max_quantity.label("max_quantity"),
    CopyTradingConfig.updated_at.label("updated_at"),
)
"""The columns of a `ConfigRow`, labelled with its field names, for `select(*...)`."""


def rows_from_result(result: Iterable[sa.Row[Any]]) -> list[ConfigRow]:
    """Convert rows selected with `CONFIG_ROW_COLUMNS` into `ConfigRow` objects."""
    return [ConfigRow(**row._mapping) for row in result]


def validate_sizing(
    sizing_mode: str,
    fixed_quantity: float | None,
    multiplier: float | None,
    max_quantity: float | None,
) -> None:
    """Raise `InvalidConfigError` unless the sizing fields can size a copy trade."""
    if sizing_mode not in SIZING_MODES:
        raise InvalidConfigError(
            f"sizing mode {sizing_mode!r} is invalid; use one of {', '.join(SIZING_MODES)}"
        )
    if sizing_mode == "fixed" and (fixed_quantity is None or fixed_quantity <= 0):
        raise InvalidConfigError(
            f"fixed sizing needs a positive fixed quantity, got {fixed_quantity}"
        )
    for name, value in (("multiplier", multiplier), ("max quantity", max_quantity)):
        if value is not None and value <= 0:
            raise InvalidConfigError(f"{name} must be positive, got {value}")


def add_config(
    engine: sa.Engine,
    *,
    channel: str,
    user_id: str,
    sizing_mode: str = "multiplier",
    fixed_quantity: float | None = None,
    multiplier: float | None = 1.0,
    max_quantity: float | None = None,
    is_active: bool = True,
    auto_execute: bool = True,
    config_id: str | None = None,
    now: datetime | None = None,
) -> str:
    """Insert one config and return its id; `now` overrides the app-clock timestamps."""
    validate_sizing(sizing_mode, fixed_quantity, multiplier, max_quantity)
    if not channel:
        raise InvalidConfigError("channel must not be empty")
    stamp = now or utc_now_ms()
    new_id = config_id or new_config_id()
    with engine.begin() as conn:
        conn.execute(
            sa.insert(CopyTradingConfig).values(
                id=new_id,
                user_id=user_id,
                channel=channel,
                is_active=is_active,
                auto_execute=auto_execute,
                sizing_mode=sizing_mode,
                fixed_quantity=fixed_quantity,
                multiplier=multiplier,
                max_quantity=max_quantity,
                created_at=stamp,
                updated_at=stamp,
            )
        )
    return new_id


_UPDATABLE_FIELDS = frozenset(
    {
        "user_id",
        "channel",
        "is_active",
        "auto_execute",
        "sizing_mode",
        "fixed_quantity",
        "multiplier",
        "max_quantity",
    }
)


def update_config(
    engine: sa.Engine, config_id: str, *, now: datetime | None = None, **changes: Any
) -> ConfigRow:
    """Change the given fields of one config, set its `"updatedAt"`, and return the new row.

    Raises `ConfigNotFoundError` when no row has `config_id`, and `InvalidConfigError` for an
    unknown field or sizing fields that cannot size a trade.
    """
    unknown = set(changes) - _UPDATABLE_FIELDS
    if unknown:
        raise InvalidConfigError(
            f"cannot update {', '.join(sorted(unknown))}; updatable fields are "
            f"{', '.join(sorted(_UPDATABLE_FIELDS))}"
        )
    with engine.begin() as conn:
        current = _select_one(conn, config_id)
        merged = {**_sizing_of(current), **changes}
        validate_sizing(
            merged["sizing_mode"],
            merged["fixed_quantity"],
            merged["multiplier"],
            merged["max_quantity"],
        )
        conn.execute(
            sa.update(CopyTradingConfig)
            .where(CopyTradingConfig.id == config_id)
            .values(**changes, updated_at=now or utc_now_ms())
        )
        return _select_one(conn, config_id)


def disable_config(engine: sa.Engine, config_id: str, *, now: datetime | None = None) -> ConfigRow:
    """Set `"isActive"` false on one config; the refresh loop evicts it at its next run."""
    return update_config(engine, config_id, now=now, is_active=False)


def delete_config(engine: sa.Engine, config_id: str) -> None:
    """Delete one config; raise `ConfigNotFoundError` when no row has `config_id`."""
    with engine.begin() as conn:
        result = conn.execute(sa.delete(CopyTradingConfig).where(CopyTradingConfig.id == config_id))
        if result.rowcount == 0:
            raise ConfigNotFoundError(f"config {config_id} not found")


def get_config(engine: sa.Engine, config_id: str) -> ConfigRow:
    """Return one config; raise `ConfigNotFoundError` when no row has `config_id`."""
    with engine.connect() as conn:
        return _select_one(conn, config_id)


def list_configs(engine: sa.Engine, *, channel: str | None = None) -> list[ConfigRow]:
    """Return every config, or those of `channel`, ordered by channel then id."""
    query = sa.select(*CONFIG_ROW_COLUMNS).order_by(
        CopyTradingConfig.channel, CopyTradingConfig.id
    )
    if channel is not None:
        query = query.where(CopyTradingConfig.channel == channel)
    with engine.connect() as conn:
        return rows_from_result(conn.execute(query))


@dataclass(frozen=True)
class SeedSummary:
    """Counts of one `seed_configs` call, with configs per channel in channel order."""

    configs: int
    channels: int
    per_channel: dict[str, int]


def zipf_channel_counts(
    configs: int, channels: int, zipf_s: float, rng: random.Random
) -> list[int]:
    """Spread `configs` over `channels` so channel k (from 1) draws with weight 1 / k**zipf_s.

    When there are at least as many configs as channels, every channel gets one config before
    the rest are drawn, so no seeded channel is empty.
    """
    if configs < 0 or channels < 1:
        raise InvalidConfigError(
            f"seeding needs configs >= 0 and channels >= 1, got configs={configs} "
            f"channels={channels}"
        )
    if zipf_s < 0:
        raise InvalidConfigError(f"zipf exponent must be 0 or more, got {zipf_s}")
    counts = [1] * channels if configs >= channels else [0] * channels
    weights = [1.0 / (rank**zipf_s) for rank in range(1, channels + 1)]
    for index in rng.choices(range(channels), weights=weights, k=configs - sum(counts)):
        counts[index] += 1
    return counts


def seed_configs(
    engine: sa.Engine,
    n: int,
    channels: int,
    zipf_s: float = 1.1,
    seed: int = 1,
    *,
    channel_prefix: str = "ch-",
    now: datetime | None = None,
) -> SeedSummary:
    """Insert `n` active, auto-executing configs over `channels` channels named PREFIX0, ...

    Channel popularity follows `zipf_channel_counts` with a generator seeded by `seed`, so
    the counts per channel repeat for the same arguments. The ids are fresh each time.
    """
    counts = zipf_channel_counts(n, channels, zipf_s, random.Random(seed))
    stamp = now or utc_now_ms()
    per_channel = {f"{channel_prefix}{i}": count for i, count in enumerate(counts) if count}
    rows = [
        {
            "id": new_config_id(),
            "userId": f"seed-user-{index}",
            "channel": channel,
            "isActive": True,
            "autoExecute": True,
            "sizingMode": "multiplier",
            "multiplier": 1.0,
            "createdAt": stamp,
            "updatedAt": stamp,
        }
        for index, channel in enumerate(_expand(per_channel))
    ]
    table = cast(sa.Table, CopyTradingConfig.__table__)
    with engine.begin() as conn:
        for start in range(0, len(rows), _SEED_BATCH_SIZE):
            conn.execute(sa.insert(table), rows[start : start + _SEED_BATCH_SIZE])
    return SeedSummary(configs=n, channels=channels, per_channel=per_channel)


def _expand(per_channel: dict[str, int]) -> list[str]:
    return [channel for channel, count in per_channel.items() for _ in range(count)]


def _select_one(conn: sa.Connection, config_id: str) -> ConfigRow:
    query = sa.select(*CONFIG_ROW_COLUMNS).where(CopyTradingConfig.id == config_id)
    rows = rows_from_result(conn.execute(query))
    if not rows:
        raise ConfigNotFoundError(f"config {config_id} not found")
    return rows[0]


def _sizing_of(row: ConfigRow) -> dict[str, Any]:
    return {
        "sizing_mode": row.sizing_mode,
        "fixed_quantity": row.fixed_quantity,
        "multiplier": row.multiplier,
        "max_quantity": row.max_quantity,
    }

