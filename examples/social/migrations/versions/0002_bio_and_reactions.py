"""Version 2's additions: a user bio and emoji reactions on messages.

Expand-only on purpose (a nullable column and a new table), so version 1 keeps running on this
schema while version 2 is tried, and a rollback may simply keep it. The downgrade drops
``users.bio`` and ``reactions`` with their data; deployctl keeps that data in its delta.

Revision ID: 0002
Revises: 0001
Create Date: 2024-01-02 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable with no default: PostgreSQL adds it without rewriting the table.
    op.add_column("users", sa.Column("bio", sa.Text, nullable=True))
    op.create_table(
        "reactions",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column(
            "user_id",
            sa.BigInteger,
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "message_id",
            sa.BigInteger,
            sa.ForeignKey("messages.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("emoji", sa.Text, nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
    )
    op.create_index("reactions_message_id_idx", "reactions", ["message_id"])
    op.create_index("reactions_user_id_idx", "reactions", ["user_id"])


def downgrade() -> None:
    op.drop_table("reactions")
    op.drop_column("users", "bio")
