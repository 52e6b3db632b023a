"""The journal: releases, their step events, snapshots and the per-application lock.

It lives in the state database (`database.state_dsn`, default: database `deployctl` on the
application's server), which is created on first use from deployctl/sql/state.sql.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from deployctl.errors import BadInput, LockHeld, LockLost
from deployctl.log import log
from deployctl.redact import safe_dsn

SCHEMA_SQL = resources.files("deployctl") / "sql" / "state.sql"  # inside the package: in a wheel too
OPEN_STATUSES = ("running", "rolling_back", "rollback_failed", "aborted")
# How long the journal waits for its database to come back (a restart, a failover).
RECONNECT_S = float(os.environ.get("DEPLOYCTL_RECONNECT_S", "120"))
# Namespace of deployctl's advisory locks (the second key is the application's name).
_LOCK_NAMESPACE = "deployctl.release"


def default_state_dsn(app_dsn: str) -> str:
    return make_conninfo(app_dsn, dbname="deployctl")


def with_dbname(dsn: str, dbname: str) -> str:
    return make_conninfo(dsn, dbname=dbname)


def user_name() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def holder_name() -> str:
    return f"{user_name()} pid {os.getpid()}"


def frozen_text(freeze: dict[str, Any] | None) -> str:
    """Who froze an application, since when and why (for a refusal or `lock status`)."""
    if freeze is None:
        return ""
    return f"by {freeze['holder']} since {freeze['since']:%Y-%m-%d %H:%M:%S %Z}: {freeze['message']!r}"


@dataclass(frozen=True)
class Release:
    id: int
    app: str
    version: str
    from_version: str | None
    status: str
    reason: str | None
    playbook_path: str
    playbook_text: str
    started_by: str
    started_at: datetime
    finished_at: datetime | None
    ended_by: str | None = None   # breach | inconclusive | operator | step_failed (see state.sql)

    @property
    def open(self) -> bool:
        return self.status in OPEN_STATUSES

    def as_dict(self) -> dict[str, Any]:
        duration = (
            (self.finished_at - self.started_at).total_seconds() if self.finished_at else None
        )
        return {
            "id": self.id, "app": self.app, "version": self.version,
            "from_version": self.from_version, "status": self.status, "reason": self.reason,
            "started_by": self.started_by, "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "duration_s": round(duration, 3) if duration is not None else None,
        }


def _ensure_database(state_dsn: str) -> None:
    dbname = conninfo_to_dict(state_dsn).get("dbname")
    try:
        psycopg.connect(state_dsn, connect_timeout=10).close()
        return
    except psycopg.OperationalError as exc:
        if f'database "{dbname}" does not exist' not in str(exc):
            raise BadInput(
                f"state database {safe_dsn(state_dsn)} is unreachable: {' '.join(str(exc).split())}"
            ) from None
    # DuplicateDatabase: a concurrent deployctl made it.
    with psycopg.connect(with_dbname(state_dsn, "postgres"), autocommit=True) as conn, \
            contextlib.suppress(psycopg.errors.DuplicateDatabase):
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(dbname))))


class Journal:
    """One autocommit connection to the state database; holds the advisory lock while open.

    The database may go away for a moment (a restart, a failover): a statement outside a
    transaction that finds the connection gone reconnects, with backoff for up to RECONNECT_S,
    takes this process's locks again and runs once more. A transaction that loses its
    connection fails: its caller decides.
    """

    def __init__(self, state_dsn: str) -> None:
        _ensure_database(state_dsn)
        self.dsn = state_dsn
        self._locked: set[str] = set()   # apps whose lock this process holds
        self._depth = 0                  # open transaction() blocks
        self.conn = self._connect()
        self._create_schema()

    def _create_schema(self) -> None:
        """deployctl/sql/state.sql, once per version of it. Its ALTER TABLEs take ACCESS EXCLUSIVE locks even
        when they change nothing: run on every `status` or `promote`, they would block a running
        release, or deadlock with it. The schema's comment names the version in place."""
        text = SCHEMA_SQL.read_text()
        version = f"deployctl state schema {hashlib.sha256(text.encode()).hexdigest()[:16]}"

        def current() -> bool:
            row = self.execute("SELECT obj_description(to_regnamespace('deployctl'), 'pg_namespace') "
                               "AS version").fetchone()
            return bool(row and row["version"] == version)

        if current():
            return
        with self.transaction():
            # Two first runs at once must not race on CREATE TABLE IF NOT EXISTS.
            self.execute("SELECT pg_advisory_xact_lock(hashtext('deployctl.schema'))")
            if not current():
                self.execute(text)
                self.execute(sql.SQL("COMMENT ON SCHEMA deployctl IS {}").format(sql.Literal(version)))

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        return psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row, connect_timeout=10)

    def close(self) -> None:
        self.conn.close()

    def execute(self, query: Any, params: Any = None) -> psycopg.Cursor[dict[str, Any]]:
        try:
            return self.conn.execute(query, params)
        except psycopg.OperationalError as exc:
            if self._depth or not self._gone(exc):
                raise  # inside a transaction, or the server refused the statement itself
        self.reconnect()
        return self.conn.execute(query, params)

    def _gone(self, exc: psycopg.OperationalError) -> bool:
        # The session is lost: the socket closed, or the server ended it (57P01 admin_shutdown
        # on a restart, 57P02 crash_shutdown, 57P03 cannot_connect_now, 08xxx connection errors).
        return self.conn.broken or self.conn.closed or (exc.sqlstate or "").startswith(("57P", "08"))

    def reconnect(self) -> None:
        """A new session once the server answers again; the locks this process held, again."""
        def waiting(state: RetryCallState) -> None:
            log.warning("the state database is away; reconnecting", attempt=state.attempt_number,
                        database=safe_dsn(self.dsn))

        for attempt in Retrying(retry=retry_if_exception_type(psycopg.OperationalError),
                                stop=stop_after_delay(RECONNECT_S),
                                wait=wait_exponential(multiplier=0.2, max=5),
                                before_sleep=waiting, reraise=True):
            with attempt:
                conn = self._connect()
        self.conn.close()
        self.conn = conn
        for app in sorted(self._locked):
            got = self.conn.execute("SELECT pg_try_advisory_lock(hashtext(%s), hashtext(%s)) AS got",
                                    (_LOCK_NAMESPACE, app)).fetchone()
            if not got or not got["got"]:
                self._locked.discard(app)
                raise LockLost(f"{app}: another process took the lock while the state database was "
                               "away, and works on the release now; see `deployctl status`")
        log.info("reconnected to the state database", database=safe_dsn(self.dsn))

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        if not self._depth:
            self.execute("SELECT 1")  # a session the server ended while idle is found (and replaced) here
        self._depth += 1
        try:
            with self.conn.transaction():
                yield self.conn
        finally:
            self._depth -= 1

    # -- the lock ---------------------------------------------------------------------------

    def acquire(self, app: str, version: str, release_id: int | None = None) -> None:
        """Take the application's lock for this process's lifetime, or raise LockHeld."""
        got = self.execute(
            "SELECT pg_try_advisory_lock(hashtext(%s), hashtext(%s)) AS got",
            (_LOCK_NAMESPACE, app),
        ).fetchone()
        if not got or not got["got"]:
            row = self.execute(
                "SELECT holder, version, since, release_id FROM deployctl.locks WHERE app = %s",
                (app,),
            ).fetchone()
            who = (
                f"{row['holder']} (version {row['version']}, release #{row['release_id']}, "
                f"since {row['since']:%Y-%m-%d %H:%M:%S %Z})" if row else "another process"
            )
            raise LockHeld(f"{app} is being released by {who}: wait for it or stop it first")
        self._locked.add(app)
        self.execute(
            """INSERT INTO deployctl.locks (app, release_id, holder, version)
               VALUES (%s, %s, %s, %s)
               ON CONFLICT (app) DO UPDATE SET release_id = EXCLUDED.release_id,
                   holder = EXCLUDED.holder, version = EXCLUDED.version, since = clock_timestamp()""",
            (app, release_id, holder_name(), version),
        )

    def attach_lock(self, app: str, release_id: int) -> None:
        self.execute(
            "UPDATE deployctl.locks SET release_id = %s WHERE app = %s", (release_id, app)
        )

    def release_lock(self, app: str) -> None:
        if app not in self._locked:
            return  # lost while the database was away: the row is another process's now
        if self.conn.broken or self.conn.closed:
            self._locked.discard(app)  # the session that held it is gone, and the lock with it
            return
        self.execute("DELETE FROM deployctl.locks WHERE app = %s", (app,))
        self.execute(
            "SELECT pg_advisory_unlock(hashtext(%s), hashtext(%s))", (_LOCK_NAMESPACE, app)
        )
        self._locked.discard(app)

    def lock_holder(self, app: str) -> dict[str, Any]:
        """Who holds the lock (if the row says) and whether a live session really holds it."""
        alive = self.execute(
            """SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
                   AND classid::int = hashtext(%s) AND objid::int = hashtext(%s)) AS alive""",
            (_LOCK_NAMESPACE, app),
        ).fetchone()
        row = self.execute("SELECT * FROM deployctl.locks WHERE app = %s", (app,)).fetchone()
        return {**(row or {}), "alive": bool(alive and alive["alive"])}

    # -- freezes: `deployctl lock` ---------------------------------------------------------

    def freeze(self, app: str, message: str) -> dict[str, Any]:
        """Freeze `app` (no release starts until `unfreeze`), or raise LockHeld naming who did."""
        row = self.execute(
            """INSERT INTO deployctl.freezes (app, message, holder) VALUES (%s, %s, %s)
               ON CONFLICT (app) DO NOTHING RETURNING *""", (app, message, user_name())).fetchone()
        if row is None:
            raise LockHeld(f"{app} is already locked {frozen_text(self.frozen(app))}")
        return dict(row)

    def unfreeze(self, app: str) -> dict[str, Any] | None:
        """Lift `app`'s freeze; what it was (None: there was none)."""
        row = self.execute("DELETE FROM deployctl.freezes WHERE app = %s RETURNING *", (app,)).fetchone()
        return dict(row) if row else None

    def frozen(self, app: str) -> dict[str, Any] | None:
        row = self.execute("SELECT * FROM deployctl.freezes WHERE app = %s", (app,)).fetchone()
        return dict(row) if row else None

    # -- releases ---------------------------------------------------------------------------

    def create_release(
        self, *, app: str, version: str, from_version: str | None, playbook_path: str,
        playbook_text: str, playbook_sha256: str,
    ) -> int:
        try:
            with self.transaction():
                row = self.execute(
                    """INSERT INTO deployctl.releases (app, version, from_version, playbook_path,
                           playbook_text, playbook_sha256, started_by)
                       VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id""",
                    (app, version, from_version, playbook_path, playbook_text, playbook_sha256,
                     holder_name()),
                ).fetchone()
        except psycopg.errors.UniqueViolation:
            unfinished = self.open_release(app)
            assert unfinished is not None
            raise LockHeld(
                f"release #{unfinished.id} of {app} is unfinished ({unfinished.status}): "
                f"run `deployctl resume {unfinished.id}` or `deployctl rollback {unfinished.id}`"
            ) from None
        assert row is not None
        return int(row["id"])

    def _release(self, where: sql.Composable, params: tuple[Any, ...]) -> Release | None:
        row = self.execute(
            sql.SQL(
                """SELECT id, app, version, from_version, status, reason, playbook_path,
                          playbook_text, started_by, started_at, finished_at, ended_by
                   FROM deployctl.releases WHERE {} ORDER BY id DESC LIMIT 1"""
            ).format(where),
            params,
        ).fetchone()
        return Release(**row) if row else None

    def find(self, release_id: int) -> Release | None:
        return self._release(sql.SQL("id = %s"), (release_id,))

    def get(self, release_id: int) -> Release:
        release = self.find(release_id)
        if release is None:
            raise BadInput(f"no release #{release_id} in the journal (see `deployctl history`)")
        return release

    def open_release(self, app: str) -> Release | None:
        return self._release(sql.SQL("app = %s AND status = ANY(%s)"), (app, list(OPEN_STATUSES)))

    def latest(self, app: str | None = None) -> Release | None:
        if app is None:
            return self._release(sql.SQL("true"), ())
        return self._release(sql.SQL("app = %s"), (app,))

    def history(self, app: str | None = None, limit: int = 20) -> list[Release]:
        rows = self.execute(
            """SELECT id, app, version, from_version, status, reason, playbook_path,
                      playbook_text, started_by, started_at, finished_at, ended_by
               FROM deployctl.releases WHERE %(app)s::text IS NULL OR app = %(app)s
               ORDER BY id DESC LIMIT %(limit)s""",
            {"app": app, "limit": limit},
        ).fetchall()
        return [Release(**row) for row in rows]

    def set_status(self, release_id: int, status: str, reason: str | None = None,
                   ended_by: str | None = None) -> None:
        """The release's status; `reason` and `ended_by` (what ended it) once known, kept after."""
        finished = status in ("released", "rolled_back")
        self.execute(
            """UPDATE deployctl.releases SET status = %s, reason = COALESCE(%s, reason),
                   ended_by = COALESCE(%s, ended_by),
                   finished_at = CASE WHEN %s THEN clock_timestamp() END
               WHERE id = %s""",
            (status, reason, ended_by, finished, release_id),
        )

    # -- requests from other terminals ------------------------------------------------------

    def request(self, release_id: int, command: str) -> None:
        self.execute(
            "INSERT INTO deployctl.controls (release_id, command, requested_by) VALUES (%s, %s, %s)",
            (release_id, command, holder_name()))

    def take_request(self, release_id: int) -> dict[str, Any] | None:
        """The oldest request not handled yet, marked handled (one at a time: none is lost)."""
        return self.execute(
            """UPDATE deployctl.controls SET handled_at = clock_timestamp()
               WHERE id = (SELECT min(id) FROM deployctl.controls
                           WHERE release_id = %s AND handled_at IS NULL)
               RETURNING id, command, requested_by, requested_at""", (release_id,)).fetchone()

    def requests(self, release_id: int) -> list[dict[str, Any]]:
        """Every request left for the release, oldest first, and when each was handled."""
        return [dict(r) for r in self.execute(
            """SELECT command, requested_by, requested_at, handled_at FROM deployctl.controls
               WHERE release_id = %s ORDER BY id""", (release_id,)).fetchall()]

    # -- events -----------------------------------------------------------------------------

    def event(self, release_id: int, step: str, phase: str, detail: dict[str, Any] | None = None
              ) -> None:
        self.execute(
            "INSERT INTO deployctl.events (release_id, step, phase, detail) VALUES (%s, %s, %s, %s)",
            (release_id, step, phase, Jsonb(detail or {})),
        )

    def events(self, release_id: int) -> list[dict[str, Any]]:
        return self.execute(
            "SELECT step, phase, at, detail FROM deployctl.events WHERE release_id = %s ORDER BY id",
            (release_id,),
        ).fetchall()

    def step_phase(self, release_id: int, step: str) -> str | None:
        """The last phase recorded for a step (None: never started)."""
        row = self.execute(
            """SELECT phase FROM deployctl.events
               WHERE release_id = %s AND step = %s AND phase <> 'info'
               ORDER BY id DESC LIMIT 1""",
            (release_id, step),
        ).fetchone()
        return row["phase"] if row else None

    def step_detail(self, release_id: int, step: str) -> dict[str, Any]:
        """The detail of a step's `done` event (empty if it has none)."""
        row = self.execute(
            """SELECT detail FROM deployctl.events
               WHERE release_id = %s AND step = %s AND phase = 'done'
               ORDER BY id DESC LIMIT 1""",
            (release_id, step),
        ).fetchone()
        return dict(row["detail"]) if row else {}

    # -- snapshots and the live version -----------------------------------------------------

    def record_snapshot(self, release_id: int, path: str, manifest: dict[str, Any]) -> None:
        self.execute(
            """INSERT INTO deployctl.snapshots (release_id, path, manifest) VALUES (%s, %s, %s)
               ON CONFLICT (release_id) DO UPDATE
               SET path = EXCLUDED.path, manifest = EXCLUDED.manifest""",
            (release_id, path, Jsonb(manifest)),
        )

    def snapshot(self, release_id: int) -> dict[str, Any] | None:
        row = self.execute(
            "SELECT path, manifest FROM deployctl.snapshots WHERE release_id = %s", (release_id,)
        ).fetchone()
        return dict(row) if row else None

    def record_capture_objects(self, release_id: int, mode: str, name: str | None) -> None:
        """The capture's slot and publication (or triggers), written before they are created:
        a release that dies while creating them, or before its snapshot, leaves a row that
        `rollback`, `resume` and `cleanup` find them by."""
        self.execute(
            """INSERT INTO deployctl.captures (release_id, mode, slot, publication)
               VALUES (%s, %s, %s, %s) ON CONFLICT (release_id) DO NOTHING""",
            (release_id, mode, name if mode == "logical" else None,
             name if mode == "logical" else None),
        )

    def record_capture(self, release_id: int, mode: str, name: str | None, snapshot: str,
                       revision: str | None = None) -> None:
        """A capture that starts at `snapshot`, on a schema at Alembic `revision`."""
        self.record_capture_objects(release_id, mode, name)
        self.execute(
            """UPDATE deployctl.captures SET snapshot = %s, base_revision = %s
               WHERE release_id = %s AND snapshot IS NULL""",
            (snapshot, revision, release_id),
        )

    def capture(self, release_id: int) -> dict[str, Any] | None:
        """The capture of a release, once it has a starting point (its snapshot)."""
        found = self.capture_objects(release_id)
        return found if found and found["snapshot"] is not None else None

    def capture_objects(self, release_id: int) -> dict[str, Any] | None:
        """The capture of a release, also one whose snapshot was never taken."""
        row = self.execute(
            "SELECT * FROM deployctl.captures WHERE release_id = %s", (release_id,)
        ).fetchone()
        return dict(row) if row else None

    def set_capture(self, release_id: int, status: str, problem: str | None = None) -> None:
        """Mark a capture stopped or incomplete (an incomplete one never becomes whole again)."""
        self.execute(
            """UPDATE deployctl.captures SET problem = COALESCE(%s, problem),
                   status = CASE WHEN status = 'incomplete' THEN status ELSE %s END,
                   stopped_at = CASE WHEN %s = 'active' THEN NULL ELSE clock_timestamp() END
               WHERE release_id = %s""",
            (problem, status, status, release_id),
        )

    def set_live(self, app: str, version: str, release_id: int) -> None:
        self.execute(
            """INSERT INTO deployctl.apps (app, live_version, release_id) VALUES (%s, %s, %s)
               ON CONFLICT (app) DO UPDATE SET live_version = EXCLUDED.live_version,
                   release_id = EXCLUDED.release_id, updated_at = clock_timestamp()""",
            (app, version, release_id),
        )

    def live(self, app: str) -> dict[str, Any] | None:
        row = self.execute("SELECT * FROM deployctl.apps WHERE app = %s", (app,)).fetchone()
        return dict(row) if row else None


def open_releases(state_dsn: str, app: str) -> set[int] | None:
    """Ids of `app`'s unfinished releases, read without creating the journal (preflight touches
    nothing); None when the journal cannot be read."""
    try:
        with psycopg.connect(state_dsn, connect_timeout=10) as conn:
            found = conn.execute("SELECT to_regclass('deployctl.releases') IS NOT NULL").fetchone()
            if not found or not found[0]:
                return set()
            rows = conn.execute("SELECT id FROM deployctl.releases WHERE app = %s AND status = ANY(%s)",
                                (app, list(OPEN_STATUSES))).fetchall()
    except psycopg.OperationalError as exc:
        # No state database yet: deployctl never released anything there. (libpq reports a
        # failed connection without a SQLSTATE, hence the message, as the journal reads it.)
        dbname = conninfo_to_dict(state_dsn).get("dbname")
        return set() if f'database "{dbname}" does not exist' in str(exc) else None
    return {row[0] for row in rows}
