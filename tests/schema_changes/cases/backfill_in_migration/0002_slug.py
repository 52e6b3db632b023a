from alembic import op

revision = "0002"
down_revision = '0001'


def upgrade() -> None:
    op.execute('ALTER TABLE items ADD COLUMN slug text')
    op.execute("UPDATE items SET slug = lower(replace(label, ' ', '-'))")


def downgrade() -> None:
    op.execute('ALTER TABLE items DROP COLUMN slug')
