"""Migrate: Alembic upgrade (and downgrade on rollback) under lock and statement timeouts.

Alembic runs as a child process with the project's own env.py, so deployctl works with any
Alembic project: the DSN goes in through an environment variable (`migrations.url_env`, default
DATABASE_URL) and the timeouts through PGOPTIONS, which libpq applies to every connection the
migration opens. A lock timeout or a deadlock means busy tables, not a broken migration: PostgreSQL
rolled the migration's transaction back, so it is retried with exponential backoff; any other
failure is final.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psycopg
from alembic.config import Config
from alembic.script import ScriptDirectory
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from deployctl.db.snapshot import alembic_revision
from deployctl.errors import BadInput, StepFailed
from deployctl.log import log
from deployctl.redact import redact

# SQLSTATE 55P03 (lock_not_available) and 40P01 (deadlock_detected), as psycopg and PostgreSQL
# word them. A user transaction that inserts a row holds its table and then waits for the parent
# table the migration holds for its foreign-key check: PostgreSQL may pick the migration to abort.
_BUSY_MARKERS = ("LockNotAvailable", "lock timeout", "55P03",
                 "DeadlockDetected", "deadlock detected", "40P01")
# The line of a Python traceback that names the exception (`sqlalchemy.exc.OperationalError: …`);
# SQLAlchemy prints a link after it, which says nothing about what went wrong.
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*:")


class LockTimeout(StepFailed):
    """The migration gave up waiting for a lock, or lost a deadlock; worth another try."""


@dataclass(frozen=True)
class Alembic:
    ini: Path
    dsn: str
    url_env: str = "DATABASE_URL"
    lock_timeout_s: float = 5.0
    statement_timeout_s: float = 300.0

    def resolve(self, target: str) -> str | None:
        """A target such as `head` as a revision id (None for `base`)."""
        script = ScriptDirectory.from_config(Config(str(self.ini)))
        try:
            revisions = script.get_revisions(target)
        except Exception as exc:
            raise BadInput(f"migrations.target: unknown Alembic revision {target!r}: {exc}"
                           ) from None
        if not revisions:
            return None
        if len(revisions) > 1:
            raise BadInput(f"migrations.target: {target!r} names several heads; pick one")
        return str(revisions[0].revision)

    def current(self) -> str | None:
        with psycopg.connect(self.dsn, connect_timeout=10) as conn:
            return alembic_revision(conn)

    def _run(self, *args: str) -> str:
        env = dict(os.environ)
        env[self.url_env] = self.dsn
        env["PGOPTIONS"] = (
            f"-c lock_timeout={int(self.lock_timeout_s * 1000)} "
            f"-c statement_timeout={int(self.statement_timeout_s * 1000)}"
        )
        argv = [sys.executable, "-m", "alembic", "-c", str(self.ini), *args]
        result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            error = LockTimeout if any(m in result.stderr for m in _BUSY_MARKERS) else StepFailed
            raise error(f"alembic {' '.join(args)} failed: {_what_failed(result.stderr)}")
        return result.stdout

    def _with_retries(self, retries: int, *args: str) -> None:
        def note(state: RetryCallState) -> None:
            log.warning("migration waited too long for a lock or lost a deadlock; retrying",
                        attempt=state.attempt_number, command=" ".join(args))

        for attempt in Retrying(
            retry=retry_if_exception_type(LockTimeout),
            stop=stop_after_attempt(retries + 1),
            wait=wait_exponential(multiplier=0.5, max=15),
            before_sleep=note,
            reraise=True,
        ):
            with attempt:
                self._run(*args)

    def upgrade(self, target: str, *, retries: int) -> None:
        self._with_retries(retries, "upgrade", target)

    def downgrade(self, target: str | None, *, retries: int) -> None:
        self._with_retries(retries, "downgrade", target or "base")

    def offline_sql(self, start: str | None, target: str) -> str:
        """The SQL the upgrade would run (`alembic upgrade START:TARGET --sql`); connects nowhere."""
        return self._run("upgrade", f"{start or 'base'}:{target}", "--sql")


def _what_failed(stderr: str) -> str:
    """The line of Alembic's output that says what went wrong: the exception, else the last."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    named = [line for line in lines if _EXCEPTION_LINE.match(line)]
    return redact((named or lines or ["no output"])[-1])
