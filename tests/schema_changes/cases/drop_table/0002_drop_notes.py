from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.execute("DROP TABLE notes")


def downgrade() -> None:
    op.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
