"""A whole `rollback.database` step on a database of about 1 GB, against pg_restore alone.

pgbench initialises a database at scale 70 (about 1 GB; BENCH_ROLLBACK_SCALE), with a primary key
added to pgbench_history so that every change can be replayed. A release's capture starts
(logical, lazy: nothing is decoded while users write), `snapshot.take()` dumps it, then pgbench
writes 100,000 changes (25,000 TPC-B-like transactions). `delta.restore_with_replay()` then does
what the `restore` rollback does: the snapshot restored beside the live database while the delta
is decoded, the replay, the pause with the tail, the swap. The baseline is `pg_restore -j 2` of
the same snapshot into an empty database, timed twice after the step (the mean of the two; before
it, the WAL they write would be the step's to read). One round: the setup is most of the time.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import psycopg

from bench.common import (
    Stopwatch,
    create_database,
    drop_database,
    emit,
    finish_release,
    new_release,
    open_journal,
    pgbench,
    progress,
)
from deployctl import delta, playbook
from deployctl.db import capture, restore, snapshot
from deployctl.journal import with_dbname
from deployctl.localpg import LocalCluster

DB = "bench_big"
SCALE = int(os.environ.get("BENCH_ROLLBACK_SCALE", "70"))
CHANGES = 100_000
CLIENTS = 4
SOCIAL = Path(__file__).resolve().parent.parent / "examples" / "social"


def _restore_alone(cluster: LocalCluster, snapshot_dir: Path) -> float:
    target = create_database(cluster, "bench_big_restore_alone")
    with Stopwatch() as timer:
        subprocess.run(["pg_restore", "-j", "2", "--no-owner", "-d", target, str(snapshot_dir)],
                       check=True, capture_output=True)
    drop_database(cluster, "bench_big_restore_alone")
    return timer.seconds


def _playbook(dsn: str, workdir: Path) -> playbook.Playbook:
    text = (f"app: bench\nversion: '2'\nworkdir: {workdir}\n"
            f"database: {{dsn: '{dsn}', rollback: restore}}\n"
            f"migrations: {{alembic_ini: {SOCIAL / 'alembic.ini'}, target: head}}\n"
            "deploy: {command: ['true'], health: {url: 'http://127.0.0.1:9/health'}}\n")
    return playbook.parse(text, workdir / "bench.yaml")


def run(cluster: LocalCluster, rounds: int) -> None:
    dsn = create_database(cluster, DB)
    progress(f"pgbench -i -s {SCALE}")
    pgbench(cluster, DB, "-i", "-q", "-s", str(SCALE))
    with open_journal(cluster) as journal, tempfile.TemporaryDirectory(prefix="deployctl-bench-") as tmp:
        folder = Path(tmp)
        pb = _playbook(dsn, folder)
        release_id = new_release(journal, pb.app)
        name = capture.object_name(pb.app, release_id)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY")
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]  # type: ignore[index]
        capture.start(dsn, "logical", name, ["public"])
        snapshot_dir = folder / "snapshot"
        progress(f"pg_dump of {size / (1 << 30):.2f} GiB")
        manifest = snapshot.take(dsn, snapshot_dir, jobs=2)
        journal.record_snapshot(release_id, str(snapshot_dir), manifest)
        journal.record_capture(release_id, "logical", name, manifest["snapshot"], None)
        progress(f"{CHANGES} changes by pgbench under lazy capture")
        pgbench(cluster, DB, "-c", str(CLIENTS), "-j", "2", "-t", str(CHANGES // 4 // CLIENTS))
        # The step first: WAL a restore writes, wherever, is WAL the release's slot must read.
        progress("the rollback.database step")
        with Stopwatch() as step:
            done = delta.restore_with_replay(journal, pb, release_id, snapshot_dir, None)
        progress("pg_restore alone, twice")
        alone = [_restore_alone(cluster, snapshot_dir) for _ in range(2)]
        names = restore.names_for(dsn, release_id)
        capture.stop(with_dbname(dsn, names.failed), name)  # the slot went with the old live database
        drop_database(cluster, names.failed)
        drop_database(cluster, DB)
        finish_release(journal, release_id)
    if done["replayed"] < CHANGES // 4:
        raise RuntimeError(f"the rollback replayed {done['replayed']} rows: the benchmark is not valid")
    baseline = sum(alone) / len(alone)
    emit("rollback_db_bytes", int(size))
    emit("rollback_db_changes", CHANGES)
    emit("rollback_db_rows_replayed", int(done["replayed"]))
    emit("rollback_db_pause_ms", float(done["pause_ms"]))
    emit("rollback_db_seconds", step.seconds)
    emit("pg_restore_alone_seconds", baseline)
    emit("rollback_db_vs_restore_ratio", step.seconds / baseline)
