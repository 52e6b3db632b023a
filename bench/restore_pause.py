"""The write pause of a side-by-side restore whose tail holds 10,000 changes.

Each round plays rollback mode `restore` on a fresh copy of the seeded social database: logical
capture starts, `snapshot.take()` dumps it (its manifest's `pg_current_snapshot()` goes to the
journal), users write 10,000 changes, `restore.load()` restores the dump beside the live
database, the capture is drained and the delta replayed into the copy; then users write 10,000
more changes and `restore.swap()` runs with a tail that drains them and replays them, as
`delta.restore_with_replay()` does (its tail needs a playbook; this is the same sequence of
calls). The pause is the swap's own `pause_ms`: from refusing connections to the live database
until the restored one has its name.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from bench import workload
from bench.common import (
    capture_info,
    create_database,
    drop_database,
    emit,
    finish_release,
    median,
    new_release,
    open_journal,
    progress,
    replay_options,
)
from bench.replay_speed import SEED_DB, _fingerprint, seed
from deployctl.db import capture, replay, restore, snapshot
from deployctl.journal import Journal, with_dbname
from deployctl.journal.delta import last_stored
from deployctl.localpg import LocalCluster

BEFORE = 10_000
TAIL = 10_000


def _round(cluster: LocalCluster, journal: Journal, round_no: int, folder: Path) -> dict[str, float]:
    live = f"bench_live_{round_no}"
    dsn = create_database(cluster, live, SEED_DB)
    name = f"deployctl_bench_restore_{round_no}"
    release_id = new_release(journal, name)
    capture.start(dsn, "logical", name, ["public"])
    manifest = snapshot.take(dsn, folder / f"snapshot-{round_no}", jobs=2)
    info = capture_info(journal, release_id, "logical", name, manifest["snapshot"])
    users = workload.Workload(seed=round_no)
    users.run(dsn, BEFORE)
    names = restore.load(dsn, folder / f"snapshot-{round_no}", release_id, jobs=2)
    restored_dsn = with_dbname(dsn, names.restored)
    capture.drain(dsn, journal.dsn, info)
    replay.apply(journal.conn, release_id, restored_dsn, replay_options())
    replayed_upto = last_stored(journal, release_id)
    users.run(dsn, TAIL)
    timings: dict[str, float] = {}

    def tail(conn: psycopg.Connection[Any]) -> dict[str, Any]:
        started = time.perf_counter()
        upto = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]  # type: ignore[index]
        capture.drain_with(conn, journal.dsn, info, upto)
        drained = time.perf_counter()
        report = replay.apply(journal.conn, release_id, restored_dsn, replay_options(),
                              stored_after=replayed_upto)
        timings.update(drain_ms=(drained - started) * 1000, replay_ms=(time.perf_counter() - drained) * 1000)
        return {"tail_changes": sum(t.changes for t in report.tables.values())}

    swapped = restore.swap(dsn, names, tail)
    if swapped["tail_changes"] != TAIL:
        raise RuntimeError(f"the tail held {swapped['tail_changes']} changes, expected {TAIL}")
    failed_dsn = with_dbname(dsn, names.failed)
    if round_no == 0 and _fingerprint(dsn) != _fingerprint(failed_dsn):
        raise RuntimeError("the swapped-in database differs from the live one it replaced")
    capture.stop(failed_dsn, name)  # the slot went with the old live database
    drop_database(cluster, names.failed)
    drop_database(cluster, names.live)
    finish_release(journal, release_id)
    return {"pause_ms": float(swapped["pause_ms"]), **timings}


def run(cluster: LocalCluster, rounds: int) -> None:
    seed(cluster)
    results: list[dict[str, float]] = []
    with open_journal(cluster) as journal, tempfile.TemporaryDirectory(prefix="deployctl-bench-") as tmp:
        for round_no in range(rounds):
            results.append(_round(cluster, journal, round_no, Path(tmp)))
            r = results[-1]
            progress(f"round {round_no + 1}/{rounds}: pause {r['pause_ms']:.0f} ms (tail drain "
                     f"{r['drain_ms']:.0f}, replay {r['replay_ms']:.0f})")
    emit("restore_tail_changes", TAIL)
    emit("restore_tail_drain_ms", median([r["drain_ms"] for r in results]))
    emit("restore_tail_replay_ms", median([r["replay_ms"] for r in results]))
    emit("restore_pause_ms", median([r["pause_ms"] for r in results]))
