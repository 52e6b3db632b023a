"""Lazy capture: during the release the slot only holds WAL; the delta is decoded when it is
needed (a rollback, `deployctl delta`), or collected raw when the slot holds more than its budget.

Real PostgreSQL 15 and the release's own snapshot step; the delta is checked by replaying it
into a restored copy of the snapshot and comparing with the live tables.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from deployctl import delta
from deployctl.db import capture, replay, restore
from deployctl.journal import Journal, with_dbname
from deployctl.steps import Run
from tests.conftest import Env, start_capture

pytestmark = pytest.mark.integration


def _count(journal: Journal, table: str, release_id: int) -> int:
    row = journal.execute(sql.SQL("SELECT count(*) AS n FROM {} WHERE release_id = %s").format(
        sql.Identifier("deployctl", table)), (release_id,)).fetchone()
    return int(row["n"]) if row else 0


def _notes(dsn: str) -> list[Any]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT id, body FROM notes ORDER BY id").fetchall()


def _replayed_copy(run: Run) -> str:
    recorded = run.journal.snapshot(run.release_id)
    assert recorded is not None
    names = restore.load(run.pb.database.dsn, Path(recorded["path"]), run.release_id, jobs=2)
    target = with_dbname(run.pb.database.dsn, names.restored)
    found = run.journal.capture(run.release_id)
    replay.apply(run.journal.conn, run.release_id, target, delta.options(run.pb, found))
    return target


def test_the_slot_holds_wal_until_its_budget_then_raw_batches_are_stored_and_decoded_once(
        world: Env, journal: Journal) -> None:
    with psycopg.connect(world.app_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    run = start_capture(world, journal)
    info = delta.info(journal, run.release_id)
    assert info is not None and info.name is not None
    with psycopg.connect(world.app_dsn, autocommit=True) as conn:
        for start in range(0, 3000, 500):
            conn.execute("INSERT INTO notes SELECT i, repeat('x', 200) "
                         "FROM generate_series(%s::int, %s::int) i", (start + 1, start + 500))
        conn.execute("UPDATE notes SET body = 'edited' WHERE id % 7 = 0")
        conn.execute("DELETE FROM notes WHERE id % 11 = 0")

        # Within the budget: nothing is read from the slot.
        held = capture.keep_within(conn, journal.dsn, info, budget=1 << 30)
        assert held is not None and held.pending > 500_000
        assert _count(journal, "wal_batches", run.release_id) == 0
        status = world.cli("status", str(run.release_id), "--state-dsn", world.state_dsn)
        assert status.returncode == 0, status.stderr
        assert re.search(r"capture: logical, active, drain lazy; 0 changes decoded; the slot holds "
                         r"[0-9.]+ [KM]iB of WAL, [0-9.]+ [KM]iB not yet stored \(budget 1\.0 GiB\)",
                         status.stdout), status.stdout
        # Over it: the slot's WAL goes into the journal as it is, undecoded.
        before = conn.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()
        capture.keep_within(conn, journal.dsn, info, budget=64 << 10)
        assert _count(journal, "wal_batches", run.release_id) >= 1
        assert _count(journal, "changes", run.release_id) == 0
        collected = journal.capture(run.release_id)
        assert collected is not None and collected["collected_to"] > 0
        # The slot let go of all it held; what it holds now is the journal's own writes.
        assert before is not None
        assert conn.execute("SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots "
                            "WHERE slot_name = %s", (before[0], info.name)).fetchone() == (True,)

    # Needed (here by `delta show`): decoded, every change once, and the batches go.
    shown = delta.show(journal, run.release_id, run.pb)
    assert shown["changes"] == 3000 + 3000 // 7 + 3000 // 11
    assert _count(journal, "wal_batches", run.release_id) == 0
    assert _notes(_replayed_copy(run)) == _notes(world.app_dsn)


def test_a_budget_is_at_most_half_of_the_servers_max_slot_wal_keep_size(world: Env) -> None:
    with world.connect("postgres") as admin:
        admin.autocommit = True
        try:
            admin.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '64MB'")
            admin.execute("SELECT pg_reload_conf()")
            deadline = time.monotonic() + 10
            with psycopg.connect(world.app_dsn, autocommit=True) as conn:
                while capture.wal_budget(conn, 1 << 30) != 32 << 20 and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert capture.wal_budget(conn, 1 << 30) == 32 << 20
                assert capture.wal_budget(conn, 16 << 20) == 16 << 20
        finally:
            admin.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
            admin.execute("SELECT pg_reload_conf()")
    with psycopg.connect(world.app_dsn, autocommit=True) as conn:
        deadline = time.monotonic() + 10
        while capture.wal_budget(conn, 1 << 30) != 1 << 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert capture.wal_budget(conn, 1 << 30) == 1 << 30


@pytest.mark.parametrize("drain", ["lazy", "continuous"])
def test_a_release_that_succeeds_discards_its_lazy_delta_and_keeps_a_continuous_one(
        env: Env, drain: str) -> None:
    released = env.cli("release", str(env.playbook("1")))
    assert released.returncode == 0, released.stderr
    done = env.cli("release", str(env.playbook("2", capture={"drain": drain})))
    assert done.returncode == 0, done.stderr
    with psycopg.connect(env.state_dsn) as state:
        row = state.execute("SELECT status, problem FROM deployctl.captures WHERE release_id = 2").fetchone()
        batches = state.execute("SELECT count(*) FROM deployctl.wal_batches").fetchone()
    with psycopg.connect(env.app_dsn) as conn:
        slots = conn.execute("SELECT count(*) FROM pg_replication_slots WHERE database = current_database()"
                             ).fetchone()
    assert slots == (0,) and batches == (0,)
    shown = env.cli("delta", "show", "2", "--state-dsn", env.state_dsn)
    assert shown.returncode == 0, shown.stderr
    replayed = env.cli("delta", "replay", "2", "--dry-run", "--state-dsn", env.state_dsn)
    if drain == "lazy":
        assert "the delta was discarded undecoded: the release succeeded" in done.stdout, done.stdout
        assert row is not None and row[0] == "discarded" and "never decoded" in row[1]
        assert "logical capture, discarded" in shown.stdout
        assert replayed.returncode == 2
        assert "was discarded when the release succeeded" in replayed.stderr
        assert "capture.drain: continuous" in replayed.stderr
    else:
        assert row is not None and row[0] == "stopped"
        assert "logical capture, stopped" in shown.stdout
        assert replayed.returncode == 0, replayed.stderr
