from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.execute('CREATE TABLE accounts (id int PRIMARY KEY, status text NOT NULL, email text NOT NULL)')
    op.execute("INSERT INTO accounts SELECT g, 'active', 's' || g || '@example.com' FROM generate_series(1, 20) g")


def downgrade() -> None:
    op.execute('DROP TABLE accounts')
