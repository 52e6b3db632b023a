"""Restore a snapshot side by side, then swap it in for the live database.

The snapshot is restored into a new database while the current one keeps serving; only the
swap (two renames) needs the live database without connections. The failed database is kept
under a clear name for forensics. Each stage leaves a mark (the restored database's comment,
the database names) so that a restore killed at any point can simply be run again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from deployctl import failpoints, progress
from deployctl.db.capture import TRIGGER_SCHEMA
from deployctl.db.libpq import run_tool
from deployctl.db.snapshot import MANIFEST, verify
from deployctl.journal import with_dbname

_LOADED = "deployctl: snapshot restored for release {}"


@dataclass(frozen=True)
class Names:
    live: str
    restored: str
    failed: str

    @classmethod
    def for_release(cls, live: str, release_id: int) -> Names:
        # PostgreSQL truncates names at 63 bytes; keep the suffix that identifies the release.
        def name(suffix: str) -> str:
            return live[: 63 - len(suffix)] + suffix

        return cls(live, name(f"_restore_{release_id}"), name(f"_failed_{release_id}"))


def _exists(conn: psycopg.Connection[Any], dbname: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone() is not None


def _comment(conn: psycopg.Connection[Any], dbname: str) -> str | None:
    row = conn.execute(
        """SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s""",
        (dbname,),
    ).fetchone()
    return row[0] if row else None


def _allow_connections(conn: psycopg.Connection[Any], dbname: str, allow: bool) -> None:
    conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
        sql.Identifier(dbname), sql.Literal(allow)))


def _disconnect(conn: psycopg.Connection[Any], dbname: str, keep: int | None = None) -> int:
    """End every session on `dbname` but `keep`, and wait until they are gone: a session
    signalled in the middle of a COMMIT may still complete it."""
    rows = conn.execute(
        """SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
           WHERE datname = %s AND pid <> pg_backend_pid() AND pid IS DISTINCT FROM %s""",
        (dbname, keep),
    ).fetchall()
    return len(rows)


def names_for(dsn: str, release_id: int) -> Names:
    return Names.for_release(str(conninfo_to_dict(dsn)["dbname"]), release_id)


def swap_started(dsn: str, release_id: int) -> bool:
    """Whether the live database was already renamed away (kept as `failed`) for this release."""
    with psycopg.connect(with_dbname(dsn, "postgres"), autocommit=True) as admin:
        return _exists(admin, names_for(dsn, release_id).failed)


def reopen(dsn: str) -> None:
    """Let the live database take connections again: a swap killed before its first rename
    left it refusing them."""
    with psycopg.connect(with_dbname(dsn, "postgres"), autocommit=True) as admin:
        live = conninfo_to_dict(dsn).get("dbname")
        if live and _exists(admin, str(live)):
            _allow_connections(admin, str(live), True)


def interrupted_swap(dsn: str, release_id: int) -> str | None:
    """What a swap killed halfway left: the live database refusing connections, or gone (renamed
    to `failed`, the restored one not yet in its place). None when neither."""
    names = names_for(dsn, release_id)
    with psycopg.connect(with_dbname(dsn, "postgres"), autocommit=True, connect_timeout=10) as admin:
        if _exists(admin, names.failed) and not _exists(admin, names.live):
            return (f"database {names.live} is missing: a swap was killed after renaming it to "
                    f"{names.failed}")
        row = admin.execute("SELECT datallowconn FROM pg_database WHERE datname = %s",
                            (names.live,)).fetchone()
        if row and not row[0] and _comment(admin, names.restored) == _LOADED.format(release_id):
            return f"database {names.live} refuses connections: a swap was killed before renaming it"
    return None


def finish_interrupted_swap(dsn: str, release_id: int) -> str | None:
    """Blue's database back first: a swap killed after its first rename is completed (the tail
    was replayed before it), one killed before it lets the live database take connections again.
    Returns what it found, None when nothing was wrong."""
    found = interrupted_swap(dsn, release_id)
    if found is None:
        return None
    if swap_started(dsn, release_id):
        swap(dsn, names_for(dsn, release_id))
    else:
        reopen(dsn)
    return found


def kept_copies(dsn: str) -> list[tuple[str, int]]:
    """The live database's side-by-side restores and kept failed databases, with the release
    each belongs to."""
    live = str(conninfo_to_dict(dsn)["dbname"])
    with psycopg.connect(with_dbname(dsn, "postgres"), autocommit=True) as admin:
        names = [n for (n,) in admin.execute(
            r"SELECT datname FROM pg_database WHERE datname ~ '_(restore|failed)_\d+$' ORDER BY 1")]
    found = []
    for name in names:
        release_id = int(name.rsplit("_", 1)[1])
        if name in (Names.for_release(live, release_id).restored,
                    Names.for_release(live, release_id).failed):
            found.append((name, release_id))
    return found


def drop_unswapped(dsn: str, release_id: int) -> None:
    """Drop this release's restored copy if it never took the live database's place."""
    names = names_for(dsn, release_id)
    with psycopg.connect(with_dbname(dsn, "postgres"), autocommit=True) as admin:
        if _exists(admin, names.failed):
            return
    drop_copy(dsn, names.restored)


def drop_copy(dsn: str, name: str) -> None:
    with psycopg.connect(with_dbname(dsn, "postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def in_progress(dsn: str, release_id: int) -> bool:
    """Whether a restore for this release was loaded (and maybe half swapped) already."""
    names = names_for(dsn, release_id)
    with psycopg.connect(with_dbname(dsn, "postgres"), autocommit=True) as admin:
        return _exists(admin, names.failed) or _comment(admin, names.restored) == _LOADED.format(
            release_id)


def load(dsn: str, snapshot: Path, release_id: int, *, jobs: int) -> Names:
    """Restore `snapshot` into a new database beside the live one (idempotent)."""
    names = names_for(dsn, release_id)
    live = names.live
    marker = _LOADED.format(release_id)
    with psycopg.connect(with_dbname(dsn, "postgres"), autocommit=True) as admin:
        if _exists(admin, names.failed) or _comment(admin, names.restored) == marker:
            return names  # loaded before (and maybe swapped already): see in_progress()
        verify(snapshot)
        owner = admin.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (live,)
        ).fetchone()
        if _exists(admin, names.restored):  # a restore that was interrupted
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(
                sql.Identifier(names.restored)))
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 OWNER {}").format(
            sql.Identifier(names.restored), sql.Identifier(owner[0] if owner else "postgres")))
        total = json.loads((snapshot / MANIFEST).read_text()).get("database_bytes")

        def restored_bytes() -> float:
            row = admin.execute("SELECT pg_database_size(%s)", (names.restored,)).fetchone()
            return float(row[0]) if row else 0.0

        with progress.watching("restore", restored_bytes, total):
            run_tool("pg_restore", ["-j", str(jobs), "--exit-on-error", str(snapshot)],
                     with_dbname(dsn, names.restored))
        with psycopg.connect(with_dbname(dsn, names.restored), autocommit=True) as restored:
            # The dump may hold the capture triggers of this very release: not in the copy.
            restored.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(TRIGGER_SCHEMA)))
        admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            sql.Identifier(names.restored), sql.Literal(marker)))
    return names


def swap(dsn: str, names: Names,
         tail: Callable[[psycopg.Connection[Any]], dict[str, Any]] | None = None,
         pausing: AbstractContextManager[Any] | None = None) -> dict[str, Any]:
    """Put the restored database in the live one's place; keep the live one as `failed`.

    Writes pause from the moment the live database refuses connections until the restored one
    takes its name, inside `pausing` (the router's maintenance mode: users get 503 with
    Retry-After rather than errors). In between, `tail` runs on the one connection to the live
    database that is kept open (to drain and replay the last changes). Returns the pause in
    milliseconds.
    """
    result: dict[str, Any] = {}
    with psycopg.connect(with_dbname(dsn, "postgres"), autocommit=True) as admin:
        with pausing or nullcontext():
            started = time.monotonic()
            if not _exists(admin, names.failed):
                kept = psycopg.connect(dsn, autocommit=True) if tail else None
                try:
                    _allow_connections(admin, names.live, False)
                    failpoints.hit("rollback.database", "refusing")
                    result["connections_closed"] = _disconnect(
                        admin, names.live, keep=kept.info.backend_pid if kept else None)
                    if tail and kept:
                        result.update(tail(kept))
                        kept.close()  # a database with a session cannot be renamed
                    admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(names.live), sql.Identifier(names.failed)))
                    failpoints.hit("rollback.database", "renamed")
                except BaseException:
                    # Not swapped: the live database must take connections again (blue runs on it).
                    _allow_connections(admin, names.live, True)
                    raise
                finally:
                    if kept:
                        kept.close()
            if not _exists(admin, names.live):
                admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    sql.Identifier(names.restored), sql.Identifier(names.live)))
            _allow_connections(admin, names.live, True)
            result["pause_ms"] = round((time.monotonic() - started) * 1000, 1)
        admin.execute(sql.SQL("COMMENT ON DATABASE {} IS NULL").format(sql.Identifier(names.live)))
        _allow_connections(admin, names.failed, True)
        admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            sql.Identifier(names.failed),
            sql.Literal("deployctl: the live database at rollback, kept for forensics")))
    return {"connections_closed": 0, **result, "kept_as": names.failed}
