from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.execute("CREATE TABLE things (id int PRIMARY KEY, color text, meta jsonb NOT NULL DEFAULT '{}')")
    op.execute("INSERT INTO things SELECT g, 'blue', jsonb_build_object('seed', g) FROM generate_series(1, 20) g")


def downgrade() -> None:
    op.execute('DROP TABLE things')
