from alembic import op

revision = "0003"
down_revision = '0002'


def upgrade() -> None:
    op.execute('ALTER TABLE items RENAME COLUMN label TO title')


def downgrade() -> None:
    op.execute('ALTER TABLE items RENAME COLUMN title TO label')
