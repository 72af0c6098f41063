"""Refresh loop tests on a SQLite file, driven by a fake clock.

Rows get explicit `"updatedAt"` values so each test states the exact timeline it checks; the
fake clock's own time is years away from them, which also shows that the watermark comes from
row values and not from the clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from supervisor.clock import FakeClock
from supervisor.config_cache import ConfigCache, ConfigRow
from supervisor.db import (
    Base,
    add_config,
    create_engine_from_url,
    delete_config,
    update_config,
)
from supervisor.refresh import (
    ConfigSnapshot,
    ConfigSourceError,
    RefreshLoop,
    SqlConfigSource,
    _next_tick,
    build_refresh_loop,
)
from supervisor.settings import Settings

T0 = datetime(2026, 2, 6, 12, 0, 0)
SETTLE_TIMEOUT_S = 10.0


@dataclass
class RecordingObserver:
    clock: FakeClock
    calls: list[tuple[str, str, int, float]] = field(default_factory=list)

    def on_refresh(
        self, kind: str, result: str, rows: int, duration_s: float, finished_unix_s: float
    ) -> None:
        self.calls.append((kind, result, rows, self.clock.monotonic()))


class CountingSource:
    """Wraps a source and records each incremental page request."""

    def __init__(self, inner: SqlConfigSource) -> None:
        self.inner = inner
        self.page_requests: list[tuple[datetime | None, str | None]] = []

    async def fetch_changed_since(
        self, since: datetime | None, after_id: str | None, limit: int
    ) -> Sequence[ConfigRow]:
        self.page_requests.append((since, after_id))
        return await self.inner.fetch_changed_since(since, after_id, limit)

    async def fetch_all(self) -> ConfigSnapshot:
        return await self.inner.fetch_all()

    async def close(self) -> None:
        await self.inner.close()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = create_engine_from_url(f"sqlite:///{tmp_path / 'configs.db'}")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def observer(clock: FakeClock) -> RecordingObserver:
    return RecordingObserver(clock)


def make_loop(
    source: SqlConfigSource | CountingSource,
    cache: ConfigCache,
    clock: FakeClock,
    observer: RecordingObserver,
    *,
    overlap_s: float = 5.0,
    page_size: int = 100,
    refresh_interval_s: float = 5.0,
    full_refresh_interval_s: float = 20.0,
) -> RefreshLoop:
    return RefreshLoop(
        source,
        cache,
        refresh_interval_s=refresh_interval_s,
        full_refresh_interval_s=full_refresh_interval_s,
        overlap_s=overlap_s,
        page_size=page_size,
        clock=clock,
        observer=observer,
    )


def cached_ids(cache: ConfigCache, channel: str = "alpha") -> list[str]:
    return [config.id for config in cache.configs_for(channel)]


def add(engine: sa.Engine, config_id: str, at: datetime, channel: str = "alpha") -> None:
    add_config(engine, channel=channel, user_id="u1", config_id=config_id, now=at)


async def tick(clock: FakeClock, seconds: float) -> None:
    """Advance the clock and wait until the woken loop is sleeping again."""
    await clock.advance(seconds)
    await asyncio.wait_for(clock.wait_for_sleepers(1), SETTLE_TIMEOUT_S)


@pytest.fixture
async def running(
    engine: sa.Engine, clock: FakeClock, observer: RecordingObserver
) -> AsyncIterator[tuple[RefreshLoop, ConfigCache]]:
    cache = ConfigCache()
    loop = make_loop(SqlConfigSource(engine), cache, clock, observer)
    await loop.run_first_full()
    task = asyncio.create_task(loop.run_forever())
    await asyncio.wait_for(clock.wait_for_sleepers(1), SETTLE_TIMEOUT_S)
    yield loop, cache
    await loop.stop()
    await task


async def test_first_full_fills_cache_and_sets_ready(
    engine: sa.Engine, clock: FakeClock, observer: RecordingObserver
) -> None:
    add(engine, "c1", T0)
    add(engine, "c2", T0 + timedelta(seconds=1), channel="beta")
    add_config(engine, channel="alpha", user_id="u", config_id="c3", is_active=False, now=T0)
    cache = ConfigCache()
    loop = make_loop(SqlConfigSource(engine), cache, clock, observer)

    assert not loop.ready
    await loop.run_first_full()

    assert loop.ready
    assert cached_ids(cache) == ["c1"]
    assert cached_ids(cache, "beta") == ["c2"]
    assert loop.watermark == T0 + timedelta(seconds=1)
    assert observer.calls == [("full", "success", 2, 0.0)]


async def test_first_full_failure_raises_and_not_ready(
    tmp_path: Path, clock: FakeClock, observer: RecordingObserver
) -> None:
    empty = create_engine_from_url(f"sqlite:///{tmp_path / 'no_table.db'}")
    loop = make_loop(SqlConfigSource(empty), ConfigCache(), clock, observer)

    with pytest.raises(ConfigSourceError, match="CopyTradingConfig"):
        await loop.run_first_full()

    assert not loop.ready
    assert observer.calls == [("full", "error", 0, 0.0)]
    empty.dispose()


async def test_late_commit_within_overlap_found(
    engine: sa.Engine, clock: FakeClock, observer: RecordingObserver
) -> None:
    add(engine, "c1", T0)
    cache = ConfigCache()
    loop = make_loop(SqlConfigSource(engine), cache, clock, observer, overlap_s=5.0)
    await loop.run_first_full()
    # Stamped before the refresh above, committed after it.
    add(engine, "late", T0 - timedelta(seconds=3))
    add(engine, "too-late", T0 - timedelta(seconds=10))

    await loop.refresh_incremental()

    assert cached_ids(cache) == ["c1", "late"]
    assert loop.watermark == T0


async def test_late_commit_beyond_overlap_found_by_full(
    engine: sa.Engine, clock: FakeClock, observer: RecordingObserver
) -> None:
    add(engine, "c1", T0)
    cache = ConfigCache()
    loop = make_loop(SqlConfigSource(engine), cache, clock, observer, overlap_s=5.0)
    await loop.run_first_full()
    add(engine, "too-late", T0 - timedelta(seconds=10))

    await loop.refresh_incremental()
    after_incremental = cached_ids(cache)
    await loop.refresh_full()

    assert after_incremental == ["c1"]
    assert cached_ids(cache) == ["c1", "too-late"]


async def test_shared_updated_at_across_pages_found(
    engine: sa.Engine, clock: FakeClock, observer: RecordingObserver
) -> None:
    add(engine, "a", T0)
    add(engine, "b", T0)
    cache = ConfigCache()
    source = CountingSource(SqlConfigSource(engine, page_size=2))
    loop = make_loop(source, cache, clock, observer, overlap_s=0.0, page_size=2)
    await loop.run_first_full()
    for config_id in ("c", "d", "e"):
        add(engine, config_id, T0)

    await loop.refresh_incremental()

    assert cached_ids(cache) == ["a", "b", "c", "d", "e"]
    assert source.page_requests == [(T0, None), (T0, "b"), (T0, "d")]
    assert observer.calls[-1][:3] == ("incremental", "success", 5)


@pytest.mark.parametrize("flag", ["is_active", "auto_execute"])
async def test_incremental_evicts_switched_off_config(
    engine: sa.Engine, clock: FakeClock, observer: RecordingObserver, flag: str
) -> None:
    add(engine, "c1", T0)
    add(engine, "c2", T0)
    cache = ConfigCache()
    loop = make_loop(SqlConfigSource(engine), cache, clock, observer)
    await loop.run_first_full()

    update_config(engine, "c1", now=T0 + timedelta(seconds=1), **{flag: False})
    await loop.refresh_incremental()

    assert cached_ids(cache) == ["c2"]
    assert loop.watermark == T0 + timedelta(seconds=1)


async def test_delete_disappears_only_at_full(
    engine: sa.Engine, clock: FakeClock, observer: RecordingObserver
) -> None:
    add(engine, "c1", T0)
    add(engine, "c2", T0)
    cache = ConfigCache()
    loop = make_loop(SqlConfigSource(engine), cache, clock, observer)
    await loop.run_first_full()

    delete_config(engine, "c1")
    await loop.refresh_incremental()
    after_incremental = cached_ids(cache)
    await loop.refresh_full()

    assert after_incremental == ["c1", "c2"]
    assert cached_ids(cache) == ["c2"]


async def test_cadence_follows_clock(
    running: tuple[RefreshLoop, ConfigCache], clock: FakeClock, observer: RecordingObserver
) -> None:
    observer.calls.clear()

    for _ in range(8):
        await tick(clock, 5.0)

    schedule = [(kind, at) for kind, _, _, at in observer.calls]
    assert schedule == [
        ("incremental", 5.0),
        ("incremental", 10.0),
        ("incremental", 15.0),
        ("full", 20.0),
        ("incremental", 25.0),
        ("incremental", 30.0),
        ("incremental", 35.0),
        ("full", 40.0),
    ]


async def test_no_refresh_before_interval(
    running: tuple[RefreshLoop, ConfigCache], clock: FakeClock, observer: RecordingObserver
) -> None:
    observer.calls.clear()

    await clock.advance(4.999)

    assert observer.calls == []
    assert clock.sleepers == 1


async def test_failed_refresh_keeps_cache_and_retries(
    running: tuple[RefreshLoop, ConfigCache],
    engine: sa.Engine,
    clock: FakeClock,
    observer: RecordingObserver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, cache = running
    add(engine, "c1", T0)
    await tick(clock, 5.0)
    assert cached_ids(cache) == ["c1"]

    with engine.begin() as conn:
        conn.exec_driver_sql('ALTER TABLE "CopyTradingConfig" RENAME TO "Moved"')
    await tick(clock, 5.0)
    failed = observer.calls[-1]
    cached_after_failure = cached_ids(cache)

    with engine.begin() as conn:
        conn.exec_driver_sql('ALTER TABLE "Moved" RENAME TO "CopyTradingConfig"')
    add(engine, "c2", T0 + timedelta(seconds=1))
    await tick(clock, 5.0)

    assert failed[:3] == ("incremental", "error", 0)
    assert cached_after_failure == ["c1"]
    assert "Refresh (incremental) failed" in caplog.text
    assert observer.calls[-1][:3] == ("incremental", "success", 2)
    assert cached_ids(cache) == ["c1", "c2"]


async def test_refresh_logs_kind_and_details(
    running: tuple[RefreshLoop, ConfigCache],
    engine: sa.Engine,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    add(engine, "c1", T0)
    caplog.set_level("INFO", logger="supervisor.refresh")

    await tick(clock, 5.0)
    for _ in range(3):
        await tick(clock, 5.0)

    messages = [r.getMessage() for r in caplog.records if r.name == "supervisor.refresh"]
    incremental = [m for m in messages if m.startswith("Refreshed (incremental): ")]
    full = [m for m in messages if m.startswith("Refreshed (full): ")]
    assert len(incremental) == 3
    assert len(full) == 1
    assert "rows=1 configs=1" in incremental[0]
    assert "watermark=2026-02-06T12:00:00" in incremental[0]


async def test_run_forever_retries_full_until_ready(
    tmp_path: Path, clock: FakeClock, observer: RecordingObserver
) -> None:
    engine = create_engine_from_url(f"sqlite:///{tmp_path / 'late.db'}")
    cache = ConfigCache()
    loop = make_loop(SqlConfigSource(engine), cache, clock, observer)
    task = asyncio.create_task(loop.run_forever())
    await asyncio.wait_for(clock.wait_for_sleepers(1), SETTLE_TIMEOUT_S)

    await tick(clock, 5.0)
    first = observer.calls[-1]
    Base.metadata.create_all(engine)
    add(engine, "c1", T0)
    await tick(clock, 5.0)

    assert first[:2] == ("full", "error")
    assert observer.calls[-1][:3] == ("full", "success", 1)
    assert loop.ready
    assert cached_ids(cache) == ["c1"]
    await loop.stop()
    await task


async def test_stop_ends_run_forever(
    engine: sa.Engine, clock: FakeClock, observer: RecordingObserver
) -> None:
    loop = make_loop(SqlConfigSource(engine), ConfigCache(), clock, observer)
    await loop.run_first_full()
    task = asyncio.create_task(loop.run_forever())
    await asyncio.wait_for(clock.wait_for_sleepers(1), SETTLE_TIMEOUT_S)

    await asyncio.wait_for(loop.stop(), SETTLE_TIMEOUT_S)

    assert task.done()
    assert task.exception() is None
    assert clock.sleepers == 0


@pytest.mark.parametrize(
    ("scheduled_s", "now_s", "expected_s"),
    [(5.0, 5.0, 10.0), (5.0, 7.0, 10.0), (5.0, 12.5, 15.0), (5.0, 15.0, 20.0)],
)
def test_next_tick_skips_missed(scheduled_s: float, now_s: float, expected_s: float) -> None:
    assert _next_tick(scheduled_s, 5.0, now_s) == expected_s


def test_build_refresh_loop_uses_settings(tmp_path: Path) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'x.db'}",
        config_refresh_ms=250,
        config_full_refresh_ms=4000,
        config_refresh_overlap_ms=1500,
        config_refresh_page_size=7,
    )

    loop = build_refresh_loop(settings, ConfigCache(), None, FakeClock())

    assert loop._refresh_interval_s == 0.25
    assert loop._full_refresh_interval_s == 4.0
    assert loop._overlap == timedelta(seconds=1.5)
    assert loop._page_size == 7


async def test_fake_clock_wakes_sleepers_in_deadline_order(clock: FakeClock) -> None:
    woken: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woken.append((name, clock.monotonic()))

    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in (("late", 3.0), ("early", 1.0))]
    await clock.wait_for_sleepers(2)

    await clock.advance(2.0)
    after_two = list(woken)
    await clock.advance(2.0)
    await asyncio.gather(*tasks)

    assert after_two == [("early", 1.0)]
    assert woken == [("early", 1.0), ("late", 3.0)]
    assert clock.monotonic() == 4.0
    assert clock.time() == 1.7e9 + 4.0
