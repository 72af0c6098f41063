"""Database helper tests on SQLite: URL handling, timestamps, and the config writers."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from supervisor.db import (
    Base,
    ConfigNotFoundError,
    DatabaseUrlError,
    InvalidConfigError,
    add_config,
    create_engine_from_url,
    delete_config,
    disable_config,
    get_config,
    list_configs,
    normalize_database_url,
    seed_configs,
    update_config,
    utc_now_ms,
    zipf_channel_counts,
)

T0 = datetime(2026, 2, 6, 12, 0, 0)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = create_engine_from_url(f"sqlite:///{tmp_path / 'db.db'}")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u@127.0.0.1/db", "postgresql+psycopg://u@127.0.0.1/db"),
        ("postgres://u@127.0.0.1/db", "postgresql+psycopg://u@127.0.0.1/db"),
        ("postgresql+psycopg://u@127.0.0.1/db", "postgresql+psycopg://u@127.0.0.1/db"),
        ("sqlite:///x.db", "sqlite:///x.db"),
    ],
)
def test_normalize_database_url(url: str, expected: str) -> None:
    assert normalize_database_url(url) == expected


@pytest.mark.parametrize("url", ["mysql://u:pw@127.0.0.1/db", "postgresql+asyncpg://u:pw@h/db"])
def test_unsupported_scheme_rejected_masked(url: str) -> None:
    with pytest.raises(DatabaseUrlError) as error_info:
        create_engine_from_url(url)

    assert "not supported" in str(error_info.value)
    assert ":pw@" not in str(error_info.value)


def test_postgres_engine_uses_psycopg3() -> None:
    engine = create_engine_from_url("postgresql://u@127.0.0.1:5432/db")

    assert engine.dialect.driver == "psycopg"
    assert engine.pool.size() == 5  # type: ignore[attr-defined]
    engine.dispose()


def test_sqlite_engine_uses_wal(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar_one()

    assert mode == "wal"


def test_utc_now_ms_truncates_to_milliseconds() -> None:
    moment = utc_now_ms(1_770_379_923.123_987)

    assert moment == datetime(2026, 2, 6, 12, 12, 3, 123000)
    assert moment.tzinfo is None


def test_add_sets_created_and_updated_equal(engine: sa.Engine) -> None:
    config_id = add_config(engine, channel="alpha", user_id="u1", now=T0)

    with engine.connect() as conn:
        created, updated = conn.execute(
            sa.text('SELECT "createdAt", "updatedAt" FROM "CopyTradingConfig" WHERE id = :id'),
            {"id": config_id},
        ).one()
    assert created == updated
    assert get_config(engine, config_id).updated_at == T0


def test_add_default_stamp_from_app_clock(engine: sa.Engine) -> None:
    before = utc_now_ms()

    config_id = add_config(engine, channel="alpha", user_id="u1")

    stamp = get_config(engine, config_id).updated_at
    assert before <= stamp <= utc_now_ms()
    assert stamp.microsecond % 1000 == 0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"sizing_mode": "fixed", "fixed_quantity": None}, "positive fixed quantity"),
        ({"sizing_mode": "percent"}, "sizing mode 'percent' is invalid"),
        ({"multiplier": -2.0}, "multiplier must be positive"),
        ({"max_quantity": 0.0}, "max quantity must be positive"),
        ({"channel": ""}, "channel must not be empty"),
    ],
)
def test_add_rejects_invalid_fields(
    engine: sa.Engine, fields: dict[str, object], message: str
) -> None:
    arguments: dict[str, object] = {"channel": "alpha", "user_id": "u1", **fields}

    with pytest.raises(InvalidConfigError, match=message):
        add_config(engine, **arguments)  # type: ignore[arg-type]

    assert list_configs(engine) == []


def test_update_sets_updated_at(engine: sa.Engine) -> None:
    config_id = add_config(engine, channel="alpha", user_id="u1", now=T0)
    later = datetime(2026, 2, 6, 12, 0, 1, 500000)

    row = update_config(engine, config_id, now=later, multiplier=3.0)

    assert row.updated_at == later
    assert row.multiplier == 3.0


def test_update_validates_merged_sizing(engine: sa.Engine) -> None:
    config_id = add_config(engine, channel="alpha", user_id="u1")

    with pytest.raises(InvalidConfigError, match="positive fixed quantity"):
        update_config(engine, config_id, sizing_mode="fixed")

    assert get_config(engine, config_id).sizing_mode == "multiplier"


def test_update_rejects_unknown_field(engine: sa.Engine) -> None:
    config_id = add_config(engine, channel="alpha", user_id="u1")

    with pytest.raises(InvalidConfigError, match="cannot update created_at"):
        update_config(engine, config_id, created_at=T0)


def test_disable_sets_inactive_and_stamp(engine: sa.Engine) -> None:
    config_id = add_config(engine, channel="alpha", user_id="u1", now=T0)
    later = datetime(2026, 2, 6, 12, 0, 2)

    row = disable_config(engine, config_id, now=later)

    assert not row.is_active
    assert row.updated_at == later


@pytest.mark.parametrize(
    "call",
    [
        lambda e: update_config(e, "nope", multiplier=2.0),
        lambda e: disable_config(e, "nope"),
        lambda e: delete_config(e, "nope"),
        lambda e: get_config(e, "nope"),
    ],
)
def test_missing_id_raises_not_found(engine: sa.Engine, call: object) -> None:
    with pytest.raises(ConfigNotFoundError, match="config nope not found"):
        call(engine)  # type: ignore[operator]


def test_list_orders_by_channel_then_id(engine: sa.Engine) -> None:
    for config_id, channel in (("c2", "beta"), ("c3", "alpha"), ("c1", "alpha")):
        add_config(engine, channel=channel, user_id="u", config_id=config_id)

    rows = list_configs(engine)

    assert [(row.channel, row.id) for row in rows] == [
        ("alpha", "c1"),
        ("alpha", "c3"),
        ("beta", "c2"),
    ]
    assert [row.id for row in list_configs(engine, channel="beta")] == ["c2"]


def test_seed_matches_counts(engine: sa.Engine) -> None:
    summary = seed_configs(engine, 2500, 40, 1.2, 5, channel_prefix="s-")

    rows = list_configs(engine)
    expected = zipf_channel_counts(2500, 40, 1.2, random.Random(5))
    assert len(rows) == 2500
    assert summary.per_channel == {f"s-{i}": n for i, n in enumerate(expected)}
    assert len({row.id for row in rows}) == 2500


def test_zipf_fewer_configs_than_channels() -> None:
    counts = zipf_channel_counts(3, 10, 1.1, random.Random(1))

    assert sum(counts) == 3
    assert len(counts) == 10


def test_zipf_zero_exponent_is_near_uniform() -> None:
    counts = zipf_channel_counts(10_000, 4, 0.0, random.Random(2))

    assert all(2200 < count < 2800 for count in counts)
