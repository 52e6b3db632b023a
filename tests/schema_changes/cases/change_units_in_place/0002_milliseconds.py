from alembic import op

revision = "0002"
down_revision = '0001'


def upgrade() -> None:
    op.execute('UPDATE tasks SET duration = duration * 1000')


def downgrade() -> None:
    op.execute('UPDATE tasks SET duration = duration / 1000')
