"""Snapshot: pg_dump -Fd -j N of the application database on an exported snapshot.

The exported snapshot (`pg_export_snapshot()` in a REPEATABLE READ transaction) pins the point
in time; its `pg_current_snapshot()` and WAL position are recorded in the manifest so that the
change capture can start at exactly the same point. Every file of the dump is listed in
manifest.json with its size and sha256, so a snapshot can be verified before it is restored.
Dumps are written to a `.partial` folder and renamed when complete: a killed dump never looks
finished.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from deployctl import progress
from deployctl.db.libpq import run_tool, tool_version
from deployctl.errors import StepFailed
from deployctl.files import private_dir, write_private

MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def alembic_revision(conn: psycopg.Connection[Any]) -> str | None:
    """The database's Alembic revision (None before the first migration)."""
    exists = conn.execute("SELECT to_regclass('alembic_version') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return None
    row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return str(row[0]) if row else None


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def take(dsn: str, dest: Path, *, jobs: int) -> dict[str, Any]:
    """Dump the database at `dsn` into `dest` (a folder) and return its manifest.

    If `dest` already holds a verified snapshot, it is returned as is (the step ran before).
    """
    if (dest / MANIFEST).exists():
        return verify(dest)
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    private_dir(dest.parent)
    with psycopg.connect(dsn) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        row = conn.execute(
            """SELECT pg_export_snapshot(), pg_current_snapshot()::text,
                      pg_current_wal_lsn()::text, current_setting('server_version_num')::int,
                      current_setting('server_version'), pg_database_size(current_database())"""
        ).fetchone()
        assert row is not None
        snapshot_id, xip_snapshot, lsn, server_num, server_version, db_size = row
        revision = alembic_revision(conn)
        # The exported snapshot lives as long as this transaction: keep it open during pg_dump.
        # Compressed: the dump's final size is not known in advance, only what is written.
        with progress.watching("snapshot", lambda: folder_bytes(partial), None):
            run_tool("pg_dump", ["-Fd", "-j", str(jobs), f"--snapshot={snapshot_id}",
                                 "--no-publications", "--no-subscriptions", "-f", str(partial)], dsn)
    files: list[dict[str, Any]] = []
    for path in sorted(partial.rglob("*")):
        if path.is_file():
            path.chmod(0o600)
            files.append({"name": str(path.relative_to(partial)), "bytes": path.stat().st_size,
                          "sha256": _sha256(path)})
    partial.chmod(0o700)
    manifest = {
        "format": "pg_dump directory",
        "created_at": datetime.now(UTC).isoformat(),
        "server_version": server_version,
        "server_version_num": server_num,
        "pg_dump_version": ".".join(map(str, tool_version("pg_dump"))),
        "database_bytes": db_size,
        "alembic_revision": revision,
        "snapshot": xip_snapshot,
        "lsn": lsn,
        "jobs": jobs,
        "bytes": sum(f["bytes"] for f in files),
        "files": files,
    }
    manifest_path = partial / MANIFEST
    write_private(manifest_path, json.dumps(manifest, indent=2).encode())
    partial.replace(dest)
    return manifest


def verify(dest: Path) -> dict[str, Any]:
    """Check every file of a snapshot against its manifest; return the manifest."""
    manifest_path = dest / MANIFEST
    if not manifest_path.exists():
        raise StepFailed(f"snapshot {dest} has no {MANIFEST}: it is incomplete")
    manifest: dict[str, Any] = json.loads(manifest_path.read_text())
    for entry in manifest["files"]:
        path = dest / entry["name"]
        if not path.is_file():
            raise StepFailed(f"snapshot {dest} is missing {entry['name']}")
        if path.stat().st_size != entry["bytes"] or _sha256(path) != entry["sha256"]:
            raise StepFailed(f"snapshot {dest}: {entry['name']} does not match its sha256")
    return manifest
