from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.execute("CREATE TABLE items (id int PRIMARY KEY, label text NOT NULL, qty int NOT NULL DEFAULT 0)")
    op.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    op.execute("INSERT INTO items SELECT g, 'seed ' || g, g FROM generate_series(1, 20) g")
    op.execute("INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 20) g")


def downgrade() -> None:
    op.execute("DROP TABLE notes")
    op.execute("DROP TABLE items")
