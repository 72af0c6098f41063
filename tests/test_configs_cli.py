"""`supervisor configs` tests through the real command line on a temporary SQLite file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from supervisor import migrate
from supervisor.cli import main as cli_main
from supervisor.db import get_config, list_configs, zipf_channel_counts


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'configs.db'}"
    migrate.upgrade(url)
    return url


def run(database_url: str, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    action, *rest = argv
    code = cli_main(["configs", action, "--database-url", database_url, *rest])
    output = capsys.readouterr()
    return code, output.out, output.err


def engine_for(url: str) -> sa.Engine:
    return sa.create_engine(url)


def test_add_prints_only_id(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(database_url, capsys, "add", "--channel", "alpha", "--user-id", "u1")

    config_id = out.strip()
    assert code == 0
    assert out == config_id + "\n"
    assert config_id.startswith("cfg_")
    assert len(config_id) == len("cfg_") + 32
    row = get_config(engine_for(database_url), config_id)
    assert row.channel == "alpha"
    assert row.user_id == "u1"
    assert row.is_active
    assert row.auto_execute
    assert row.sizing_mode == "multiplier"
    assert row.multiplier == 1.0


def test_add_with_fixed_sizing_and_flags(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        database_url,
        capsys,
        "add",
        "--channel",
        "beta",
        "--fixed-quantity",
        "0.5",
        "--max-quantity",
        "0.4",
        "--inactive",
        "--no-auto-execute",
    )

    row = get_config(engine_for(database_url), out.strip())
    assert code == 0
    assert row.sizing_mode == "fixed"
    assert row.fixed_quantity == 0.5
    assert row.max_quantity == 0.4
    assert not row.is_active
    assert not row.auto_execute


def test_add_rejects_both_sizing_modes(database_url: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(
            ["configs", "add", "--database-url", database_url, "--channel", "a",
             "--multiplier", "2", "--fixed-quantity", "1"]
        )  # fmt: skip

    assert exit_info.value.code == 2


def test_add_rejects_non_positive_multiplier(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(database_url, capsys, "add", "--channel", "a", "--multiplier", "0")

    assert code == 1
    assert "multiplier must be positive, got 0.0" in err


def test_update_changes_fields_and_updated_at(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = run(database_url, capsys, "add", "--channel", "alpha")
    config_id = out.strip()
    before = get_config(engine_for(database_url), config_id)

    code, out, _ = run(
        database_url, capsys, "update", config_id, "--multiplier", "2.5", "--no-auto-execute",
        "--channel", "gamma",
    )  # fmt: skip

    after = get_config(engine_for(database_url), config_id)
    assert code == 0
    assert out.startswith(f"Updated {config_id}")
    assert after.multiplier == 2.5
    assert after.channel == "gamma"
    assert not after.auto_execute
    assert after.is_active
    assert after.updated_at >= before.updated_at


def test_update_without_fields_fails(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = run(database_url, capsys, "add", "--channel", "alpha")

    code, _, err = run(database_url, capsys, "update", out.strip())

    assert code == 1
    assert "nothing to update" in err


def test_disable_sets_inactive(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(database_url, capsys, "add", "--channel", "alpha")
    config_id = out.strip()

    code, out, _ = run(database_url, capsys, "disable", config_id)

    assert code == 0
    assert f"Disabled {config_id}" in out
    assert not get_config(engine_for(database_url), config_id).is_active


def test_delete_removes_row(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(database_url, capsys, "add", "--channel", "alpha")
    config_id = out.strip()

    code, _, _ = run(database_url, capsys, "delete", config_id)

    assert code == 0
    assert list_configs(engine_for(database_url)) == []


@pytest.mark.parametrize(
    "argv",
    [
        ("update", "cfg_missing", "--multiplier", "2"),
        ("disable", "cfg_missing"),
        ("delete", "cfg_missing"),
    ],
)
def test_missing_id_is_error(
    database_url: str, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    code, out, err = run(database_url, capsys, *argv)

    assert code == 1
    assert out == ""
    assert "config cfg_missing not found" in err


def test_seed_spreads_zipf(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        database_url, capsys, "seed", "--configs", "200", "--channels", "10", "--seed", "7"
    )

    rows = list_configs(engine_for(database_url))
    per_channel: dict[str, int] = {}
    for row in rows:
        per_channel[row.channel] = per_channel.get(row.channel, 0) + 1
    assert code == 0
    assert "Seeded 200 configs over 10 channels" in out
    assert len(rows) == 200
    assert set(per_channel) == {f"ch-{i}" for i in range(10)}
    assert per_channel["ch-0"] > per_channel["ch-9"]
    assert all(row.is_active and row.auto_execute for row in rows)


def test_seed_counts_repeat_for_same_seed() -> None:
    import random

    first = zipf_channel_counts(1000, 50, 1.1, random.Random(3))
    second = zipf_channel_counts(1000, 50, 1.1, random.Random(3))

    assert first == second
    assert sum(first) == 1000
    assert min(first) >= 1
    assert first[0] == max(first)


def test_seed_rejects_zero_channels(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(database_url, capsys, "seed", "--configs", "5", "--channels", "0")

    assert code == 1
    assert "channels=0" in err


def test_list_json_and_channel_filter(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run(database_url, capsys, "add", "--channel", "alpha", "--id", "cfg_a")
    run(database_url, capsys, "add", "--channel", "beta", "--id", "cfg_b")

    code, out, _ = run(database_url, capsys, "list", "--channel", "beta", "--json")

    listed = json.loads(out)
    assert code == 0
    assert [item["id"] for item in listed] == ["cfg_b"]
    assert listed[0]["channel"] == "beta"
    assert listed[0]["isActive"] is True
    assert listed[0]["updatedAt"].endswith("Z")


def test_list_text(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    run(database_url, capsys, "add", "--channel", "alpha", "--id", "cfg_a")

    code, out, _ = run(database_url, capsys, "list")

    assert code == 0
    assert out.splitlines()[0].startswith("cfg_a  alpha  ")
    assert out.splitlines()[-1] == "1 configs"


def test_unmigrated_database_is_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"

    code, _, err = run(url, capsys, "list")

    assert code == 1
    assert "supervisor migrate" in err


def test_console_entry_point_add(database_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "supervisor", "configs", "add", "--channel", "alpha",
         "--database-url", database_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("cfg_")
    assert [row.id for row in list_configs(engine_for(database_url))] == [result.stdout.strip()]
