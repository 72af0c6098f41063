"""Refresh loop against a real PostgreSQL: late commits seen through two real connections.

Each test migrates its own database, so the rows it counts are its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from supervisor import migrate
from supervisor.clock import FakeClock
from supervisor.config_cache import ConfigCache
from supervisor.db import add_config, create_engine_from_url, delete_config, update_config
from supervisor.refresh import RefreshLoop, SqlConfigSource

pytestmark = pytest.mark.integration

T0 = datetime(2026, 2, 6, 12, 0, 0)


@pytest.fixture
def pg_engine(postgres_server_url: str) -> Iterator[sa.Engine]:
    admin = sa.create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    name = f"supervisor_refresh_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = postgres_server_url.rsplit("/", 1)[0] + "/" + name
    migrate.upgrade(url)
    engine = create_engine_from_url(url)
    yield engine
    engine.dispose()
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def make_loop(
    engine: sa.Engine, cache: ConfigCache, *, overlap_s: float, page_size: int = 100
) -> RefreshLoop:
    return RefreshLoop(
        SqlConfigSource(engine, page_size=page_size),
        cache,
        refresh_interval_s=5.0,
        full_refresh_interval_s=300.0,
        overlap_s=overlap_s,
        page_size=page_size,
        clock=FakeClock(),
    )


def cached_ids(cache: ConfigCache, channel: str = "alpha") -> list[str]:
    return [config.id for config in cache.configs_for(channel)]


def insert_sql() -> sa.TextClause:
    return sa.text(
        'INSERT INTO "CopyTradingConfig" ("id", "userId", "channel", "isActive", "autoExecute", '
        '"sizingMode", "multiplier", "updatedAt") '
        "VALUES (:id, 'u-late', 'alpha', true, true, 'multiplier', 1.0, :updated_at)"
    )


async def test_late_commit_found_within_overlap(pg_engine: sa.Engine) -> None:
    with_overlap = ConfigCache()
    without_overlap = ConfigCache()
    loop = make_loop(pg_engine, with_overlap, overlap_s=5.0)
    control = make_loop(pg_engine, without_overlap, overlap_s=0.0)

    with pg_engine.connect() as writer:
        writer.begin()
        writer.execute(insert_sql(), {"id": "late", "updated_at": T0})
        add_config(
            pg_engine,
            channel="alpha",
            user_id="u1",
            config_id="early",
            now=T0 + timedelta(milliseconds=500),
        )
        await loop.run_first_full()
        await control.run_first_full()
        writer.commit()

    before = cached_ids(with_overlap)
    await loop.refresh_incremental()
    await control.refresh_incremental()

    assert before == ["early"]
    assert loop.watermark == T0 + timedelta(milliseconds=500)
    assert cached_ids(with_overlap) == ["early", "late"]
    assert cached_ids(without_overlap) == ["early"]


async def test_shared_updated_at_across_pages(pg_engine: sa.Engine) -> None:
    add_config(pg_engine, channel="alpha", user_id="u1", config_id="a", now=T0)
    add_config(pg_engine, channel="alpha", user_id="u1", config_id="b", now=T0)
    cache = ConfigCache()
    loop = make_loop(pg_engine, cache, overlap_s=0.0, page_size=2)
    await loop.run_first_full()
    for config_id in ("c", "d", "e"):
        add_config(pg_engine, channel="alpha", user_id="u1", config_id=config_id, now=T0)

    await loop.refresh_incremental()

    assert cached_ids(cache) == ["a", "b", "c", "d", "e"]


async def test_eviction_and_delete_on_postgres(pg_engine: sa.Engine) -> None:
    for config_id in ("a", "b", "c"):
        add_config(pg_engine, channel="alpha", user_id="u1", config_id=config_id, now=T0)
    cache = ConfigCache()
    loop = make_loop(pg_engine, cache, overlap_s=1.0, page_size=2)
    await loop.run_first_full()

    update_config(pg_engine, "a", auto_execute=False, now=T0 + timedelta(seconds=1))
    delete_config(pg_engine, "b")
    await loop.refresh_incremental()
    after_incremental = cached_ids(cache)
    await loop.refresh_full()

    assert after_incremental == ["b", "c"]
    assert cached_ids(cache) == ["c"]


async def test_millisecond_timestamps_round_trip(pg_engine: sa.Engine) -> None:
    stamp = datetime(2026, 2, 6, 12, 0, 0, 123000)
    add_config(pg_engine, channel="alpha", user_id="u1", config_id="a", now=stamp)
    loop = make_loop(pg_engine, ConfigCache(), overlap_s=0.0)

    await loop.run_first_full()

    assert loop.watermark == stamp
