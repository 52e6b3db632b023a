from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.execute('CREATE TABLE items (id int PRIMARY KEY, qty int NOT NULL, name text NOT NULL, price numeric(8, 2))')
    op.execute("INSERT INTO items SELECT g, g, 'seed ' || g, g + 0.75 FROM generate_series(1, 20) g")


def downgrade() -> None:
    op.execute('DROP TABLE items')
