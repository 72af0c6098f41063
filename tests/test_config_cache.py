"""Unit tests of the config cache: what it keeps, evicts and swaps, and trade sizing."""

from __future__ import annotations

from datetime import datetime

import pytest

from supervisor.config_cache import CachedConfig, ConfigCache, ConfigRow, InvalidConfigRowError

STAMP = datetime(2026, 2, 6, 11, 12, 3, 123000)


def make_row(config_id: str, channel: str = "alpha", **overrides: object) -> ConfigRow:
    fields: dict[str, object] = {
        "id": config_id,
        "user_id": f"user-{config_id}",
        "channel": channel,
        "is_active": True,
        "auto_execute": True,
        "sizing_mode": "multiplier",
        "fixed_quantity": None,
        "multiplier": 1.0,
        "max_quantity": None,
        "updated_at": STAMP,
    }
    fields.update(overrides)
    return ConfigRow(**fields)  # type: ignore[arg-type]


def ids(configs: object) -> list[str]:
    return [config.id for config in configs]  # type: ignore[attr-defined]


def test_apply_changes_keeps_only_active_auto_executing() -> None:
    cache = ConfigCache()

    update = cache.apply_changes(
        [
            make_row("c1"),
            make_row("c2", is_active=False),
            make_row("c3", auto_execute=False),
            make_row("c4", channel="beta"),
        ]
    )

    assert ids(cache.configs_for("alpha")) == ["c1"]
    assert ids(cache.configs_for("beta")) == ["c4"]
    assert cache.size == 2
    assert update.upserted == 2
    assert update.evicted == 0


def test_configs_for_unknown_channel_is_empty_tuple() -> None:
    cache = ConfigCache()

    assert cache.configs_for("nobody") == ()


def test_configs_within_channel_sorted_by_id() -> None:
    cache = ConfigCache()

    cache.apply_changes([make_row("c3"), make_row("c1"), make_row("c2")])

    configs = cache.configs_for("alpha")
    assert isinstance(configs, tuple)
    assert ids(configs) == ["c1", "c2", "c3"]


@pytest.mark.parametrize("flag", ["is_active", "auto_execute"])
def test_apply_changes_evicts_row_turned_off(flag: str) -> None:
    cache = ConfigCache()
    cache.apply_changes([make_row("c1"), make_row("c2")])

    update = cache.apply_changes([make_row("c1", **{flag: False})])

    assert ids(cache.configs_for("alpha")) == ["c2"]
    assert cache.get("c1") is None
    assert update.evicted == 1


def test_apply_changes_moves_config_between_channels() -> None:
    cache = ConfigCache()
    cache.apply_changes([make_row("c1", channel="alpha")])

    cache.apply_changes([make_row("c1", channel="beta")])

    assert cache.configs_for("alpha") == ()
    assert ids(cache.configs_for("beta")) == ["c1"]
    assert cache.channels == 1
    assert cache.size == 1


def test_apply_changes_later_row_wins() -> None:
    cache = ConfigCache()

    cache.apply_changes([make_row("c1", multiplier=2.0), make_row("c1", multiplier=3.0)])

    config = cache.get("c1")
    assert config is not None
    assert config.multiplier == 3.0


def test_reader_tuple_unchanged_by_later_update() -> None:
    cache = ConfigCache()
    cache.apply_changes([make_row("c1")])
    held = cache.configs_for("alpha")

    cache.apply_changes([make_row("c2")])

    assert ids(held) == ["c1"]
    assert ids(cache.configs_for("alpha")) == ["c1", "c2"]


def test_replace_all_drops_missing_rows() -> None:
    cache = ConfigCache()
    cache.apply_changes([make_row("c1"), make_row("c2"), make_row("c3", channel="beta")])

    update = cache.replace_all([make_row("c2")])

    assert ids(cache.configs_for("alpha")) == ["c2"]
    assert cache.configs_for("beta") == ()
    assert cache.size == 1
    assert update.evicted == 2


def test_replace_all_skips_inactive_rows() -> None:
    cache = ConfigCache()

    cache.replace_all([make_row("c1"), make_row("c2", is_active=False)])

    assert ids(cache.configs_for("alpha")) == ["c1"]


def test_invalid_sizing_row_left_out_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    cache = ConfigCache()
    bad = make_row("c1", sizing_mode="fixed", fixed_quantity=None)

    cache.replace_all([bad, make_row("c2")])
    cache.replace_all([bad, make_row("c2")])

    assert ids(cache.configs_for("alpha")) == ["c2"]
    warnings = [r for r in caplog.records if "c1" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.parametrize(
    ("overrides", "event_quantity", "expected"),
    [
        ({"sizing_mode": "multiplier", "multiplier": 2.5}, 2.0, 5.0),
        ({"sizing_mode": "multiplier", "multiplier": None}, 2.0, 2.0),
        ({"sizing_mode": "multiplier", "multiplier": 4.0, "max_quantity": 3.0}, 2.0, 3.0),
        ({"sizing_mode": "fixed", "fixed_quantity": 0.1}, 7.0, 0.1),
        ({"sizing_mode": "fixed", "fixed_quantity": 5.0, "max_quantity": 2.0}, 7.0, 2.0),
    ],
)
def test_quantity_for(overrides: dict[str, object], event_quantity: float, expected: float) -> None:
    config = CachedConfig.from_row(make_row("c1", **overrides))

    assert config.quantity_for(event_quantity) == pytest.approx(expected)


@pytest.mark.parametrize(
    "overrides",
    [
        {"sizing_mode": "fixed", "fixed_quantity": None},
        {"sizing_mode": "fixed", "fixed_quantity": 0.0},
        {"sizing_mode": "multiplier", "multiplier": -1.0},
        {"sizing_mode": "percent"},
    ],
)
def test_from_row_rejects_unusable_sizing(overrides: dict[str, object]) -> None:
    with pytest.raises(InvalidConfigRowError, match="c1"):
        CachedConfig.from_row(make_row("c1", **overrides))
