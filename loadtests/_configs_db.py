"""Channels and configs of the run, read from the config database through `supervisor.db`.

Channels are ranked by their number of active, auto-executing configs (most followed first,
ties by name), so the Zipf rank of a channel follows its popularity as `supervisor configs seed`
created it. Without a reachable database the channels come from `--channels` or
`--channel-count`.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

CONFIGS_COLUMNS = ("id", "channel", "isActive", "autoExecute")


class ChannelSourceError(ValueError):
    """No channel list could be built; the message says which option to set."""


@dataclass(frozen=True)
class ConfigSummary:
    """The columns of one config that the analysis needs for the fan-out per channel."""

    id: str
    channel: str
    is_active: bool
    auto_execute: bool


def database_url(option_value: str) -> str:
    """Return the option's URL, else `SUPERVISOR_DATABASE_URL`, else the supervisor's default."""
    if option_value.strip():
        return option_value.strip()
    from_env = os.environ.get("SUPERVISOR_DATABASE_URL", "").strip()
    if from_env:
        return from_env
    from supervisor.settings import default_database_url

    return str(default_database_url())


def read_configs(url: str) -> list[ConfigSummary] | None:
    """Return every config in the database, or None when it or its table is unreachable."""
    import sqlalchemy as sa

    from supervisor import db
    from supervisor.settings import mask_url

    try:
        engine = db.create_engine_from_url(url)
    except (db.DatabaseError, sa.exc.SQLAlchemyError) as error:
        logger.warning("Config database %s is unusable: %s", mask_url(url), error)
        return None
    try:
        if not db.table_exists(engine):
            logger.warning("Config database %s has no configs table", mask_url(url))
            return None
        rows = db.list_configs(engine)
    except sa.exc.SQLAlchemyError as error:
        logger.warning("Reading configs from %s failed: %s", mask_url(url), error)
        return None
    finally:
        engine.dispose()
    return [ConfigSummary(row.id, row.channel, row.is_active, row.auto_execute) for row in rows]


def channels_by_popularity(configs: list[ConfigSummary]) -> list[str]:
    counts = Counter(c.channel for c in configs if c.is_active and c.auto_execute)
    return sorted(counts, key=lambda channel: (-counts[channel], channel))


def explicit_channels(channels: str, channel_count: int, channel_prefix: str) -> list[str] | None:
    """Return the channels given by `--channels` or `--channel-count`, or None for neither."""
    if channels.strip():
        return [part.strip() for part in channels.split(",") if part.strip()]
    if channel_count < 0:
        raise ChannelSourceError(f"--channel-count={channel_count} is invalid: set 1 or more")
    if channel_count > 0:
        return [f"{channel_prefix}{index}" for index in range(channel_count)]
    return None


def resolve_channels(
    channels: str, channel_count: int, channel_prefix: str, configs: list[ConfigSummary] | None
) -> list[str]:
    """Return the channels to send to: the options first, else the database's channels."""
    given = explicit_channels(channels, channel_count, channel_prefix)
    if given:
        return given
    from_database = channels_by_popularity(configs or [])
    if not from_database:
        raise ChannelSourceError(
            "no channels to send to: the config database has no active auto-executing configs "
            "(run `supervisor configs seed`), or pass --channels or --channel-count"
        )
    return from_database


def write_configs_csv(path: Path, configs: list[ConfigSummary]) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(CONFIGS_COLUMNS)
        for config in configs:
            writer.writerow([config.id, config.channel, config.is_active, config.auto_execute])
