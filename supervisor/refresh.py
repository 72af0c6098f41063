"""Config refresh: keeps the `ConfigCache` in step with the `"CopyTradingConfig"` table.

Two kinds of refresh run on the monotonic clock:

- incremental, every `refresh_interval_s`: reads the rows whose `"updatedAt"` is at or after
  `watermark - overlap`, keyset-paged on (`"updatedAt"`, `"id"`), and applies them to the cache,
  which upserts active, auto-executing rows and evicts the others;
- full, every `full_refresh_interval_s`: reads every active, auto-executing row in one snapshot
  and swaps in a cache built from them alone, so deleted rows disappear.

The watermark is the largest `"updatedAt"` read from row values, never a clock reading, so a
reader's clock skew cannot skip rows. The `>=` bound plus the (`"updatedAt"`, `"id"`) keyset
returns every row sharing the watermark's timestamp, even across a page boundary. The overlap
catches a transaction that stamped `"updatedAt"` before the last refresh but committed after
it, as long as it committed within `overlap_s` of its stamp. A refresh that fails leaves the
cache as it was, reports an error and is retried at the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal, Protocol

from supervisor.clock import Clock, SystemClock
from supervisor.config_cache import ConfigCache, ConfigRow

if TYPE_CHECKING:
    import sqlalchemy as sa

    from supervisor.settings import Settings

logger = logging.getLogger(__name__)

RefreshKind = Literal["incremental", "full"]
RefreshResult = Literal["success", "error"]


class ConfigSourceError(Exception):
    """Reading configs from the database failed; the cache keeps its last good contents."""


@dataclass(frozen=True)
class ConfigSnapshot:
    """Every active, auto-executing row, and the table's largest `"updatedAt"` (None if empty)."""

    rows: Sequence[ConfigRow]
    max_updated_at: datetime | None


class ConfigSource(Protocol):
    """The source the refresh loop reads configs from."""

    async def fetch_changed_since(
        self, since: datetime | None, after_id: str | None, limit: int
    ) -> Sequence[ConfigRow]:
        """Return up to `limit` rows, whatever their flags, ordered by (`updatedAt`, `id`).

        With `after_id` None, the rows have `updatedAt >= since`, or are every row when `since`
        is None. Otherwise they are the rows after (`since`, `after_id`) in that order, which
        is how a page continues from the last row of the previous one.
        """
        ...

    async def fetch_all(self) -> ConfigSnapshot:
        """Return every active, auto-executing row as of one consistent snapshot."""
        ...

    async def close(self) -> None:
        """Release the source's connections."""
        ...


class RefreshObserver(Protocol):
    """Receives one call per refresh attempt; the metrics module implements it."""

    def on_refresh(
        self,
        kind: RefreshKind,
        result: RefreshResult,
        rows: int,
        duration_s: float,
        finished_unix_s: float,
    ) -> None: ...


class SqlConfigSource:
    """A `ConfigSource` over a synchronous SQLAlchemy engine, run in a worker thread."""

    def __init__(self, engine: sa.Engine, *, page_size: int = 1000) -> None:
        self._engine = engine
        self._page_size = page_size

    async def fetch_changed_since(
        self, since: datetime | None, after_id: str | None, limit: int
    ) -> Sequence[ConfigRow]:
        return await asyncio.to_thread(self._fetch_changed_since, since, after_id, limit)

    async def fetch_all(self) -> ConfigSnapshot:
        return await asyncio.to_thread(self._fetch_all)

    async def close(self) -> None:
        await asyncio.to_thread(self._engine.dispose)

    def _fetch_changed_since(
        self, since: datetime | None, after_id: str | None, limit: int
    ) -> list[ConfigRow]:
        import sqlalchemy as sa

        from supervisor.db import CONFIG_ROW_COLUMNS, CopyTradingConfig, rows_from_result

        table = CopyTradingConfig
        query = sa.select(*CONFIG_ROW_COLUMNS)
        if since is not None and after_id is None:
            query = query.where(table.updated_at >= since)
        elif since is not None:
            query = query.where(sa.tuple_(table.updated_at, table.id) > sa.tuple_(since, after_id))
        query = query.order_by(table.updated_at, table.id).limit(limit)
        try:
            with self._engine.connect() as conn:
                return rows_from_result(conn.execute(query))
        except sa.exc.SQLAlchemyError as error:
            raise ConfigSourceError(f"incremental config query failed: {error}") from error

    def _fetch_all(self) -> ConfigSnapshot:
        import sqlalchemy as sa

        try:
            with self._engine.connect() as conn:
                if conn.dialect.name == "postgresql":
                    # One snapshot for every page and the max, so the watermark matches the rows.
                    conn = conn.execution_options(isolation_level="REPEATABLE READ")
                # NOTE: pysqlite starts no transaction for a SELECT, so on SQLite the pages
                # are separate reads. The next incremental refresh catches a row changed
                # between them, because its new "updatedAt" is past the watermark.
                with conn.begin():
                    return self._read_snapshot(conn)
        except sa.exc.SQLAlchemyError as error:
            raise ConfigSourceError(f"full config query failed: {error}") from error

    def _read_snapshot(self, conn: sa.Connection) -> ConfigSnapshot:
        import sqlalchemy as sa

        from supervisor.db import CONFIG_ROW_COLUMNS, CopyTradingConfig, rows_from_result

        table = CopyTradingConfig
        max_updated_at = conn.execute(sa.select(sa.func.max(table.updated_at))).scalar_one()
        rows: list[ConfigRow] = []
        last_id: str | None = None
        while True:
            query = sa.select(*CONFIG_ROW_COLUMNS).where(table.is_active, table.auto_execute)
            if last_id is not None:
                query = query.where(table.id > last_id)
            page = rows_from_result(conn.execute(query.order_by(table.id).limit(self._page_size)))
            rows.extend(page)
            if len(page) < self._page_size:
                return ConfigSnapshot(rows, max_updated_at)
            last_id = page[-1].id


