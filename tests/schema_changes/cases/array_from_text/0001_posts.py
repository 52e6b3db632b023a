from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.execute('CREATE TABLE posts (id int PRIMARY KEY, tags text[] NOT NULL)')
    op.execute("INSERT INTO posts SELECT g, ARRAY['seed', g::text] FROM generate_series(1, 20) g")


def downgrade() -> None:
    op.execute('DROP TABLE posts')
