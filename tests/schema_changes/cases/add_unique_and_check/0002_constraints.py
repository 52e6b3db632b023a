from alembic import op

revision = "0002"
down_revision = '0001'


def upgrade() -> None:
    op.execute('ALTER TABLE items ADD CONSTRAINT items_label_key UNIQUE (label)')
    op.execute('ALTER TABLE items ADD CONSTRAINT items_qty_check CHECK (qty >= 0)')


def downgrade() -> None:
    op.execute('ALTER TABLE items DROP CONSTRAINT items_qty_check')
    op.execute('ALTER TABLE items DROP CONSTRAINT items_label_key')
