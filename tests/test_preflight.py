"""Preflight tests: each check passing and failing, on SQLite files and the real servers."""

from __future__ import annotations

import argparse
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import free_port

from supervisor import migrate, preflight
from supervisor.db import PRISMA_REFRESH_INDEX_MIGRATION, REFRESH_INDEX_NAME
from supervisor.preflight import CheckResult, run_preflight

PRISMA_MIGRATIONS_DDL = """
CREATE TABLE "_prisma_migrations" (
    "id" VARCHAR(36) PRIMARY KEY NOT NULL,
    "checksum" VARCHAR(64) NOT NULL,
    "finished_at" TIMESTAMP,
    "migration_name" VARCHAR(255) NOT NULL,
    "logs" TEXT,
    "rolled_back_at" TIMESTAMP,
    "started_at" TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "applied_steps_count" INTEGER NOT NULL DEFAULT 0
)
"""


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'preflight.db'}"
    migrate.upgrade(url)
    return url


@pytest.fixture
def environ(database_url: str) -> dict[str, str]:
    return {
        "SUPERVISOR_DATABASE_URL": database_url,
        "SUPERVISOR_WORKER_POOL_SIZE": "16",
        "SUPERVISOR_CONFIG_REFRESH_MS": "5000",
        "SUPERVISOR_CONFIG_FULL_REFRESH_MS": "300000",
        "SUPERVISOR_TARGET_LATENCY_MS": "250",
    }


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {result.name: result for result in results}


def add_prisma_row(url: str, *, finished: bool, rolled_back: bool = False) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        if not sa.inspect(conn).has_table("_prisma_migrations"):
            conn.exec_driver_sql(PRISMA_MIGRATIONS_DDL)
        conn.execute(
            sa.text(
                'INSERT INTO "_prisma_migrations" (id, checksum, finished_at, migration_name, '
                "rolled_back_at) VALUES (:id, 'x', :finished, :name, :rolled_back)"
            ),
            {
                "id": uuid.uuid4().hex,
                "finished": "2026-02-06 11:12:04" if finished else None,
                "name": PRISMA_REFRESH_INDEX_MIGRATION,
                "rolled_back": "2026-02-06 11:13:00" if rolled_back else None,
            },
        )
    engine.dispose()


def test_all_pass_with_redis_warning(environ: dict[str, str]) -> None:
    results = by_name(run_preflight(environ))

    failed = {name: r.detail for name, r in results.items() if not r.passed}
    assert failed == {}
    assert results["redis"].status == "WARN"
    assert "not shared" in results["redis"].detail
    assert results["refresh_index"].status == "PASS"
    assert results["prisma_migration"].status == "PASS"


@pytest.mark.integration
def test_redis_ping_passes(environ: dict[str, str], redis_server_url: str) -> None:
    environ["SUPERVISOR_REDIS_URL"] = redis_server_url

    result = by_name(run_preflight(environ))["redis"]

    assert result.status == "PASS"


def test_redis_unreachable_fails(environ: dict[str, str]) -> None:
    environ["SUPERVISOR_REDIS_URL"] = f"redis://:hunter2@127.0.0.1:{free_port()}/0"

    result = by_name(run_preflight(environ))["redis"]

    assert result.status == "FAIL"
    assert "did not answer PING" in result.detail
    assert "hunter2" not in result.detail


@pytest.mark.parametrize("variable", preflight.EXPLICIT_VARIABLES)
def test_unset_variable_fails(environ: dict[str, str], variable: str) -> None:
    del environ[variable]

    result = by_name(run_preflight(environ))[variable]

    assert result.status == "FAIL"
    assert "not set" in result.detail


def test_invalid_pool_size_fails(environ: dict[str, str]) -> None:
    environ["SUPERVISOR_WORKER_POOL_SIZE"] = "0"

    results = by_name(run_preflight(environ))

    assert results["SUPERVISOR_WORKER_POOL_SIZE"].status == "FAIL"
    assert "SUPERVISOR_WORKER_POOL_SIZE=0" in results["SUPERVISOR_WORKER_POOL_SIZE"].detail
    assert results["settings"].status == "FAIL"


def test_full_not_above_incremental_fails(environ: dict[str, str]) -> None:
    environ["SUPERVISOR_CONFIG_FULL_REFRESH_MS"] = "5000"

    result = by_name(run_preflight(environ))["refresh_intervals"]

    assert result.status == "FAIL"
    assert "must be larger" in result.detail


