"""Preflight: can this release go safely? Each check passes, warns or fails with one line.

The same checks run as `deployctl check` and as the first step of every release. They only
read: a failing preflight touches nothing, and the release is recorded as `refused` (exit 2).
"Could not measure" is a warning, never a silent pass.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql

from deployctl import certs
from deployctl.db import capture, lint, privileges, slots
from deployctl.db.libpq import tool_version
from deployctl.db.migrate import Alembic
from deployctl.errors import DeployctlError
from deployctl.fleet import routers, versions
from deployctl.journal import default_state_dsn, open_releases
from deployctl.playbook import Playbook
from deployctl.redact import safe_dsn

# A pg_dump directory is usually smaller than the database; leave room for the unexpected.
DISK_MARGIN = 1.2
CERT_WARN = timedelta(days=14)
CERT_FAIL = timedelta(days=3)
# A plain CREATE INDEX blocks writes to its table while it builds: from about this size on,
# users notice (seconds of stalled writes on common hardware).
BIG_TABLE = 100 << 20
MIB = 1 << 20


@dataclass(frozen=True)
class Check:
    name: str
    status: Literal["pass", "warn", "fail"]
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _database(pb: Playbook) -> tuple[list[Check], dict[str, Any]]:
    try:
        with psycopg.connect(pb.database.dsn, connect_timeout=10) as conn:
            # pg_settings hides data_directory from roles without pg_read_all_settings (NULL
            # here) where current_setting() would raise.
            row = conn.execute(
                """SELECT current_setting('server_version_num')::int,
                          current_setting('server_version'),
                          pg_database_size(current_database()),
                          (SELECT setting FROM pg_settings WHERE name = 'data_directory'),
                          current_setting('port')::int,
                          extract(epoch FROM pg_postmaster_start_time())::float8"""
            ).fetchone()
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return [Check("database", "fail", f"{safe_dsn(pb.database.dsn)} is unreachable: {reason}; "
                      "check database.dsn and that the server is up")], {}
    assert row is not None
    facts = {"server_version_num": row[0], "server_version": row[1], "database_bytes": row[2],
             "data_directory": row[3], "port": row[4], "started": row[5]}
    return [Check("database", "pass", f"reachable, PostgreSQL {row[1]}")], facts


def _pg_dump(server_version_num: int) -> Check:
    try:
        major, minor = tool_version("pg_dump")
    except (DeployctlError, OSError) as exc:
        return Check("pg_dump", "fail", str(exc))
    server_major = server_version_num // 10000
    if major < server_major:
        return Check("pg_dump", "fail", f"pg_dump {major}.{minor} is older than the server "
                     f"({server_major}): install the PostgreSQL {server_major} client tools")
    return Check("pg_dump", "pass", f"pg_dump {major}.{minor} can dump server {server_major}")


def _existing(path: Path) -> Path:
    """`path`, or its nearest existing parent (the workdir is created later)."""
    while not path.exists():
        path = path.parent
    return path


def _size(n: int) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):.1f} GiB"
    if n >= 10 * MIB:
        return f"{n // MIB} MiB"
    return f"{n / MIB:.1f} MiB" if n >= MIB else f"{n // 1024} KiB"


def _disk(workdir: Path, database_bytes: int) -> Check:
    probe = _existing(workdir)
    free = shutil.disk_usage(probe).free
    needed = int(database_bytes * DISK_MARGIN)
    if free < needed:
        return Check("disk", "fail", f"{free // MIB} MiB free in {probe}, the snapshot needs about "
                     f"{needed // MIB} MiB: free space or point workdir elsewhere")
    return Check("disk", "pass", f"{free // MIB} MiB free for a snapshot of about "
                 f"{max(needed // MIB, 1)} MiB")


def _server_data_directory(facts: dict[str, Any]) -> tuple[Path | None, str]:
    """The server's data directory when it is on this machine, else why it cannot be seen."""
    datadir = facts["data_directory"]
    if not datadir:
        return None, "this role may not read data_directory: grant it pg_read_all_settings"
    try:
        lines = (Path(datadir) / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None, (f"{datadir} cannot be read here: the server runs on another machine or "
                      "as another user")
    # postmaster.pid: pid, data directory, start time (epoch seconds), port, … A folder of the
    # same name could belong to another server (a container's volume): match port and start.
    try:
        same = lines[3].strip() == str(facts["port"]) and abs(int(lines[2]) - facts["started"]) <= 2
    except (IndexError, ValueError):
        same = False
    if not same:
        return None, f"{datadir} here belongs to another server than the one connected to"
    return Path(datadir), ""


def _restore_disk(pb: Playbook, facts: dict[str, Any]) -> Check:
    """Room on the database server for a second copy of the database (a `restore` rollback)."""
    needed = int(facts["database_bytes"] * DISK_MARGIN)
    datadir, why_not = _server_data_directory(facts)
    if datadir is None:
        return Check("restore_disk", "warn", f"cannot measure free space on the database server "
                     f"({why_not}); a side-by-side restore needs about {_size(needed)} in its data "
                     "directory: check it on the server (df)")
    shared = ""
    if datadir.stat().st_dev == _existing(pb.workdir).stat().st_dev:
        needed *= 2  # snapshot and restored copy side by side on one filesystem
        shared = ", with the snapshot on the same filesystem"
    free = shutil.disk_usage(datadir).free
    if free >= needed:
        return Check("restore_disk", "pass", f"{free // MIB} MiB free in {datadir} for a "
                     f"side-by-side restore of about {_size(needed)}{shared}")
    mode = pb.database.rollback
    return Check("restore_disk", "fail" if mode == "restore" else "warn",
                 f"{free // MIB} MiB free in {datadir}, a side-by-side restore needs about "
                 f"{_size(needed)}{shared}: free space on the database server"
                 + ("" if mode == "restore" else f" (only a restore needs it; this playbook rolls "
                                                 f"back by {mode})"))


def _wal_disk(pb: Playbook, facts: dict[str, Any]) -> Check:
    """Room on the database server for the WAL a logical capture's slot may hold."""
    try:
        with psycopg.connect(pb.database.dsn, connect_timeout=10) as conn:
            if capture.capture_mode(conn, pb.capture.mode) != "logical":
                return Check("wal_disk", "pass", "trigger capture: no replication slot holds WAL")
            budget = capture.wal_budget(conn, pb.capture.max_retained_wal)
    except psycopg.Error as exc:
        return Check("wal_disk", "warn", f"could not read the server's settings: {str(exc).strip()}")
    datadir, why_not = _server_data_directory(facts)
    if datadir is None:
        return Check("wal_disk", "warn", f"cannot measure free space on the database server "
                     f"({why_not}); the capture's slot may hold up to {_size(budget)} of WAL "
                     "(capture.max_retained_wal): check it on the server (df)")
    free = shutil.disk_usage(datadir / "pg_wal").free
    if free < budget:
        return Check("wal_disk", "warn", f"{free // MIB} MiB free for WAL in {datadir / 'pg_wal'}, "
                     f"the capture's slot may hold up to {_size(budget)}: lower "
                     "capture.max_retained_wal or free space on the database server")
    return Check("wal_disk", "pass", f"{free // MIB} MiB free for WAL, the capture's slot holds "
                 f"at most about {_size(budget)}")


def _migrations(alembic: Alembic, target: str) -> Check:
    try:
        resolved = alembic.resolve(target)
        current = alembic.current()
        if current is not None:
            alembic.resolve(current)
    except DeployctlError as exc:
        return Check("migrations", "fail", str(exc))
    except psycopg.Error as exc:
        return Check("migrations", "fail", f"cannot read the current revision: {exc}")
    return Check("migrations", "pass", f"database at {current or 'base'}, target {resolved}")


def _lint(pb: Playbook, alembic: Alembic) -> Check:
    """The upgrade's offline SQL, for what breaks the old version and which rollbacks remain."""
    current, target = alembic.current(), alembic.resolve(pb.migrations.target)
    if current == target:
        return Check("migration_lint", "pass", f"database already at {current or 'base'}: "
                     "no migration to lint")
    span = f"{current or 'base'} → {target or 'base'}"
    try:
        found = lint.lint(alembic.offline_sql(current, target or "base"))
    except DeployctlError as exc:
        return Check("migration_lint", "warn", f"cannot lint {span}: {exc}; make the migration run "
                     "offline (--sql) or review it by hand for drops, renames and type changes")
    mode = pb.database.rollback
    notes = _lint_notes(pb, found)
    if not found.contracting:
        return Check("migration_lint", "warn" if notes else "pass",
                     f"{span} is expand-only ({found.statements} statements): the old version keeps "
                     "working on it; rollback by keep, downgrade or restore" + notes)
    breaking = ", ".join(str(f) for f in found.findings)
    if mode == "keep":
        return Check("migration_lint", "fail", f"{span} breaks the old version while both run: "
                     f"{breaking}; rollback `keep` is impossible after it (possible: downgrade, "
                     "restore): set database.rollback to restore or downgrade, or ship the "
                     "contraction in a later release" + notes)
    return Check("migration_lint", "warn", f"{span} breaks the old version while both run: {breaking}; "
                 f"rollback by downgrade or restore (this playbook: {mode}), not keep: "
                 "expand now and contract in a later release to keep the old version working" + notes)


def _lint_notes(pb: Playbook, found: lint.Lint) -> str:
    """What else the migration's SQL tells: code the lint cannot read, blocking index builds."""
    notes = []
    if found.opaque:
        notes.append(f"{found.opaque} DO block(s) not linted: review them by hand")
    if found.index_builds:
        with psycopg.connect(pb.database.dsn, connect_timeout=10) as conn:
            for table in found.index_builds:
                row = conn.execute("SELECT coalesce(pg_total_relation_size(to_regclass(%s)), 0)",
                                   (sql.Identifier(*table.split(".")).as_string(conn),)
                                   ).fetchone()
                if row and row[0] >= BIG_TABLE:
                    notes.append(f"CREATE INDEX on {table} ({_size(row[0])}) blocks its writes while "
                                 "it builds: build it CONCURRENTLY")
    return "".join(f"; {n}" for n in notes)


def _state_dsn(pb: Playbook) -> str:
    return pb.database.state_dsn or default_state_dsn(pb.database.dsn)


def _capture(pb: Playbook, release_id: int | None) -> Check:
    """Whether every user action of the release can be captured."""
    with psycopg.connect(pb.database.dsn, connect_timeout=10) as conn:
        mode = capture.capture_mode(conn, "auto")
        keyless = capture.tables_without_key(conn, pb.capture.schemas)
        triggers = capture.triggers_installed(conn)
    if triggers and open_releases(_state_dsn(pb), pb.app) in (set(), {release_id}):
        # No other unfinished release owns them (this one creates its own after preflight):
        # every user write still goes into a capture table for nobody.
        return Check("capture", "fail", f"capture triggers (schema {capture.TRIGGER_SCHEMA}) left by "
                     "a release that ended without dropping them still record every write: "
                     "`deployctl cleanup -p PLAYBOOK` drops them")
    if pb.capture.mode == "logical" and mode != "logical":
        return Check("capture", "fail", "logical capture needs wal_level=logical, PostgreSQL 15+ and a "
                     "superuser: change the server or role, or set capture.mode: trigger")
    if keyless:
        return Check("capture", "fail", f"tables without a primary key: {', '.join(keyless)}; their "
                     "changes could not be replayed: add primary keys, or move them out of "
                     f"capture.schemas ({', '.join(pb.capture.schemas)})")
    chosen = mode if pb.capture.mode == "auto" else pb.capture.mode
    return Check("capture", "pass", f"{chosen} capture of schemas {', '.join(pb.capture.schemas)}")


def _privileges(pb: Playbook) -> Check:
    """What a role that is not a superuser may lack (managed PostgreSQL)."""
    with psycopg.connect(pb.database.dsn, connect_timeout=10) as conn:
        mode = capture.capture_mode(conn, pb.capture.mode)
        fails, warns = privileges.problems(conn, pb.capture.schemas, mode, pb.database.rollback)
    if fails or warns:
        return Check("privileges", "fail" if fails else "warn", "; ".join(fails + warns))
    return Check("privileges", "pass", "the role may capture, restore and replay")


def _slots(pb: Playbook) -> Check:
    """Replication slots no running release owns, and the WAL they make the server keep."""
    with psycopg.connect(pb.database.dsn, connect_timeout=10) as conn:
        found = slots.list_slots(conn)
        limit, limit_source = slots.wal_limit(conn)
    if not found:
        return Check("slots", "pass", "no replication slots")
    mine = capture.object_name(pb.app, 0)[:-1]
    # The journal says which releases are unfinished; read it only when it matters.
    open_ids = open_releases(_state_dsn(pb), pb.app) if any(
        s.name.startswith(mine) for s in found) else set()
    orphans = slots.orphans(found, pb.app, open_ids)
    if not orphans:
        return Check("slots", "pass", f"{len(found)} replication slot(s), all in use")
    listing = ", ".join(f"{o.slot.name} ({o.why}, holds {_size(o.slot.held_bytes)} of WAL"
                        + (", lost" if o.slot.wal_status == "lost" else "") + ")" for o in orphans)
    fix = ("`deployctl cleanup -p PLAYBOOK` drops deployctl's; SELECT pg_drop_replication_slot('NAME') "
           "drops another once nothing needs it")
    worst = max(o.slot.held_bytes for o in orphans)
    if any(o.left_by_release for o in orphans):
        # This app's own: its next capture would start beside a slot nobody drains.
        return Check("slots", "fail", f"capture slots of {pb.app}'s ended releases: {listing}: {fix}")
    if worst > limit:
        return Check("slots", "fail", f"replication slots no running release owns: {listing}; more "
                     f"than {_size(limit)} ({limit_source}) puts the server's disk at risk: {fix}")
    return Check("slots", "warn", f"replication slots no running release owns: {listing}; the server "
                 f"keeps that WAL until they go: {fix}")


def _certificate(url: str, now: datetime) -> Check:
    """The certificate `url` serves: warn under 14 days, fail under 3 or when unreachable."""
    try:
        not_after = certs.served_not_after(url)
    except (OSError, ValueError) as exc:
        reason = str(exc) or type(exc).__name__
        return Check("tls", "fail", f"{url} is unreachable over https ({reason}): check "
                     "public_urls and that the endpoint is up")
    left = not_after - now
    days = round(left / timedelta(days=1))
    date = f"{not_after:%Y-%m-%d %H:%M} UTC"
    if left <= timedelta(0):
        return Check("tls", "fail", f"{url}: certificate expired on {date}: renew it now, and find "
                     "out why the renewal did not run")
    if left < CERT_FAIL:
        return Check("tls", "fail", f"{url}: certificate expires on {date}, in "
                     f"{left // timedelta(hours=1)} hours: renew it before releasing")
    if left < CERT_WARN:
        return Check("tls", "warn", f"{url}: certificate expires on {date}, in {days} days: "
                     "renew it, and check the automatic renewal")
    return Check("tls", "pass", f"{url}: certificate valid until {date} ({days} days)")


def _certificates(urls: list[str]) -> list[Check]:
    if not urls:
        return []
    now = datetime.now(UTC)
    # In parallel: each may take its whole timeout when an endpoint does not answer.
    with ThreadPoolExecutor(max_workers=min(8, len(urls))) as pool:
        return list(pool.map(lambda url: _certificate(url, now), urls))


def _hosts(pb: Playbook) -> Check:
    """Every host answers, with the host key known_hosts holds, and takes our key."""
    problems = versions.unreachable(pb)
    if problems:
        return Check("hosts", "fail", "; ".join(problems.values()))
    assert pb.deploy.ssh is not None
    return Check("hosts", "pass", f"{len(pb.deploy.ssh.hosts)} hosts reachable with known host keys")


def _router(pb: Playbook) -> Check:
    """The router answers (a release that cannot move users back must not start)."""
    assert pb.router is not None
    try:
        routers.get(pb.router, pb.app).readings()
    except DeployctlError as exc:
        return Check("router", "fail", str(exc))
    return Check("router", "pass", f"{pb.router.type} answers")


def run(pb: Playbook, alembic: Alembic, release_id: int | None = None) -> list[Check]:
    """Every check that applies to `pb` (released as `release_id`, if it is), in order; none of
    them changes anything."""
    checks, facts = _database(pb)
    if not facts:
        return checks
    checks.append(_pg_dump(facts["server_version_num"]))
    checks.append(_disk(pb.workdir, facts["database_bytes"]))
    checks.append(_restore_disk(pb, facts))
    checks.append(_wal_disk(pb, facts))
    checks.append(_migrations(alembic, pb.migrations.target))
    if checks[-1].status != "fail":  # an unknown target has no SQL to lint
        checks.append(_lint(pb, alembic))
    checks.append(_capture(pb, release_id))
    checks.append(_privileges(pb))
    checks.append(_slots(pb))
    checks.extend(_certificates(pb.public_urls))
    if pb.deploy.transport == "ssh":
        checks.append(_hosts(pb))
    if pb.router is not None:
        checks.append(_router(pb))
    return checks


def check(pb: Playbook) -> list[Check]:
    """`deployctl check`: the release's preflight, outside any release."""
    db = pb.database
    alembic = Alembic(pb.migrations.alembic_ini, db.dsn, pb.migrations.url_env, db.lock_timeout,
                      db.statement_timeout)
    return run(pb, alembic)
