from alembic import op

revision = "0002"
down_revision = '0001'


def upgrade() -> None:
    op.execute('ALTER TABLE items ADD COLUMN price_cents bigint')
    op.execute('UPDATE items SET price_cents = (price * 100)::bigint')
    op.execute('ALTER TABLE items ALTER COLUMN price_cents SET NOT NULL, DROP COLUMN price')


def downgrade() -> None:
    op.execute('ALTER TABLE items ADD COLUMN price numeric(10, 2)')
    op.execute('UPDATE items SET price = price_cents / 100.0')
    op.execute('ALTER TABLE items DROP COLUMN price_cents')
