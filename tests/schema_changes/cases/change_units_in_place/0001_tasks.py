from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.execute('CREATE TABLE tasks (id int PRIMARY KEY, name text NOT NULL, duration bigint NOT NULL)')
    op.execute("INSERT INTO tasks SELECT g, 'seed ' || g, g * 60 FROM generate_series(1, 20) g")


def downgrade() -> None:
    op.execute('DROP TABLE tasks')
