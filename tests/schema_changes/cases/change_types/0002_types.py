from alembic import op

revision = "0002"
down_revision = '0001'


def upgrade() -> None:
    op.execute('ALTER TABLE items ALTER COLUMN qty TYPE bigint, ALTER COLUMN name TYPE varchar(80), ALTER COLUMN price TYPE numeric(12, 4)')


def downgrade() -> None:
    op.execute('ALTER TABLE items ALTER COLUMN qty TYPE int, ALTER COLUMN name TYPE text, ALTER COLUMN price TYPE numeric(8, 2)')
