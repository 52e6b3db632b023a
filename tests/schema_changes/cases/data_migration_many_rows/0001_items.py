from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.execute('CREATE TABLE items (id int PRIMARY KEY, label text NOT NULL, price numeric(10, 2) NOT NULL)')
    op.execute("INSERT INTO items SELECT g, 'seed ' || g, g + 0.25 FROM generate_series(1, 20000) g")


def downgrade() -> None:
    op.execute('DROP TABLE items')
