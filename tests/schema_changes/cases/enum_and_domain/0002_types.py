from alembic import op

revision = "0002"
down_revision = '0001'


def upgrade() -> None:
    op.execute("CREATE TYPE account_status AS ENUM ('active', 'closed')")
    op.execute("CREATE DOMAIN email_address AS text CHECK (VALUE LIKE '%@%')")
    op.execute('ALTER TABLE accounts ALTER COLUMN status TYPE account_status USING status::account_status, ALTER COLUMN email TYPE email_address')


def downgrade() -> None:
    op.execute('ALTER TABLE accounts ALTER COLUMN status TYPE text, ALTER COLUMN email TYPE text')
    op.execute('DROP DOMAIN email_address')
    op.execute('DROP TYPE account_status')
