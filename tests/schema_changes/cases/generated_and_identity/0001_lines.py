from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.execute("CREATE TABLE lines (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, qty int NOT NULL, price numeric NOT NULL, label text GENERATED ALWAYS AS ('line ' || id) STORED)")
    op.execute('INSERT INTO lines (qty, price) SELECT g, 1.5 FROM generate_series(1, 20) g')


def downgrade() -> None:
    op.execute('DROP TABLE lines')
