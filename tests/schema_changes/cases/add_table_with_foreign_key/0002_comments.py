from alembic import op

revision = "0002"
down_revision = '0001'


def upgrade() -> None:
    op.execute('CREATE TABLE comments (id bigserial PRIMARY KEY, item_id int NOT NULL REFERENCES items (id) ON DELETE CASCADE, body text NOT NULL)')


def downgrade() -> None:
    op.execute('DROP TABLE comments')
