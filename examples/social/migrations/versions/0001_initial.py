"""Initial schema of the sample app: users, messages and likes (what version 1 needs).

Revision ID: 0001
Revises:
Create Date: 2024-01-01 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def created_at() -> sa.Column:
    return sa.Column(
        "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def upgrade() -> None:
    # A BigInteger primary key renders as BIGSERIAL on PostgreSQL.
    op.create_table(
        "users",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("email", sa.Text, nullable=False, unique=True),
        created_at(),
    )
    op.create_table(
        "messages",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column(
            "user_id",
            sa.BigInteger,
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("body", sa.Text, nullable=False),
        created_at(),
    )
    # Without it, deleting a user scans every message to cascade.
    op.create_index("messages_user_id_idx", "messages", ["user_id"])
    op.create_table(
        "likes",
        sa.Column(
            "user_id",
            sa.BigInteger,
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "message_id",
            sa.BigInteger,
            sa.ForeignKey("messages.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        created_at(),
    )
    # The feed counts likes per message; the primary key leads with user_id and cannot help.
    op.create_index("likes_message_id_idx", "likes", ["message_id"])


def downgrade() -> None:
    op.drop_table("likes")
    op.drop_table("messages")
    op.drop_table("users")