class RefreshLoop:
    """Runs incremental and full refreshes of one `ConfigCache` on a clock's schedule."""

    def __init__(
        self,
        source: ConfigSource,
        cache: ConfigCache,
        *,
        refresh_interval_s: float,
        full_refresh_interval_s: float,
        overlap_s: float,
        page_size: int,
        clock: Clock,
        observer: RefreshObserver | None = None,
    ) -> None:
        if refresh_interval_s <= 0 or full_refresh_interval_s <= 0:
            raise ValueError(
                f"refresh intervals must be positive, got refresh_interval_s="
                f"{refresh_interval_s} and full_refresh_interval_s={full_refresh_interval_s}"
            )
        if overlap_s < 0 or page_size < 1:
            raise ValueError(
                f"overlap_s must be 0 or more and page_size at least 1, got overlap_s="
                f"{overlap_s} and page_size={page_size}"
            )
        self._source = source
        self._cache = cache
        self._refresh_interval_s = refresh_interval_s
        self._full_refresh_interval_s = full_refresh_interval_s
        self._overlap = timedelta(seconds=overlap_s)
        self._page_size = page_size
        self._clock = clock
        self._observer = observer
        self._watermark: datetime | None = None
        self._ready = False
        self._stop_requested = asyncio.Event()
        self._running: asyncio.Future[None] | None = None

    @property
    def ready(self) -> bool:
        """True once a full refresh has succeeded."""
        return self._ready

    @property
    def watermark(self) -> datetime | None:
        """The largest `"updatedAt"` read so far, or None before any row was read."""
        return self._watermark

    async def run_first_full(self) -> None:
        """Run the first full refresh; raise `ConfigSourceError` if it fails.

        The instance reports ready only after this returns. A caller that gives up on the error
        may still start `run_forever`, which retries the full refresh at every tick until one
        succeeds.
        """
        await self._refresh("full", raise_errors=True)

    async def refresh_incremental(self) -> bool:
        """Run one incremental refresh now; return whether it succeeded."""
        return await self._refresh("incremental", raise_errors=False)

    async def refresh_full(self) -> bool:
        """Run one full refresh now; return whether it succeeded."""
        return await self._refresh("full", raise_errors=False)

    async def run_forever(self) -> None:
        """Refresh on schedule until `stop` is called.

        Times are taken from the monotonic clock when the loop starts: incremental refreshes
        fall every `refresh_interval_s` and full ones every `full_refresh_interval_s`. When both
        are due, only the full refresh runs, because it covers the incremental one. Ticks missed
        while a slow refresh ran are skipped, not run in a burst.
        """
        self._running = asyncio.get_running_loop().create_future()
        start_s = self._clock.monotonic()
        next_incremental_s = start_s + self._refresh_interval_s
        next_full_s = start_s + self._full_refresh_interval_s
        logger.info(
            "Config refresh loop started: incremental every %.3f s, full every %.3f s",
            self._refresh_interval_s,
            self._full_refresh_interval_s,
        )
        try:
            while not self._stop_requested.is_set():
                due_s = min(next_incremental_s, next_full_s)
                if await self._sleep_until(due_s):
                    break
                now_s = self._clock.monotonic()
                if now_s >= next_full_s or not self._ready:
                    await self.refresh_full()
                    next_full_s = _next_tick(next_full_s, self._full_refresh_interval_s, now_s)
                    next_incremental_s = now_s + self._refresh_interval_s
                else:
                    await self.refresh_incremental()
                    next_incremental_s = _next_tick(
                        next_incremental_s, self._refresh_interval_s, now_s
                    )
        finally:
            self._running.set_result(None)
            logger.info("Config refresh loop stopped")

    async def stop(self) -> None:
        """Stop `run_forever` after the refresh in progress, if any, and close the source."""
        self._stop_requested.set()
        if self._running is not None:
            await asyncio.shield(self._running)
        await self._source.close()

    async def _sleep_until(self, due_s: float) -> bool:
        """Sleep until `due_s` on the monotonic clock; return True if `stop` came first."""
        delay_s = due_s - self._clock.monotonic()
        if delay_s <= 0:
            return self._stop_requested.is_set()
        sleeper = asyncio.ensure_future(self._clock.sleep(delay_s))
        stopper = asyncio.ensure_future(self._stop_requested.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, stopper):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        return self._stop_requested.is_set()

    async def _refresh(self, kind: RefreshKind, *, raise_errors: bool) -> bool:
        started_s = self._clock.monotonic()
        try:
            rows = await (self._run_full() if kind == "full" else self._run_incremental())
        except ConfigSourceError as error:
            duration_s = self._clock.monotonic() - started_s
            self._report(kind, "error", 0, duration_s)
            logger.error(
                "Refresh (%s) failed after %.1f ms; keeping the last good cache of %d configs "
                "and retrying at the next tick: %s",
                kind,
                duration_s * 1000,
                self._cache.size,
                error,
            )
            if raise_errors:
                raise
            return False

        duration_s = self._clock.monotonic() - started_s
        self._report(kind, "success", rows, duration_s)
        logger.info(
            "Refreshed (%s): rows=%d configs=%d channels=%d duration_ms=%.1f watermark=%s",
            kind,
            rows,
            self._cache.size,
            self._cache.channels,
            duration_s * 1000,
            self._watermark.isoformat() if self._watermark else "none",
        )
        return True

    async def _run_incremental(self) -> int:
        since = None if self._watermark is None else self._watermark - self._overlap
        rows = await self._fetch_pages(since)
        self._cache.apply_changes(rows)
        self._advance_watermark(max((row.updated_at for row in rows), default=None))
        return len(rows)

    async def _fetch_pages(self, since: datetime | None) -> list[ConfigRow]:
        # All pages are read before the cache changes, so a failure leaves it untouched.
        rows: list[ConfigRow] = []
        cursor_at, cursor_id = since, None
        while True:
            page = await self._source.fetch_changed_since(cursor_at, cursor_id, self._page_size)
            rows.extend(page)
            if len(page) < self._page_size:
                return rows
            cursor_at, cursor_id = page[-1].updated_at, page[-1].id

    async def _run_full(self) -> int:
        snapshot = await self._source.fetch_all()
        self._cache.replace_all(snapshot.rows)
        self._advance_watermark(snapshot.max_updated_at)
        self._ready = True
        return len(snapshot.rows)

    def _advance_watermark(self, candidate: datetime | None) -> None:
        if candidate is not None and (self._watermark is None or candidate > self._watermark):
            self._watermark = candidate

    def _report(
        self, kind: RefreshKind, result: RefreshResult, rows: int, duration_s: float
    ) -> None:
        if self._observer is not None:
            self._observer.on_refresh(kind, result, rows, duration_s, self._clock.time())


def _next_tick(scheduled_s: float, interval_s: float, now_s: float) -> float:
    """Return the first tick of the `scheduled_s + k * interval_s` grid after `now_s`."""
    next_s = scheduled_s + interval_s
    if next_s <= now_s:
        skipped = int((now_s - next_s) // interval_s) + 1
        next_s += skipped * interval_s
    return next_s


def build_refresh_loop(
    settings: Settings,
    cache: ConfigCache,
    observer: RefreshObserver | None = None,
    clock: Clock | None = None,
) -> RefreshLoop:
    """Build a `RefreshLoop` over `settings.database_url` with the configured cadence."""
    from supervisor.db import create_engine_from_url

    source = SqlConfigSource(
        create_engine_from_url(settings.database_url), page_size=settings.config_refresh_page_size
    )
    return RefreshLoop(
        source,
        cache,
        refresh_interval_s=settings.config_refresh_ms / 1000,
        full_refresh_interval_s=settings.config_full_refresh_ms / 1000,
        overlap_s=settings.config_refresh_overlap_ms / 1000,
        page_size=settings.config_refresh_page_size,
        clock=clock or SystemClock(),
        observer=observer,
    )