@pytest.mark.parametrize(
    ("shard_env", "expected_status", "expected_text"),
    [
        ({"SUPERVISOR_SHARD_COUNT": "4"}, "FAIL", "SUPERVISOR_SHARD_INDEX is not set"),
        ({"SUPERVISOR_SHARD_COUNT": "4", "SUPERVISOR_SHARD_INDEX": "4"}, "FAIL", "below"),
        ({"SUPERVISOR_SHARD_COUNT": "4", "SUPERVISOR_SHARD_INDEX": "3"}, "PASS", "3 of 4"),
        ({}, "PASS", "0 of 1"),
    ],
)
def test_shard_settings(
    environ: dict[str, str],
    shard_env: dict[str, str],
    expected_status: str,
    expected_text: str,
) -> None:
    environ.update(shard_env)

    result = by_name(run_preflight(environ))["shards"]

    assert result.status == expected_status
    assert expected_text in result.detail


def test_missing_index_fails(environ: dict[str, str], database_url: str) -> None:
    migrate.downgrade(database_url, "0001")

    result = by_name(run_preflight(environ))["refresh_index"]

    assert result.status == "FAIL"
    assert REFRESH_INDEX_NAME in result.detail


def test_missing_sqlite_file_fails_without_creating_it(
    environ: dict[str, str], tmp_path: Path
) -> None:
    missing = tmp_path / "absent.db"
    environ["SUPERVISOR_DATABASE_URL"] = f"sqlite:///{missing}"

    results = by_name(run_preflight(environ))

    assert results["database"].status == "FAIL"
    assert "does not exist" in results["database"].detail
    assert results["refresh_index"].status == "FAIL"
    assert not missing.exists()


def test_unreachable_postgres_masks_password(environ: dict[str, str]) -> None:
    url = f"postgresql://admin:s3cret@127.0.0.1:{free_port()}/none"

    results = run_preflight(environ, database_url=url)

    database = by_name(results)["database"]
    assert database.status == "FAIL"
    assert "admin:***@127.0.0.1" in database.detail
    assert all("s3cret" not in result.detail for result in results)


@pytest.mark.parametrize(
    ("finished", "rolled_back", "expected_status", "expected_text"),
    [
        (True, False, "PASS", "finished"),
        (False, False, "FAIL", "has not finished"),
        (True, True, "FAIL", "rolled back"),
    ],
)
def test_prisma_migration_row(
    environ: dict[str, str],
    database_url: str,
    finished: bool,
    rolled_back: bool,
    expected_status: str,
    expected_text: str,
) -> None:
    add_prisma_row(database_url, finished=finished, rolled_back=rolled_back)

    result = by_name(run_preflight(environ))["prisma_migration"]

    assert result.status == expected_status
    assert expected_text in result.detail


def test_prisma_table_without_row_fails(environ: dict[str, str], database_url: str) -> None:
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(PRISMA_MIGRATIONS_DDL)
    engine.dispose()

    result = by_name(run_preflight(environ))["prisma_migration"]

    assert result.status == "FAIL"
    assert "never applied" in result.detail


def test_retried_prisma_migration_passes(environ: dict[str, str], database_url: str) -> None:
    add_prisma_row(database_url, finished=False, rolled_back=True)
    add_prisma_row(database_url, finished=True)

    result = by_name(run_preflight(environ))["prisma_migration"]

    assert result.status == "PASS"


def run_main(monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], *argv: str) -> int:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    parser = argparse.ArgumentParser()
    preflight.add_arguments(parser)
    return preflight.main(parser.parse_args(list(argv)))


def test_main_prints_lines_and_exit_zero(
    environ: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SUPERVISOR_REDIS_URL", raising=False)

    code = run_main(monkeypatch, environ)

    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert lines[-1] == "Preflight passed"
    assert all(line.split()[0] in ("PASS", "WARN") for line in lines[:-1])


def test_main_json_and_exit_one(
    environ: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    environ["SUPERVISOR_CONFIG_FULL_REFRESH_MS"] = "1000"

    code = run_main(monkeypatch, environ, "--json")

    payload = json.loads(capsys.readouterr().out)
    assert code == 1
    assert payload["passed"] is False
    failed = [check["name"] for check in payload["checks"] if check["status"] == "FAIL"]
    assert failed == ["refresh_intervals"]


@pytest.fixture
def pg_database_url(postgres_server_url: str) -> Iterator[str]:
    admin = sa.create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    name = f"supervisor_pre_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield postgres_server_url.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.mark.integration
def test_postgres_index_check(environ: dict[str, str], pg_database_url: str) -> None:
    migrate.upgrade(pg_database_url)
    passing = by_name(run_preflight(environ, database_url=pg_database_url))
    migrate.downgrade(pg_database_url, "0001")
    failing = by_name(run_preflight(environ, database_url=pg_database_url))

    assert passing["database"].status == "PASS"
    assert passing["refresh_index"].status == "PASS"
    assert failing["refresh_index"].status == "FAIL"
