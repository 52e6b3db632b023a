from alembic import op

revision = "0002"
down_revision = '0001'


def upgrade() -> None:
    op.execute('ALTER TABLE lines ADD COLUMN total numeric GENERATED ALWAYS AS (qty * price) STORED')


def downgrade() -> None:
    op.execute('ALTER TABLE lines DROP COLUMN total')
