from alembic import op

revision = "0002"
down_revision = '0001'


def upgrade() -> None:
    op.execute('ALTER TABLE events ADD COLUMN source text')


def downgrade() -> None:
    op.execute('ALTER TABLE events DROP COLUMN source')
