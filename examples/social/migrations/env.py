"""Alembic environment of the sample app: where migrations connect, online and offline.

The URL comes from ``DATABASE_URL`` (the same variable the app reads), converted from the libpq
spelling ``postgresql://`` or ``postgres://`` to SQLAlchemy's ``postgresql+psycopg://`` so that
psycopg 3 is used instead of the psycopg2 SQLAlchemy would pick by default. A caller driving
Alembic from Python may instead set ``sqlalchemy.url`` on the Config or hand over an open
connection in ``config.attributes["connection"]``.

Offline mode (``--sql``) only needs the dialect, but still reads the URL so that it fails the
same way online mode would when the variable is missing.
"""

from __future__ import annotations

import os
import re
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import Connection

config = context.config

# The CLI wants alembic.ini's logging; a program embedding Alembic (deployctl) keeps its own by
# setting config.attributes["configure_logger"] = False.
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def sqlalchemy_url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("DATABASE_URL", "")
    if not url:
        raise SystemExit(
            "DATABASE_URL is not set; export a URL such as "
            "postgresql://postgres@127.0.0.1:5432/social"
        )
    return re.sub(r"^postgres(?:ql)?://", "postgresql+psycopg://", url)


def run_migrations_offline() -> None:
    context.configure(
        url=sqlalchemy_url(),
        target_metadata=None,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_with(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    given = config.attributes.get("connection")
    if given is not None:
        run_with(given)
        return
    # NullPool: a migration run is one short-lived process; nothing to keep open afterwards.
    engine = create_engine(sqlalchemy_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            run_with(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
