from alembic import op

revision = "0002"
down_revision = '0001'


def upgrade() -> None:
    op.execute('ALTER TABLE customers ADD COLUMN first_name text, ADD COLUMN last_name text')
    op.execute("UPDATE customers SET first_name = split_part(full_name, ' ', 1), last_name = substr(full_name, strpos(full_name, ' ') + 1)")
    op.execute('ALTER TABLE customers DROP COLUMN full_name')


def downgrade() -> None:
    op.execute('ALTER TABLE customers ADD COLUMN full_name text')
    op.execute("UPDATE customers SET full_name = concat_ws(' ', first_name, last_name)")
    op.execute('ALTER TABLE customers DROP COLUMN first_name, DROP COLUMN last_name')
