from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.alter_column("items", "label", new_column_name="title")


def downgrade() -> None:
    op.alter_column("items", "title", new_column_name="label")
