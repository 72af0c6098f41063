"""Config cache: the in-memory copy of the configs that the worker pool fans events out to.

The cache maps a channel to a tuple of `CachedConfig`, holding only configs that are active
(`isActive`) and auto-executing (`autoExecute`). Workers read it on every event, so a read is
one dict lookup that returns an immutable tuple. Updates build new tuples and swap them in, so
a reader never sees a half-updated channel. Only the refresh loop writes to the cache, and it does
so on the event loop thread.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, NamedTuple

logger = logging.getLogger(__name__)

SizingMode = Literal["fixed", "multiplier"]
SIZING_MODES: tuple[SizingMode, ...] = ("fixed", "multiplier")


@dataclass(frozen=True, slots=True)
class ConfigRow:
    """One `"CopyTradingConfig"` row as read from the database, whatever its flags."""

    id: str
    user_id: str
    channel: str
    is_active: bool
    auto_execute: bool
    sizing_mode: str
    fixed_quantity: float | None
    multiplier: float | None
    max_quantity: float | None
    updated_at: datetime


class InvalidConfigRowError(ValueError):
    """A row's sizing fields cannot size a copy trade."""


@dataclass(frozen=True, slots=True)
class CachedConfig:
    """An active, auto-executing config, reduced to what fan-out needs."""

    id: str
    user_id: str
    channel: str
    sizing_mode: SizingMode
    fixed_quantity: float | None
    multiplier: float | None
    max_quantity: float | None

    def quantity_for(self, event_quantity: float) -> float:
        """Return the copy trade's quantity for an event of `event_quantity`.

        `fixed` mode trades `fixed_quantity`; `multiplier` mode trades the event quantity times
        `multiplier` (1.0 when unset). `max_quantity`, when set, caps either.
        """
        if self.sizing_mode == "fixed" and self.fixed_quantity is not None:
            quantity = self.fixed_quantity
        else:
            quantity = event_quantity * (1.0 if self.multiplier is None else self.multiplier)
        if self.max_quantity is not None:
            quantity = min(quantity, self.max_quantity)
        return quantity

    @classmethod
    def from_row(cls, row: ConfigRow) -> CachedConfig:
        """Build the cached form of `row`; raise `InvalidConfigRowError` if it cannot size."""
        if row.sizing_mode == "fixed":
            if row.fixed_quantity is None or row.fixed_quantity <= 0:
                raise InvalidConfigRowError(
                    f"config {row.id} has sizingMode 'fixed' but fixedQuantity="
                    f"{row.fixed_quantity}; set a positive fixedQuantity"
                )
            mode: SizingMode = "fixed"
        elif row.sizing_mode == "multiplier":
            if row.multiplier is not None and row.multiplier <= 0:
                raise InvalidConfigRowError(
                    f"config {row.id} has multiplier={row.multiplier}; set a positive multiplier"
                )
            mode = "multiplier"
        else:
            raise InvalidConfigRowError(
                f"config {row.id} has sizingMode {row.sizing_mode!r}; expected one of "
                f"{', '.join(SIZING_MODES)}"
            )
        return cls(
            id=row.id,
            user_id=row.user_id,
            channel=row.channel,
            sizing_mode=mode,
            fixed_quantity=row.fixed_quantity,
            multiplier=row.multiplier,
            max_quantity=row.max_quantity,
        )


class CacheUpdate(NamedTuple):
    """How many configs one update put into the cache and how many it removed."""

    upserted: int
    evicted: int


_EMPTY: tuple[CachedConfig, ...] = ()


class ConfigCache:
    """Channel to active, auto-executing configs, ordered by config id within a channel."""

    def __init__(self) -> None:
        self._by_channel: dict[str, tuple[CachedConfig, ...]] = {}
        self._by_id: dict[str, CachedConfig] = {}
        self._members: dict[str, dict[str, CachedConfig]] = {}
        self._warned_ids: set[str] = set()

    def configs_for(self, channel: str) -> Sequence[CachedConfig]:
        """Return the configs that copy events of `channel` (an empty tuple when none do)."""
        return self._by_channel.get(channel, _EMPTY)

    @property
    def size(self) -> int:
        """Number of cached configs over all channels."""
        return len(self._by_id)

    @property
    def channels(self) -> int:
        """Number of channels with at least one cached config."""
        return len(self._by_channel)

    def get(self, config_id: str) -> CachedConfig | None:
        """Return the cached config with `config_id`, or None when it is not cached."""
        return self._by_id.get(config_id)

    def apply_changes(self, rows: Iterable[ConfigRow]) -> CacheUpdate:
        """Upsert active, auto-executing rows and evict every other row; later rows win."""
        touched_channels: set[str] = set()
        upserted = 0
        evicted = 0
        for row in rows:
            previous = self._by_id.pop(row.id, None)
            if previous is not None:
                self._members[previous.channel].pop(row.id, None)
                touched_channels.add(previous.channel)
            config = self._cacheable(row)
            if config is None:
                evicted += previous is not None
                continue
            self._by_id[row.id] = config
            self._members.setdefault(config.channel, {})[row.id] = config
            touched_channels.add(config.channel)
            upserted += 1

        for channel in touched_channels:
            self._rebuild_channel(channel)
        return CacheUpdate(upserted, evicted)

    def replace_all(self, rows: Iterable[ConfigRow]) -> CacheUpdate:
        """Swap in a cache built from `rows` alone, so configs missing from them disappear."""
        by_id: dict[str, CachedConfig] = {}
        for row in rows:
            config = self._cacheable(row)
            if config is not None:
                by_id[row.id] = config
            else:
                by_id.pop(row.id, None)

        members: dict[str, dict[str, CachedConfig]] = {}
        for config in by_id.values():
            members.setdefault(config.channel, {})[config.id] = config
        by_channel = {channel: _sorted_tuple(group) for channel, group in members.items()}

        evicted = sum(1 for config_id in self._by_id if config_id not in by_id)
        self._by_id = by_id
        self._members = members
        self._by_channel = by_channel
        return CacheUpdate(len(by_id), evicted)

    def _cacheable(self, row: ConfigRow) -> CachedConfig | None:
        if not (row.is_active and row.auto_execute):
            return None
        try:
            return CachedConfig.from_row(row)
        except InvalidConfigRowError as error:
            # Logged once per config id, because every full refresh meets the row again.
            if row.id not in self._warned_ids:
                self._warned_ids.add(row.id)
                logger.warning("Config %s left out of the cache: %s", row.id, error)
            return None

    def _rebuild_channel(self, channel: str) -> None:
        group = self._members.get(channel)
        if group:
            self._by_channel[channel] = _sorted_tuple(group)
        else:
            self._members.pop(channel, None)
            self._by_channel.pop(channel, None)


def _sorted_tuple(group: dict[str, CachedConfig]) -> tuple[CachedConfig, ...]:
    return tuple(group[config_id] for config_id in sorted(group))
