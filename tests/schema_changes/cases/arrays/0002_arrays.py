from alembic import op

revision = "0002"
down_revision = '0001'


def upgrade() -> None:
    op.execute('ALTER TABLE posts ALTER COLUMN tags TYPE varchar(20)[], ADD COLUMN scores int[]')


def downgrade() -> None:
    op.execute('ALTER TABLE posts ALTER COLUMN tags TYPE text[], DROP COLUMN scores')
