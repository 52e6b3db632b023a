from alembic import op

revision = "0002"
down_revision = '0001'


def upgrade() -> None:
    op.execute('ALTER TABLE items ADD COLUMN note text')


def downgrade() -> None:
    op.execute('ALTER TABLE items DROP COLUMN note')
