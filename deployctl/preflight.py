"""Preflight: can this release go safely? Each check passes, warns or fails with one line.

A failing preflight touches nothing: the release is recorded as `refused` and exits 2.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import psycopg

from deployctl.db import capture
from deployctl.db.libpq import tool_version
from deployctl.db.migrate import Alembic
from deployctl.errors import DeployctlError
from deployctl.fleet import routers, versions
from deployctl.playbook import Playbook
from deployctl.redact import safe_dsn

# A pg_dump directory is usually smaller than the database; leave room for the unexpected.
DISK_MARGIN = 1.2


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
            row = conn.execute(
                """SELECT current_setting('server_version_num')::int,
                          current_setting('server_version'),
                          pg_database_size(current_database())"""
            ).fetchone()
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return [Check("database", "fail", f"{safe_dsn(pb.database.dsn)} is unreachable: {reason}; "
                      "check database.dsn and that the server is up")], {}
    assert row is not None
    facts = {"server_version_num": row[0], "server_version": row[1], "database_bytes": row[2]}
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


def _disk(workdir: Path, database_bytes: int) -> Check:
    probe = workdir
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    needed = int(database_bytes * DISK_MARGIN)
    mib = 1 << 20
    if free < needed:
        return Check("disk", "fail", f"{free // mib} MiB free in {probe}, the snapshot needs about "
                     f"{needed // mib} MiB: free space or point workdir elsewhere")
    return Check("disk", "pass", f"{free // mib} MiB free for a snapshot of about "
                 f"{max(needed // mib, 1)} MiB")


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


def _capture(pb: Playbook) -> Check:
    """Whether every user action of the release can be captured."""
    with psycopg.connect(pb.database.dsn, connect_timeout=10) as conn:
        mode = capture.capture_mode(conn, "auto")
        keyless = capture.tables_without_key(conn, pb.capture.schemas)
    if pb.capture.mode == "logical" and mode != "logical":
        return Check("capture", "fail", "logical capture needs wal_level=logical, PostgreSQL 15+ and a "
                     "superuser: change the server or role, or set capture.mode: trigger")
    if keyless:
        return Check("capture", "fail", f"tables without a primary key: {', '.join(keyless)}; their "
                     "changes could not be replayed: add primary keys, or move them out of "
                     f"capture.schemas ({', '.join(pb.capture.schemas)})")
    chosen = mode if pb.capture.mode == "auto" else pb.capture.mode
    return Check("capture", "pass", f"{chosen} capture of schemas {', '.join(pb.capture.schemas)}")


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


def run(pb: Playbook, alembic: Alembic) -> list[Check]:
    checks, facts = _database(pb)
    if not facts:
        return checks
    checks.append(_pg_dump(facts["server_version_num"]))
    checks.append(_disk(pb.workdir, facts["database_bytes"]))
    checks.append(_migrations(alembic, pb.migrations.target))
    checks.append(_capture(pb))
    if pb.deploy.transport == "ssh":
        checks.append(_hosts(pb))
    if pb.router is not None:
        checks.append(_router(pb))
    return checks
