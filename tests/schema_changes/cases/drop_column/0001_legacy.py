from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.execute("CREATE TABLE items (id int PRIMARY KEY, label text NOT NULL, qty int NOT NULL DEFAULT 0, legacy text DEFAULT 'kept')")
    op.execute("INSERT INTO items SELECT g, 'seed ' || g, g, 'old ' || g FROM generate_series(1, 20) g")


def downgrade() -> None:
    op.execute('DROP TABLE items')
