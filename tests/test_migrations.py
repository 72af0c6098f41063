"""Migration tests: upgrade, downgrade and adopting a Prisma-made table, on SQLite and PostgreSQL.

Each PostgreSQL test gets its own database, because a downgrade would disturb other tests that
share the session database.
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from supervisor import migrate
from supervisor.db import REFRESH_INDEX_NAME, TABLE_NAME, VERSION_TABLE, add_config

PRISMA_DDL = """
CREATE TABLE "CopyTradingConfig" (
    "id" TEXT NOT NULL PRIMARY KEY,
    "userId" TEXT NOT NULL,
    "channel" TEXT NOT NULL,
    "isActive" BOOLEAN NOT NULL DEFAULT true,
    "autoExecute" BOOLEAN NOT NULL DEFAULT false,
    "sizingMode" TEXT NOT NULL DEFAULT 'multiplier',
    "fixedQuantity" DOUBLE PRECISION,
    "multiplier" DOUBLE PRECISION,
    "maxQuantity" DOUBLE PRECISION,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL
)
"""


def run_migrate(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    migrate.add_arguments(parser)
    return migrate.main(parser.parse_args(list(argv)))


def sqlite_index_names(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            query = "SELECT name FROM sqlite_master WHERE type = 'index'"
            return {row[0] for row in conn.exec_driver_sql(query)}
    finally:
        engine.dispose()


def pg_index_names(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            query = sa.text("SELECT indexname FROM pg_indexes WHERE tablename = :table")
            return {row[0] for row in conn.execute(query, {"table": TABLE_NAME})}
    finally:
        engine.dispose()


def has_table(url: str) -> bool:
    engine = sa.create_engine(url)
    try:
        return sa.inspect(engine).has_table(TABLE_NAME)
    finally:
        engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'migrate.db'}"


@pytest.fixture
def pg_database_url(postgres_server_url: str) -> Iterator[str]:
    admin = sa.create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    name = f"supervisor_mig_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield postgres_server_url.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def test_sqlite_upgrade_creates_table_and_index(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_migrate("--database-url", sqlite_url)

    assert code == 0
    assert has_table(sqlite_url)
    assert REFRESH_INDEX_NAME in sqlite_index_names(sqlite_url)
    assert migrate.current_revision(sqlite_url) == "0002"
    assert "is at revision 0002" in capsys.readouterr().out


def test_sqlite_upgrade_twice_is_noop(sqlite_url: str) -> None:
    assert run_migrate("--database-url", sqlite_url) == 0

    assert run_migrate("--database-url", sqlite_url) == 0
    assert migrate.current_revision(sqlite_url) == "0002"


def test_sqlite_downgrade_drops_index_only(sqlite_url: str) -> None:
    run_migrate("--database-url", sqlite_url)

    code = run_migrate("--database-url", sqlite_url, "--downgrade", "0001")

    assert code == 0
    assert REFRESH_INDEX_NAME not in sqlite_index_names(sqlite_url)
    assert has_table(sqlite_url)
    assert migrate.current_revision(sqlite_url) == "0001"


def test_downgrade_base_drops_empty_table(sqlite_url: str) -> None:
    run_migrate("--database-url", sqlite_url)

    code = run_migrate("--database-url", sqlite_url, "--downgrade", "base")

    assert code == 0
    assert not has_table(sqlite_url)


def test_downgrade_base_refuses_table_with_rows(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run_migrate("--database-url", sqlite_url)
    engine = sa.create_engine(sqlite_url)
    add_config(engine, channel="alpha", user_id="u1")
    engine.dispose()

    code = run_migrate("--database-url", sqlite_url, "--downgrade", "base")

    assert code == 1
    assert has_table(sqlite_url)
    assert "holds 1 configs" in capsys.readouterr().err


def test_existing_prisma_table_adopted(sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(PRISMA_DDL)
    add_config(engine, channel="alpha", user_id="u1", config_id="kept")
    engine.dispose()

    code = run_migrate("--database-url", sqlite_url)

    assert code == 0
    assert migrate.current_revision(sqlite_url) == "0002"
    assert REFRESH_INDEX_NAME in sqlite_index_names(sqlite_url)
    engine = sa.create_engine(sqlite_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql('SELECT "id" FROM "CopyTradingConfig"').scalars().all() == [
            "kept"
        ]
    engine.dispose()


def test_existing_table_missing_columns_fails(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:
        conn.exec_driver_sql('CREATE TABLE "CopyTradingConfig" ("id" TEXT PRIMARY KEY)')
    engine.dispose()

    code = run_migrate("--database-url", sqlite_url)

    assert code == 1
    assert "lacks columns" in capsys.readouterr().err
    assert migrate.current_revision(sqlite_url) is None


def test_version_table_name(sqlite_url: str) -> None:
    run_migrate("--database-url", sqlite_url)

    engine = sa.create_engine(sqlite_url)
    tables = set(sa.inspect(engine).get_table_names())
    engine.dispose()

    assert VERSION_TABLE in tables
    assert "alembic_version" not in tables


def test_migrate_masks_password(capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql://admin:s3cret@127.0.0.1:1/none"

    code = run_migrate("--database-url", url)

    output = capsys.readouterr()
    assert code == 1
    assert "s3cret" not in output.out + output.err
    assert "admin:***@127.0.0.1:1" in output.out


def test_migrate_url_from_environment(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SUPERVISOR_DATABASE_URL", sqlite_url)

    code = run_migrate()

    assert code == 0
    assert sqlite_url in capsys.readouterr().out
    assert has_table(sqlite_url)


@pytest.mark.integration
def test_postgres_upgrade_and_downgrade(pg_database_url: str) -> None:
    plain_url = pg_database_url.replace("postgresql+psycopg://", "postgresql://")

    assert run_migrate("--database-url", plain_url) == 0
    after_upgrade = pg_index_names(pg_database_url)
    assert run_migrate("--database-url", plain_url, "--downgrade", "0001") == 0
    after_downgrade = pg_index_names(pg_database_url)

    assert REFRESH_INDEX_NAME in after_upgrade
    assert REFRESH_INDEX_NAME not in after_downgrade
    assert has_table(pg_database_url)
    assert migrate.current_revision(pg_database_url) == "0001"


@pytest.mark.integration
def test_postgres_index_columns_and_types(pg_database_url: str) -> None:
    assert run_migrate("--database-url", pg_database_url) == 0

    engine = sa.create_engine(pg_database_url)
    with engine.connect() as conn:
        definition = conn.execute(
            sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = :name"),
            {"name": REFRESH_INDEX_NAME},
        ).scalar_one()
        updated_type = conn.execute(
            sa.text(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = '\"CopyTradingConfig\"'::regclass AND attname = 'updatedAt'"
            )
        ).scalar_one()
    engine.dispose()

    assert '("updatedAt", "isActive", "autoExecute", channel)' in definition
    assert updated_type == "timestamp(3) without time zone"


@pytest.mark.integration
def test_postgres_prisma_table_and_index_adopted(pg_database_url: str) -> None:
    engine = sa.create_engine(pg_database_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(PRISMA_DDL)
        conn.exec_driver_sql(
            f'CREATE INDEX "{REFRESH_INDEX_NAME}" ON "CopyTradingConfig" '
            '("updatedAt", "isActive", "autoExecute", "channel")'
        )
    engine.dispose()

    code = run_migrate("--database-url", pg_database_url)

    assert code == 0
    assert migrate.current_revision(pg_database_url) == "0002"
    assert REFRESH_INDEX_NAME in pg_index_names(pg_database_url)
