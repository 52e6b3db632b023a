from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.execute('CREATE TABLE events (id int NOT NULL, day date NOT NULL, kind text NOT NULL, PRIMARY KEY (id, day)) PARTITION BY RANGE (day)')
    op.execute("CREATE TABLE events_h1 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2026-07-01')")
    op.execute("CREATE TABLE events_h2 PARTITION OF events FOR VALUES FROM ('2026-07-01') TO ('2027-01-01')")
    op.execute("INSERT INTO events SELECT g, date '2026-01-01' + (g * 17 % 360), 'seed' FROM generate_series(1, 20) g")


def downgrade() -> None:
    op.execute('DROP TABLE events')
