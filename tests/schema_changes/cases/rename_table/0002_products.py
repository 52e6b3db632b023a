from alembic import op

revision = "0002"
down_revision = '0001'


def upgrade() -> None:
    op.execute('ALTER TABLE items RENAME TO products')


def downgrade() -> None:
    op.execute('ALTER TABLE products RENAME TO items')
