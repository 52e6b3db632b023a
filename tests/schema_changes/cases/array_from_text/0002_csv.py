from alembic import op

revision = "0002"
down_revision = '0001'


def upgrade() -> None:
    op.execute("ALTER TABLE posts ADD COLUMN tags_csv text")
    op.execute("UPDATE posts SET tags_csv = array_to_string(tags, ',')")
    op.execute("ALTER TABLE posts ALTER COLUMN tags_csv SET NOT NULL, DROP COLUMN tags")


def downgrade() -> None:
    op.execute("ALTER TABLE posts ADD COLUMN tags text[]")
    op.execute("UPDATE posts SET tags = string_to_array(tags_csv, ',')")
    op.execute("ALTER TABLE posts ALTER COLUMN tags SET NOT NULL, DROP COLUMN tags_csv")
