"""Add the refresh index on ("updatedAt", "isActive", "autoExecute", "channel").

Revision ID: 0002
Revises: 0001

The platform's Prisma migration `20260206111203_add_config_refresh_index` creates the same
index under the same name, so both statements use IF [NOT] EXISTS and either side may run
first. On PostgreSQL the index is built CONCURRENTLY, which does not block writers but cannot
run inside a transaction, hence the autocommit block.
"""

from __future__ import annotations

from alembic import op

from supervisor.db import REFRESH_INDEX_COLUMNS, REFRESH_INDEX_NAME, TABLE_NAME

revision = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None

_COLUMNS = ", ".join(f'"{column}"' for column in REFRESH_INDEX_COLUMNS)


def _is_postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    if _is_postgresql():
        with op.get_context().autocommit_block():
            op.execute(
                f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{REFRESH_INDEX_NAME}" '
                f'ON "{TABLE_NAME}" ({_COLUMNS})'
            )
    else:
        op.execute(
            f'CREATE INDEX IF NOT EXISTS "{REFRESH_INDEX_NAME}" ON "{TABLE_NAME}" ({_COLUMNS})'
        )


def downgrade() -> None:
    if _is_postgresql():
        with op.get_context().autocommit_block():
            op.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{REFRESH_INDEX_NAME}"')
    else:
        op.execute(f'DROP INDEX IF EXISTS "{REFRESH_INDEX_NAME}"')
