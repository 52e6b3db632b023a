"""What the benchmarks share: the throwaway cluster, the journal, timing and output."""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from deployctl.db import replay
from deployctl.db.capture import CaptureInfo, XidSnapshot
from deployctl.journal import Journal
from deployctl.localpg import LocalCluster

STATE_DB = "deployctl"


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def emit(name: str, value: float | int) -> None:
    """One result line: the only thing the benchmarks write to stdout."""
    text = str(value) if isinstance(value, int) else f"{value:.4g}" if abs(value) < 1000 else f"{value:.1f}"
    print(f"{name} {text}", flush=True)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


# What a production server runs with (the throwaway clusters turn them off).
DURABLE = {"fsync": "on", "full_page_writes": "on", "synchronous_commit": "on"}


@contextmanager
def throwaway_cluster(settings: dict[str, str] | None = None) -> Iterator[LocalCluster]:
    """A fresh cluster in a temp folder, destroyed at the end whatever happens."""
    folder = tempfile.mkdtemp(prefix="deployctl-bench-")
    cluster = LocalCluster(folder, settings)
    try:
        cluster.start()
        progress(f"cluster up on port {cluster.port}")
        yield cluster
    finally:
        cluster.destroy()
        progress("cluster destroyed")


def pgbench(cluster: LocalCluster, db: str, *args: str) -> str:
    """Run pgbench against `db`; its output, or RuntimeError with its error."""
    argv = ["pgbench", "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", *args, db]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"pgbench failed: {done.stderr.strip()}")
    return done.stdout


def admin(cluster: LocalCluster) -> psycopg.Connection[Any]:
    return psycopg.connect(cluster.dsn(), autocommit=True)


def create_database(cluster: LocalCluster, name: str, template: str | None = None) -> str:
    """(Re)create database `name`, empty or as a copy of `template`; return its DSN."""
    with admin(cluster) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if template:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)))
        else:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return cluster.dsn(name)


def drop_database(cluster: LocalCluster, name: str) -> None:
    with admin(cluster) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def open_journal(cluster: LocalCluster) -> Journal:
    return Journal(cluster.dsn(STATE_DB))


def new_release(journal: Journal, app: str) -> int:
    """A release row for a capture to hang its changes on."""
    return journal.create_release(app=app, version="bench", from_version=None,
                                  playbook_path="bench", playbook_text="", playbook_sha256="")


def capture_info(journal: Journal, release_id: int, mode: str, name: str, snapshot: str) -> CaptureInfo:
    """Record the capture in the journal, as the snapshot step does, and describe it."""
    journal.record_capture(release_id, mode, name, snapshot)
    return CaptureInfo(release_id, mode, name if mode == "logical" else None, XidSnapshot.parse(snapshot))


def finish_release(journal: Journal, release_id: int) -> None:
    """Close the release and drop its delta, so the next run starts from an empty journal."""
    journal.conn.execute("DELETE FROM deployctl.changes WHERE release_id = %s", (release_id,))
    journal.conn.execute("DELETE FROM deployctl.wal_batches WHERE release_id = %s", (release_id,))
    journal.set_status(release_id, "released")


def replay_options(mode: str = "logical") -> replay.Options:
    """Replay options as `delta.options()` builds them for a playbook with no `replay` section."""
    return replay.Options(json_as_text=mode == "logical")


class Stopwatch:
    """`with Stopwatch() as t: …` then `t.seconds`."""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
