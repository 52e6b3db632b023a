from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.execute('CREATE TABLE customers (id int PRIMARY KEY, first_name text NOT NULL, last_name text NOT NULL)')
    op.execute("INSERT INTO customers SELECT g, 'seed' || g, 'Lee' FROM generate_series(1, 20) g")


def downgrade() -> None:
    op.execute('DROP TABLE customers')
