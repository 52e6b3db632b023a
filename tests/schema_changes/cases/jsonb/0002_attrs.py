from alembic import op

revision = "0002"
down_revision = '0001'


def upgrade() -> None:
    op.execute("ALTER TABLE things ADD COLUMN attrs jsonb NOT NULL DEFAULT '{}'")
    op.execute("UPDATE things SET attrs = jsonb_build_object('color', color)")
    op.execute('ALTER TABLE things DROP COLUMN color')


def downgrade() -> None:
    op.execute('ALTER TABLE things ADD COLUMN color text')
    op.execute("UPDATE things SET color = attrs->>'color'")
    op.execute('ALTER TABLE things DROP COLUMN attrs')
