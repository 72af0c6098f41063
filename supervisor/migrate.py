"""`supervisor migrate`: apply the supervisor's Alembic migrations to its database.

The migrations ship inside the package (`supervisor/migrations`), so the command works from
an installed wheel. Revision 0001 creates `"CopyTradingConfig"`, or adopts the table unchanged
when the platform's Prisma migrations created it. Revision 0002 adds the refresh index.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
HEAD = "head"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `supervisor migrate`."""
    parser.add_argument(
        "--database-url",
        help="database to migrate (default: SUPERVISOR_DATABASE_URL, else ./supervisor.db)",
    )
    parser.add_argument(
        "--downgrade",
        metavar="REV",
        help="downgrade to revision REV (0001, or base to drop an empty table) instead of "
        "upgrading to the latest revision",
    )


def alembic_config(database_url: str) -> Config:
    """Build the Alembic configuration that points at the packaged migrations."""
    from alembic.config import Config

    config = Config(str(MIGRATIONS_DIR / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = HEAD) -> None:
    """Upgrade the database at `database_url` to `revision`."""
    from alembic import command

    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    """Downgrade the database at `database_url` to `revision`."""
    from alembic import command

    command.downgrade(alembic_config(database_url), revision)


def current_revision(database_url: str) -> str | None:
    """Return the revision the database is at, or None before the first migration."""
    from alembic.runtime.migration import MigrationContext

    from supervisor.db import VERSION_TABLE, create_engine_from_url

    engine = create_engine_from_url(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
            return context.get_current_revision()
    finally:
        engine.dispose()


def main(args: argparse.Namespace) -> int:
    """Run `supervisor migrate`; return 0 on success and 1 when a migration fails."""
    import sqlalchemy as sa
    from alembic.util import CommandError

    from supervisor.db import DatabaseError
    from supervisor.settings import Settings, mask_url

    database_url: str = args.database_url or Settings.from_env().database_url
    shown_url = mask_url(database_url)
    action = f"downgrade to {args.downgrade}" if args.downgrade else "upgrade to head"
    print(f"Migrating {shown_url}: {action}")
    try:
        if args.downgrade:
            downgrade(database_url, args.downgrade)
        else:
            upgrade(database_url)
        revision = current_revision(database_url)
    except (DatabaseError, CommandError, sa.exc.SQLAlchemyError) as error:
        print(f"supervisor migrate: migration of {shown_url} failed: {error}", file=sys.stderr)
        return 1
    print(f"Database {shown_url} is at revision {revision or 'base'}")
    return 0
