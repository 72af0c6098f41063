"""Create the "CopyTradingConfig" table, or adopt it when Prisma created it already.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import logging
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from supervisor.db import TABLE_NAME, MigrationError

revision = "0001"
down_revision: str | None = None
branch_labels = None
depends_on = None

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = frozenset(
    {
        "id",
        "userId",
        "channel",
        "isActive",
        "autoExecute",
        "sizingMode",
        "fixedQuantity",
        "multiplier",
        "maxQuantity",
        "createdAt",
        "updatedAt",
    }
)


def _timestamp_ms() -> sa.types.TypeEngine[datetime]:
    return sa.DateTime().with_variant(postgresql.TIMESTAMP(precision=3), "postgresql")


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if inspector.has_table(TABLE_NAME):
        _adopt_existing_table(inspector)
        return
    op.create_table(
        TABLE_NAME,
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("userId", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("isActive", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("autoExecute", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column(
            "sizingMode", sa.Text, nullable=False, server_default=sa.text("'multiplier'")
        ),
        sa.Column("fixedQuantity", sa.Double, nullable=True),
        sa.Column("multiplier", sa.Double, nullable=True),
        sa.Column("maxQuantity", sa.Double, nullable=True),
        sa.Column(
            "createdAt",
            _timestamp_ms(),
            nullable=False,
            server_default=sa.func.current_timestamp(),
        ),
        sa.Column("updatedAt", _timestamp_ms(), nullable=False),
    )


def _adopt_existing_table(inspector: sa.Inspector) -> None:
    present = {column["name"] for column in inspector.get_columns(TABLE_NAME)}
    missing = sorted(REQUIRED_COLUMNS - present)
    if missing:
        raise MigrationError(
            f'table "{TABLE_NAME}" exists but lacks columns {", ".join(missing)}; apply the '
            "platform's Prisma migrations first, or point the supervisor at another database"
        )
    logger.info('Table "%s" exists already (created by Prisma); adopting it unchanged', TABLE_NAME)


def downgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.text(f'SELECT count(*) FROM "{TABLE_NAME}"')).scalar_one()
    if rows:
        raise MigrationError(
            f'refusing to drop table "{TABLE_NAME}" because it holds {rows} configs; delete '
            "them first if the data may go, or downgrade only to revision 0001"
        )
    op.drop_table(TABLE_NAME)
