"""Alembic environment of the supervisor's migrations.

The database URL comes from the caller: `supervisor migrate` puts it (or an open connection)
into `config.attributes`. Only a bare `alembic` command line falls back to
`SUPERVISOR_DATABASE_URL`, through the same settings the service reads. The version table is
`supervisor_alembic_version`, so it cannot collide with tables of the platform's own database.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from supervisor.db import VERSION_TABLE, create_engine_from_url
from supervisor.settings import Settings

config = context.config


def _database_url() -> str:
    url = config.attributes.get("database_url")
    if isinstance(url, str) and url:
        return url
    return Settings.from_env().database_url


def _run_with_connection(connection: sa.Connection) -> None:
    context.configure(connection=connection, version_table=VERSION_TABLE)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if isinstance(connection, sa.Connection):
        _run_with_connection(connection)
        return
    engine = create_engine_from_url(_database_url())
    try:
        with engine.connect() as new_connection:
            _run_with_connection(new_connection)
    finally:
        engine.dispose()


def run_offline() -> None:
    context.configure(url=_database_url(), version_table=VERSION_TABLE, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
