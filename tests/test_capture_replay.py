"""Capture and replay end to end: real PostgreSQL 15, real pg_dump/pg_restore, real Alembic.

The capture starts through the release's own snapshot step (slot or triggers first, then the
exported snapshot), is drained through `delta.drain`, and the delta is replayed with
`replay.apply` into a restored copy of the snapshot, exactly as a `restore` rollback does.
Each test states in its name what it proves about the delta: taken at one exact point, every
value kept, migrations and deployctl's own writes left out, replay idempotent and mapped to the
old schema, conflicts and side effects handled, a lost slot never replayed silently.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import re
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from deployctl import delta
from deployctl.db import capture, replay, restore
from deployctl.db.capture import XidSnapshot
from deployctl.errors import StepFailed
from deployctl.journal import Journal, captured, with_dbname
from deployctl.redact import MASK
from deployctl.steps import Run
from tests.conftest import SOCIAL, Env, migrate_to, seed, start_capture

pytestmark = pytest.mark.integration

MODES = ["logical", "trigger"]


# -- helpers -------------------------------------------------------------------------------

def drain(run: Run) -> captured.Drained:
    drained = delta.drain(run.journal, run.pb, run.release_id)
    assert drained is not None, "the capture is not active"
    return drained


def restored(run: Run) -> str:
    """DSN of a copy of the release's snapshot, restored beside the live database."""
    recorded = run.journal.snapshot(run.release_id)
    assert recorded is not None
    names = restore.load(run.pb.database.dsn, Path(recorded["path"]), run.release_id, jobs=2)
    return with_dbname(run.pb.database.dsn, names.restored)


def copy_of(env: Env, template_dsn: str, suffix: str) -> str:
    """A new database cloned from `template_dsn` (named after the test, so it is dropped)."""
    template = str(psycopg.conninfo.conninfo_to_dict(template_dsn)["dbname"])
    name = f"{env.dbname}_{suffix}"
    with env.connect("postgres") as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)))
    return with_dbname(env.app_dsn, name)


def replay_all(run: Run, target_dsn: str, **options: Any) -> replay.Report:
    mode = run.journal.capture(run.release_id)["mode"]
    return replay.apply(run.journal.conn, run.release_id, target_dsn,
                        replay.Options(json_as_text=mode == "logical", **options))


def rows_text(dsn: str, table: str, order: str = "id") -> list[str]:
    """Every row of `table` as text (`t::text`), ordered by `order`."""
    with psycopg.connect(dsn) as conn:
        # An alias no test table has as a column name: `row_`::text is the whole row.
        return [r[0] for r in conn.execute(sql.SQL("SELECT row_::text FROM {} AS row_ ORDER BY {}").format(
            sql.Identifier(table), sql.Identifier(order))).fetchall()]


def rows_with_xmin(dsn: str, table: str) -> list[tuple[str, str]]:
    """Rows with the transaction that last wrote them: unchanged means nothing was written."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql.SQL("SELECT xmin::text, row_::text FROM {} AS row_ ORDER BY 2").format(
            sql.Identifier(table))).fetchall()


def sequences(dsn: str) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT sequencename, last_value FROM pg_sequences").fetchall())


def delta_rows(journal: Journal, release_id: int) -> list[dict[str, Any]]:
    return journal.conn.execute(
        "SELECT * FROM deployctl.changes WHERE release_id = %s ORDER BY pos, seq", (release_id,)
    ).fetchall()


def scalar(conn: psycopg.Connection[Any], query: Any, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def execute(dsn: str, *statements: str, params: tuple[Any, ...] | None = None) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement, params)  # type: ignore[arg-type]


# -- 1, 2: one exact point -------------------------------------------------------------------

TICKS = """CREATE TABLE ticks (id bigint PRIMARY KEY, writer int NOT NULL, val int NOT NULL,
                               note text, ins_xid bigint NOT NULL, upd_xid bigint)"""
WRITERS = 4
SPAN = 1_000_000  # writer w inserts ids w*SPAN+1, w*SPAN+2, ...
PRESEED = 20


class Writers:
    """Threads on their own connections, each committing insert+update transactions nonstop.

    Every transaction inserts a row with a new id and updates an earlier row of the same
    writer; each row records the xid that inserted it and the one that last updated it.
    """

    def __init__(self, dsn: str, count: int = WRITERS) -> None:
        self.dsn = dsn
        self.stopping = threading.Event()
        self.committed = [0] * count
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._write, args=(w,), daemon=True)
                        for w in range(count)]

    def _write(self, writer: int) -> None:
        rng = random.Random(writer)
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
                n = PRESEED
                while not self.stopping.is_set():
                    n += 1
                    with conn.transaction():
                        conn.execute(
                            "INSERT INTO ticks (id, writer, val, ins_xid) "
                            "VALUES (%s, %s, 0, pg_current_xact_id()::text::bigint)",
                            (writer * SPAN + n, writer))
                        conn.execute(
                            "UPDATE ticks SET val = val + 1, note = %s, "
                            "upd_xid = pg_current_xact_id()::text::bigint WHERE id = %s",
                            (f"w{writer} n{n} it's \\ \"x\"", writer * SPAN + rng.randint(1, n)))
                    self.committed[writer] += 1
        except BaseException as exc:  # surfaced by stop()
            self.errors.append(exc)

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def wait_for(self, transactions: int, timeout: float = 30) -> None:
        """Until every writer committed `transactions` more than it had."""
        goal = [c + transactions for c in self.committed]
        deadline = time.monotonic() + timeout
        while any(c < g for c, g in zip(self.committed, goal, strict=True)):
            assert not self.errors, self.errors
            assert time.monotonic() < deadline, f"writers stalled at {self.committed}"
            time.sleep(0.01)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=30)
        assert not self.errors, self.errors


@pytest.mark.parametrize("mode", MODES)
def test_concurrent_writers_land_exactly_once_in_either_the_dump_or_the_delta(
        world: Env, journal: Journal, mode: str) -> None:
    execute(world.app_dsn, TICKS)
    with world.connect() as conn:
        for w in range(WRITERS):
            for n in range(1, PRESEED + 1):
                conn.execute("INSERT INTO ticks VALUES (%s, %s, 0, 'before', 0, NULL)", (w * SPAN + n, w))
    writers = Writers(world.app_dsn)
    writers.start()
    try:
        writers.wait_for(20)
        # Slot (or triggers) created and snapshot exported and dumped while they write.
        run = start_capture(world, journal, mode)
        writers.wait_for(30)
        drain(run)  # as the worker does, in the middle of the writes
        writers.wait_for(30)
    finally:
        writers.stop()
    drain(run)

    live = rows_text(world.app_dsn, "ticks")
    target = restored(run)
    with psycopg.connect(target) as conn:
        in_dump = conn.execute("SELECT id, ins_xid, upd_xid FROM ticks").fetchall()
    dump_ids = {r[0] for r in in_dump}
    dump_xids = {x for r in in_dump for x in r[1:] if x}
    changes = [c for c in delta_rows(journal, run.release_id) if c["table_name"] == "ticks"]
    delta_inserted = {int(c["new"]["id"]) for c in changes if c["op"] == "insert"}
    delta_xids = {c["xid"] for c in changes}
    with world.connect() as conn:
        live_ids = {r[0] for r in conn.execute("SELECT id FROM ticks").fetchall()}

    assert len(dump_ids) > WRITERS * PRESEED, "writers committed before the snapshot"
    assert len(delta_inserted) >= WRITERS * 60, "writers committed after the snapshot"
    assert dump_ids.isdisjoint(delta_inserted), "a row is both in the dump and in the delta"
    assert dump_ids | delta_inserted == live_ids, "a row is in neither the dump nor the delta"
    assert dump_xids.isdisjoint(delta_xids), "a transaction is both in the dump and in the delta"
    found = journal.capture(run.release_id)
    assert found is not None
    snap = XidSnapshot.parse(found["snapshot"])
    assert not any(snap.visible(snap.full_xid(x)) for x in delta_xids)
    assert all(snap.visible(x) for x in dump_xids)
    assert len(changes) == 2 * len(delta_inserted), "each delta transaction: one insert, one update"

    report = replay_all(run, target)
    assert not report.conflicts, report.conflicts[:3]
    assert report.tables["ticks"].inserted == len(delta_inserted)
    assert rows_text(target, "ticks") == live, "the restored copy plus the delta is the live table"


# -- 3: awkward values -------------------------------------------------------------------------

AWKWARD = """
CREATE TABLE awkward (
    id int PRIMARY KEY, txt text, b bytea, ia int[], ta text[], j jsonb, n numeric, f float8,
    ts timestamptz, big text, other int
)"""


def big(seed: int) -> str:
    """128 kB that compress badly: TOASTed out of line."""
    return random.Random(seed).randbytes(64_000).hex()


AWKWARD_ROWS: list[dict[str, Any]] = [
    {"id": 10, "txt": None, "b": None, "ia": None, "ta": None, "j": None, "n": None, "f": None, "ts": None},
    {"id": 11, "txt": "", "b": b"", "ia": "{}", "ta": "{}", "j": '"just a string"', "n": "NaN",
     "f": "NaN", "ts": "infinity"},
    {"id": 12, "txt": "it's \"quoted\" \\back\\slash \\N\nnew line\r\n\ttab", "b": b"\x00\xff\\'\"\n",
     "ia": "{1,NULL,3}", "ta": '{a,NULL,"NULL","with,comma","quo\\"te","back\\\\slash",""}',
     "j": '{"a": {"b": [1, 2.50, {"c": null}], "s": "x\\"y\\\\z"}, "e": "", "u": "\\u00e9"}',
     "n": "123456789012345678901234567890.123456789012345678901234567890", "f": "-0",
     "ts": "2024-02-29 23:59:59.999999+05:30"},
    {"id": 13, "txt": "unicode ünïcødé 日本語 🎉 e\u0301 \u200b", "b": bytes(range(256)),
     "ia": "{{1,2},{NULL,4}}", "ta": '{"日本","🎉",NULL}', "j": "[1, \"two\", [3], {\"4\": 5}]",
     "n": "-0.000000000000000000000000001", "f": "1e308", "ts": "1999-12-31 23:59:59-08"},
    {"id": 14, "txt": "NULL", "b": b"\\x00", "ia": "{-2147483648,2147483647}", "ta": '{"{}","[]"}',
     "j": "12345678901234567890", "n": "1e-20", "f": "0.1", "ts": "-infinity"},
]


# Trigger capture goes through to_jsonb(), whose float -0 is 0: a limit of that fallback (README).
TRIGGER_LIMITS = pytest.mark.xfail(strict=True, reason="trigger capture reads rows through to_jsonb()")


def awkward_rows(mode: str) -> list[dict[str, Any]]:
    if mode == "logical":
        return AWKWARD_ROWS
    return [{**row, "f": "-1.5"} if row["f"] == "-0" else row for row in AWKWARD_ROWS]


def test_trigger_capture_loses_the_sign_of_a_float_zero_a_known_limit(world: Env, journal: Journal) -> None:
    """Kept as a test so that the day trigger capture keeps -0, this says so."""
    execute(world.app_dsn, "CREATE TABLE zeros (id int PRIMARY KEY, f float8)")
    run = start_capture(world, journal, "trigger")
    execute(world.app_dsn, "INSERT INTO zeros VALUES (1, '-0')")
    drain(run)
    target = restored(run)
    replay_all(run, target)
    assert rows_text(target, "zeros") == ["(1,0)"] != rows_text(world.app_dsn, "zeros")


def insert_awkward(conn: psycopg.Connection[Any], row: dict[str, Any]) -> None:
    cols = list(row)
    conn.execute(sql.SQL("INSERT INTO awkward ({}) VALUES ({})").format(
        sql.SQL(", ").join(map(sql.Identifier, cols)), sql.SQL(", ").join(sql.Placeholder() * len(cols))),
        [row[c] for c in cols])


@pytest.mark.parametrize("mode", MODES)
def test_awkward_values_and_an_unchanged_toast_value_replay_identically(
        world: Env, journal: Journal, mode: str) -> None:
    execute(world.app_dsn, AWKWARD)
    with world.connect() as conn:
        # In the dump: a row with a TOASTed value, and a row the delta deletes.
        conn.execute("INSERT INTO awkward (id, big, other) VALUES (1, %s, 0)", (big(1),))
        conn.execute("INSERT INTO awkward (id, txt) VALUES (2, 'goes away')")
        toast = scalar(conn, "SELECT reltoastrelid::regclass::text FROM pg_class "
                             "WHERE oid = 'awkward'::regclass").split(".")
        out_of_line = scalar(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(*toast)))
        assert out_of_line > 0, "the big value is TOASTed out of line"
    run = start_capture(world, journal, mode)
    with world.connect() as conn:
        for row in awkward_rows(mode):
            insert_awkward(conn, row)
        # Updates of another column: the TOASTed value is not sent again ("unchanged").
        conn.execute("UPDATE awkward SET other = 1 WHERE id = 1")
        conn.execute("INSERT INTO awkward (id, big, other) VALUES (3, %s, 0)", (big(3),))
        conn.execute("UPDATE awkward SET other = 2 WHERE id = 3")
        conn.execute("UPDATE awkward SET txt = 'it''s changed\\', j = '\"now a string\"' WHERE id = 12")
        conn.execute("DELETE FROM awkward WHERE id = 2")
    drain(run)
    changes = delta_rows(journal, run.release_id)
    if mode == "logical":
        toast_updates = [c for c in changes if c["op"] == "update" and c["key"] in ({"id": "1"}, {"id": "3"})]
        assert [c["unchanged"] for c in toast_updates] == [["big"], ["big"]]
        assert all("big" not in c["new"] for c in toast_updates)

    target = restored(run)
    assert len(rows_text(target, "awkward")) == 2
    report = replay_all(run, target)
    assert not report.conflicts, report.conflicts
    assert report.tables["awkward"].inserted == len(AWKWARD_ROWS) + 1
    live = rows_text(world.app_dsn, "awkward")
    assert len(live) == len(AWKWARD_ROWS) + 2
    assert rows_text(target, "awkward") == live
    with psycopg.connect(target) as conn:
        kept = conn.execute("SELECT id, big = %s OR big = %s, other FROM awkward WHERE big IS NOT NULL "
                            "ORDER BY id", (big(1), big(3))).fetchall()
    assert kept == [(1, True, 1), (3, True, 2)]


# -- 4: migrations -----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_migration_transaction_during_capture_is_counted_and_left_out_of_the_delta(
        world: Env, journal: Journal, mode: str) -> None:
    migrate_to(world, "0001")
    run = start_capture(world, journal, mode)
    execute(world.app_dsn, "INSERT INTO users (name, email) VALUES ('Before', 'before@example.com')")
    migrate_to(world, "0002")
    execute(world.app_dsn, "INSERT INTO users (name, email, bio) VALUES ('After', 'after@example.com', 'hi')")
    drained = drain(run)

    assert drained.migrations == 1
    found = journal.capture(run.release_id)
    assert found is not None and found["migrations"] == 1
    changes = delta_rows(journal, run.release_id)
    assert [(c["table_name"], c["op"], c["new"]["email"]) for c in changes] == [
        ("users", "insert", "before@example.com"), ("users", "insert", "after@example.com")]


# -- 5: idempotence, sequences ----------------------------------------------------------------

def test_second_replay_writes_nothing_and_sequences_are_moved_past_replayed_keys(
        world: Env, journal: Journal) -> None:
    migrate_to(world, "0001")
    seed(world, users=5, messages=10)
    run = start_capture(world, journal)
    with world.connect() as conn:
        for i in range(3):
            user = scalar(conn, "INSERT INTO users (name, email) VALUES (%s, %s) RETURNING id",
                          (f"New {i}", f"new{i}@example.com"))
            conn.execute("INSERT INTO messages (user_id, body) VALUES (%s, 'hello')", (user,))
        conn.execute("UPDATE users SET name = 'Renamed' WHERE id = 1")
        likes = scalar(conn, "SELECT count(*) FROM likes WHERE message_id = 2")
        conn.execute("DELETE FROM messages WHERE id = 2")  # and, by cascade, its likes
    drain(run)
    target = restored(run)

    first = replay_all(run, target)
    written = 3 + 3 + 1 + 1 + likes
    assert first.applied == written and not first.conflicts
    after_first = {t: rows_with_xmin(target, t) for t in ("users", "messages", "likes")}
    seqs = sequences(target)

    second = replay_all(run, target)
    assert second.applied == 0
    assert sum(t.already for t in second.tables.values()) == written
    assert "0 rows written" in second.summary()
    assert "nothing to do: the delta is already in this database" in second.summary()
    assert {t: rows_with_xmin(target, t) for t in ("users", "messages", "likes")} == after_first
    assert sequences(target) == seqs
    for table in ("users", "messages"):
        assert rows_text(target, table) == rows_text(world.app_dsn, table)

    with psycopg.connect(target) as conn:
        top_user = scalar(conn, "SELECT max(id) FROM users")
        top_message = scalar(conn, "SELECT max(id) FROM messages")
        user = scalar(conn, "INSERT INTO users (name, email) VALUES ('Later', 'later@example.com') "
                      "RETURNING id")
        message = scalar(conn, "INSERT INTO messages (user_id, body) VALUES (%s, 'later') RETURNING id",
                         (user,))
    assert user > top_user and message > top_message


# -- 6: conflicts ------------------------------------------------------------------------------

PERSONAL = frozenset({"users.email"})


@pytest.fixture
def conflicting(world: Env, journal: Journal) -> tuple[Run, str]:
    """A trigger-captured delta (full old images) and a copy of the snapshot that has since
    diverged: it holds key 100 with other values, lacks user 2, and changed user 3."""
    migrate_to(world, "0001")
    seed(world, users=5, messages=0)
    run = start_capture(world, journal, "trigger")
    execute(world.app_dsn,
            "INSERT INTO users (id, name, email) VALUES (100, 'Ann', 'ann@secret.test')",
            "UPDATE users SET name = 'Bo v2', email = 'bo2@secret.test' WHERE id = 2",
            "UPDATE users SET name = 'Cy v2' WHERE id = 3",
            "INSERT INTO users (id, name, email) VALUES (101, 'Dee', 'dee@secret.test')",
            "UPDATE users SET name = 'Ed v2' WHERE id = 4")
    drain(run)
    base = restored(run)
    execute(base,
            "INSERT INTO users (id, name, email) VALUES (100, 'Other', 'other@secret.test')",
            "DELETE FROM users WHERE id = 2",
            "UPDATE users SET name = 'Changed', email = 'changed@secret.test' WHERE id = 3")
    return run, base


def names_by_id(dsn: str) -> dict[int, str]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT id, name FROM users").fetchall())


def assert_masked(conflicts: list[replay.Conflict]) -> None:
    assert "secret.test" not in repr(conflicts)
    for c in conflicts:
        for image in (c.ours, c.theirs):
            if image is not None:
                assert image["email"] == MASK and "name" in image


CONFLICT_KINDS = {100: "key_exists", 2: "row_gone", 3: "changed_since"}


def conflict_kinds(conflicts: list[replay.Conflict]) -> dict[int, str]:
    return {int(c.key["id"]): c.kind for c in conflicts}


def test_conflicts_under_policy_fail_raise_and_apply_nothing(
        world: Env, conflicting: tuple[Run, str]) -> None:
    run, base = conflicting
    target = copy_of(world, base, "fail")
    before = rows_with_xmin(target, "users")
    seqs = sequences(target)
    with pytest.raises(replay.ReplayConflict, match="3 conflicts, nothing applied") as raised:
        replay_all(run, target, on_conflict="fail", personal=PERSONAL)
    conflicts = raised.value.report.conflicts
    assert conflict_kinds(conflicts) == CONFLICT_KINDS
    assert {c.resolution for c in conflicts} == {"none"}
    assert_masked(conflicts)
    assert "secret.test" not in str(raised.value)
    assert rows_with_xmin(target, "users") == before
    assert sequences(target) == seqs, "the failed replay moved a sequence"


def test_conflicts_under_policy_skip_apply_the_others_and_skip_the_conflicting_rows(
        world: Env, conflicting: tuple[Run, str]) -> None:
    run, base = conflicting
    target = copy_of(world, base, "skip")
    report = replay_all(run, target, on_conflict="skip", personal=PERSONAL)
    assert conflict_kinds(report.conflicts) == CONFLICT_KINDS
    assert {c.resolution for c in report.conflicts} == {"skipped"}
    assert_masked(report.conflicts)
    users = report.tables["users"]
    assert (users.inserted, users.updated, users.skipped) == (1, 1, 3)
    names = names_by_id(target)
    assert (names[100], names[3], names[101], names[4]) == ("Other", "Changed", "Dee", "Ed v2")
    assert 2 not in names


def test_conflicts_under_policy_overwrite_apply_every_change(
        world: Env, conflicting: tuple[Run, str]) -> None:
    run, base = conflicting
    target = copy_of(world, base, "overwrite")
    report = replay_all(run, target, on_conflict="overwrite", personal=PERSONAL)
    assert conflict_kinds(report.conflicts) == CONFLICT_KINDS
    assert {c.resolution for c in report.conflicts} == {"overwritten"}
    assert_masked(report.conflicts)
    assert rows_text(target, "users") == rows_text(world.app_dsn, "users")


# -- 7: the old schema -------------------------------------------------------------------------

def test_changes_on_the_new_schema_replay_mapped_into_the_old_one(world: Env, journal: Journal) -> None:
    migrate_to(world, "0001")
    seed(world, users=3, messages=3)
    # Our own pair: version 2 calls it display_name (and adds nickname); the old schema, name.
    execute(world.app_dsn,
            "CREATE TABLE people (id int PRIMARY KEY, display_name text NOT NULL, nickname text)",
            "INSERT INTO people VALUES (1, 'One', 'uno')")
    run = start_capture(world, journal)
    migrate_to(world, "0002")
    with world.connect() as conn:
        user = scalar(conn, "INSERT INTO users (name, email, bio) VALUES ('Bio', 'bio@example.com', "
                      "'about me') RETURNING id")
        conn.execute("UPDATE users SET bio = 'hello' WHERE id = 1")
        conn.execute("INSERT INTO reactions (user_id, message_id, emoji) VALUES (%s, 1, '🎉')", (user,))
        conn.execute("INSERT INTO people VALUES (2, 'Zoe Two', 'zo')")
        conn.execute("UPDATE people SET display_name = 'One again' WHERE id = 1")
    drain(run)
    target = restored(run)
    execute(target, "ALTER TABLE people RENAME COLUMN display_name TO name",
            "ALTER TABLE people DROP COLUMN nickname", "ALTER TABLE people ADD COLUMN loud text")

    report = replay_all(run, target, tables={"people": replay.TableMap(columns={
        "name": {"from": "display_name"}, "loud": {"expr": "upper(new->>'display_name')"}})})

    assert not report.conflicts
    assert report.tables["users"].dropped_columns == Counter({"bio": 2})
    # User 1's only change was its bio: nothing left to write once it is dropped.
    users = report.tables["users"]
    assert (users.inserted, users.updated, users.already) == (1, 0, 1)
    assert report.tables["reactions"].missing and report.tables["reactions"].inserted == 0
    assert "tables the target lacks, kept in the delta: reactions" in report.summary()
    assert report.tables["people"].dropped_columns == Counter({"nickname": 2})
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT name, email FROM users WHERE id = %s", (user,)).fetchone() == (
            "Bio", "bio@example.com")
        assert conn.execute("SELECT to_regclass('reactions')").fetchone() == (None,)
        assert conn.execute("SELECT id, name, loud FROM people ORDER BY id").fetchall() == [
            (1, "One again", "ONE AGAIN"), (2, "Zoe Two", "ZOE TWO")]


# -- 8: side effects ---------------------------------------------------------------------------

def test_side_effect_tables_are_never_replayed_but_listed_for_reconciliation(
        world: Env, journal: Journal) -> None:
    migrate_to(world, "0001")
    execute(world.app_dsn, "CREATE TABLE payments (id bigserial PRIMARY KEY, user_id bigint, amount numeric, "
            "note text)")
    run = start_capture(world, journal)
    with world.connect() as conn:
        user = scalar(conn, "INSERT INTO users (name, email) VALUES ('Payer', 'payer@example.com') "
                      "RETURNING id")
        conn.execute("INSERT INTO payments (user_id, amount, note) VALUES (%s, 12.50, 'card'), "
                     "(%s, 99.99, 'it''s a refund')", (user, user))
    drain(run)
    target = restored(run)
    recon = world.dir / "reconciliation" / "payments.jsonl.gz"

    report = replay_all(run, target, side_effects=frozenset({"payments"}), reconciliation=recon)

    assert report.tables["payments"].side_effect
    assert report.side_effect_rows == 2 and report.reconciliation == str(recon)
    assert "2 side-effect rows kept for reconciliation" in report.summary()
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM payments").fetchone() == (0,)
        assert conn.execute("SELECT name FROM users WHERE id = %s", (user,)).fetchone() == ("Payer",)
    assert stat.S_IMODE(recon.stat().st_mode) == 0o600
    assert stat.S_IMODE(recon.parent.stat().st_mode) == 0o700
    with gzip.open(recon, "rt") as fh:
        lines = [json.loads(line) for line in fh]
    assert [(r["table_name"], r["op"], r["new"]["amount"], r["new"]["note"]) for r in lines] == [
        ("payments", "insert", "12.50", "card"), ("payments", "insert", "99.99", "it's a refund")]


@pytest.mark.parametrize("mode", MODES)
def test_a_parent_deleted_in_the_window_takes_its_side_effect_children_with_it(
        world: Env, journal: Journal, mode: str) -> None:
    """likes are a side effect (never replayed); a message deleted in the window cascaded to
    its likes in the source: the replay must do the same in the target, never leave likes
    pointing at a message that is gone, and the target's foreign keys must all hold."""
    migrate_to(world, "0001")
    seed(world, users=3, messages=3)
    execute(world.app_dsn, "DELETE FROM likes",
            "INSERT INTO likes (user_id, message_id) VALUES (1, 1), (2, 1), (3, 2)")
    run = start_capture(world, journal, mode)
    execute(world.app_dsn, "INSERT INTO likes (user_id, message_id) VALUES (3, 1)",
            "DELETE FROM messages WHERE id = 1")
    drain(run)
    target = restored(run)

    report = replay_all(run, target, side_effects=frozenset({"likes"}),
                        reconciliation=world.dir / "likes.jsonl.gz")

    assert report.tables["likes"].side_effect and report.tables["messages"].deleted == 1
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT message_id, count(*) FROM likes GROUP BY 1").fetchall() == [(2, 1)]
        orphans = conn.execute("SELECT count(*) FROM likes l WHERE NOT EXISTS "
                               "(SELECT FROM messages m WHERE m.id = l.message_id)").fetchone()
    assert orphans == (0,)


# -- 9: a lost slot ----------------------------------------------------------------------------

def test_lost_slot_marks_the_delta_incomplete_and_replay_refuses_unless_allowed(
        world: Env, journal: Journal) -> None:
    migrate_to(world, "0001")
    run = start_capture(world, journal)
    rid = run.release_id
    execute(world.app_dsn, "INSERT INTO users (name, email) VALUES ('Kept', 'kept@example.com')")
    drain(run)
    with world.connect() as conn:
        conn.execute("INSERT INTO users (name, email) VALUES ('Lost', 'lost@example.com')")
        conn.execute("SELECT pg_drop_replication_slot(%s)", (capture.object_name("social", rid),))

    assert delta.drain(journal, run.pb, rid) is None
    found = journal.capture(rid)
    assert found is not None and found["status"] == "incomplete"
    assert "gone" in found["problem"]
    with pytest.raises(StepFailed, match=r"delta of release #\d+ is incomplete"):
        delta.require_complete(journal, rid)

    target = restored(run)
    refused = world.cli("delta", "replay", str(rid), "--state-dsn", world.state_dsn, "--into", target)
    assert refused.returncode == 1, refused.stderr
    assert "is incomplete" in refused.stderr and "not replayed silently" in refused.stderr
    assert rows_text(target, "users") == []

    allowed = world.cli("delta", "replay", str(rid), "--state-dsn", world.state_dsn, "--into", target,
                        "--allow-incomplete")
    assert allowed.returncode == 0, allowed.stderr
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT name FROM users").fetchall() == [("Kept",)]


# -- 10: a crash resends -----------------------------------------------------------------------

def store_without_advancing(run: Run) -> int:
    """What a drain does before a crash: the journal stored the batch, the capture kept it."""
    info = delta.info(run.journal, run.release_id)
    assert info is not None
    with psycopg.connect(run.pb.database.dsn, autocommit=True) as app, \
            psycopg.connect(run.journal.dsn, autocommit=True) as state:
        if info.mode == "trigger":
            kept = app.execute("SELECT id, txid::text, schema_name, table_name, op, old, new "
                               "FROM deployctl_capture.changes ORDER BY id").fetchall()
            drained = capture.drain_with(app, run.journal.dsn, info)
            with app.cursor() as cur:  # the DELETE after the journal's commit never happened
                cur.executemany("INSERT INTO deployctl_capture.changes VALUES (%s, %s::xid8, %s, %s, %s, "
                                "%s, %s)", [(*r[:5], *(psycopg.types.json.Jsonb(v) if v is not None
                                                       else None for v in r[5:])) for r in kept])
            return drained.changes
        # Killed after the journal stored the slot's batch, before the slot was advanced.
        killed = subprocess.run(
            [sys.executable, "-c", "import sys; from deployctl.db import capture; "
             "from deployctl.journal import Journal; j = Journal(sys.argv[2]); "
             "capture.drain(sys.argv[1], sys.argv[2], "
             "capture.CaptureInfo.from_row(j.capture(int(sys.argv[3]))))",
             run.pb.database.dsn, run.journal.dsn, str(run.release_id)],
            env={**os.environ, "DEPLOYCTL_FAILPOINT": "capture:collected"}, check=False)
        assert killed.returncode == -9
        return capture.decode(state, run.release_id, info.snapshot).changes


@pytest.mark.parametrize("mode", MODES)
def test_changes_resent_after_a_crash_are_stored_once(world: Env, journal: Journal, mode: str) -> None:
    execute(world.app_dsn, "CREATE TABLE notes (id int PRIMARY KEY, body text)")
    run = start_capture(world, journal, mode)
    for i in range(1, 4):
        execute(world.app_dsn, "INSERT INTO notes VALUES (%s, 'note')", params=(i,))
    execute(world.app_dsn, "UPDATE notes SET body = 'edited' WHERE id = 2")

    assert store_without_advancing(run) == 4
    assert drain(run).changes == 0, "the resent changes are already in the journal"
    execute(world.app_dsn, "DELETE FROM notes WHERE id = 3")
    assert drain(run).changes == 1
    assert drain(run).changes == 0

    changes = delta_rows(journal, run.release_id)
    assert [(c["op"], c["new"] and c["new"]["body"]) for c in changes] == [
        ("insert", "note"), ("insert", "note"), ("insert", "note"), ("update", "edited"), ("delete", None)]
    target = restored(run)
    replay_all(run, target)
    assert rows_text(target, "notes") == rows_text(world.app_dsn, "notes")


# -- 11: deployctl's own writes ----------------------------------------------------------------

def test_replay_into_a_captured_database_is_counted_as_own_writes_not_captured(
        world: Env, journal: Journal) -> None:
    execute(world.app_dsn, "CREATE TABLE notes (id int PRIMARY KEY, body text)")
    run = start_capture(world, journal)
    execute(world.app_dsn, "INSERT INTO notes VALUES (1, 'one'), (2, 'two')",
            "UPDATE notes SET body = 'uno' WHERE id = 1")
    drain(run)
    target = restored(run)

    # The restored copy is now itself under a logical capture, for another release.
    other = journal.create_release(app="social-copy", version="1", from_version=None,
                                   playbook_path=run.pb.source_path.as_posix(),
                                   playbook_text=run.pb.source_text, playbook_sha256=run.pb.sha256)
    name = f"{psycopg.conninfo.conninfo_to_dict(target)['dbname']}_slot"
    capture.start(target, "logical", name, ["public"])
    with psycopg.connect(target) as conn:
        journal.record_capture(other, "logical", name, scalar(conn, "SELECT pg_current_snapshot()::text"))

    report = replay_all(run, target)
    assert report.applied == 2
    execute(target, "INSERT INTO notes VALUES (3, 'by a user of the copy')")
    info = delta.info(journal, other)
    assert info is not None
    drained = capture.drain(target, journal.dsn, info)

    assert (drained.own_writes, drained.changes) == (1, 1)
    found = journal.capture(other)
    assert found is not None and found["own_writes"] == 1
    assert [(c["op"], c["new"]["id"]) for c in delta_rows(journal, other)] == [("insert", "3")]


# -- 12: the CLI -------------------------------------------------------------------------------

def test_delta_show_export_and_dry_run_replay_through_the_cli(world: Env, journal: Journal) -> None:
    migrate_to(world, "0001")
    seed(world, users=3, messages=3)
    run = start_capture(world, journal, personal=["users.email"])
    rid = str(run.release_id)
    execute(world.app_dsn,
            "INSERT INTO users (name, email) VALUES ('Ann', 'ann@secret.test'), ('Bo', 'bo@secret.test')",
            "UPDATE messages SET body = 'edited' WHERE id = 1")
    drain(run)
    target = restored(run)
    state = ("--state-dsn", world.state_dsn)

    shown = world.cli("delta", "show", rid, *state)
    assert shown.returncode == 0, shown.stderr
    assert f"delta of release #{rid}: 3 changes in 2 transactions (logical capture, active)" in shown.stdout
    lines = {line.split()[0]: line.split(None, 1)[1] for line in shown.stdout.splitlines()[1:3]}
    assert lines == {"public.messages": "update 1", "public.users": "insert 2"}

    out = world.dir / "exports" / "delta.jsonl.gz"
    exported = world.cli("delta", "export", rid, *state, "-o", str(out), "--json")
    assert exported.returncode == 0, exported.stderr
    manifest_path = out.with_name("delta.manifest.json")
    manifest = json.loads(manifest_path.read_text())
    assert json.loads(exported.stdout)["sha256"] == manifest["sha256"] == hashlib.sha256(
        out.read_bytes()).hexdigest()
    assert manifest["changes"] == 3 and manifest["masked_columns"] == ["users.email"]
    assert manifest["complete"] is True
    assert {stat.S_IMODE(p.stat().st_mode) for p in (out, manifest_path)} == {0o600}
    assert stat.S_IMODE(out.parent.stat().st_mode) == 0o700
    content = gzip.decompress(out.read_bytes()).decode()
    assert "secret.test" not in content
    users = [json.loads(line)["new"] for line in content.splitlines() if '"table_name": "users"' in line]
    assert [(u["name"], u["email"]) for u in users] == [("Ann", MASK), ("Bo", MASK)]

    tables = ("users", "messages", "likes")
    before = {t: rows_with_xmin(target, t) for t in tables}
    seqs = sequences(target)
    dry = world.cli("delta", "replay", rid, *state, "--into", target, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("dry run: 3 changes: 3 rows")
    assert re.search(r"^\s+users\s+inserted 2, updated 0, deleted 0", dry.stdout, re.M), dry.stdout
    assert re.search(r"^\s+messages\s+inserted 0, updated 1, deleted 0", dry.stdout, re.M), dry.stdout
    assert {t: rows_with_xmin(target, t) for t in tables} == before
    assert sequences(target) == seqs, "a dry run moved a sequence of the target"


def test_tables_only_the_new_version_has_replay_when_it_is_released_again(
        world: Env, journal: Journal) -> None:
    """The worked example of the README: reactions made on version 2 before its rollback land
    when version 2 is out again; a reaction to a message deleted since is not replayed (and the
    message not brought back), and a second replay of the table is refused."""
    migrate_to(world, "0001")
    seed(world, users=3, messages=3)
    run = start_capture(world, journal)
    rid = str(run.release_id)
    migrate_to(world, "0002")
    execute(world.app_dsn,
            "INSERT INTO reactions (user_id, message_id, emoji) VALUES (1, 1, '🎉'), (2, 2, '👍')",
            "INSERT INTO messages (user_id, body) VALUES (1, 'not asked for')")
    drain(run)
    # Rolled back, then version 2 released again on the old database, where message 2 was
    # deleted meanwhile.
    again = restored(run)
    url = world.app_dsn.rsplit("/", 1)[0] + "/" + psycopg.conninfo.conninfo_to_dict(again)["dbname"]
    upgraded = subprocess.run([sys.executable, "-m", "alembic", "-c", str(SOCIAL / "alembic.ini"),
                               "upgrade", "0002"], env={**os.environ, "DATABASE_URL": url},
                              capture_output=True, text=True, check=False)
    assert upgraded.returncode == 0, upgraded.stderr
    execute(again, "DELETE FROM messages WHERE id = 2")
    messages = rows_text(again, "messages")
    state = ("--state-dsn", world.state_dsn)

    done = world.cli("delta", "replay", rid, *state, "--into", again, "--table", "reactions", "--json")

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert list(report["tables"]) == ["reactions"]
    assert report["tables"]["reactions"]["inserted"] == 1
    assert [(c["kind"], c["resolution"]) for c in report["conflicts"]] == [("parent_gone", "skipped")]
    with psycopg.connect(again) as conn:
        assert conn.execute("SELECT user_id, message_id, emoji FROM reactions").fetchall() == [
            (1, 1, "🎉")]
    assert rows_text(again, "messages") == messages, "only reactions were asked for"

    twice = world.cli("delta", "replay", rid, *state, "--into", again, "--table", "reactions")
    assert twice.returncode == 2
    assert "reactions was replayed into" in twice.stderr and "deleted since" in twice.stderr


# -- more traps of the same kind -------------------------------------------------------------

@pytest.mark.parametrize("mode", ["logical", pytest.param("trigger", marks=TRIGGER_LIMITS)])
def test_json_null_exact_json_numbers_and_json_text_survive_replay(
        world: Env, journal: Journal, mode: str) -> None:
    """JSON `null` is a value, not SQL NULL; jsonb keeps every digit; json keeps its text."""
    execute(world.app_dsn, "CREATE TABLE docs (id int PRIMARY KEY, j jsonb, raw json)")
    run = start_capture(world, journal, mode)
    execute(world.app_dsn,
            """INSERT INTO docs VALUES (1, 'null', 'null'), (2, '{"n": 1.0000000000000000001}',
               '{"b": 1,  "a": [1.50]}'), (3, '12345678901234567890.5', '{"k": 1, "k": 2}'),
               (4, '[null, {"x": null}]', NULL)""")
    drain(run)
    target = restored(run)
    replay_all(run, target)
    assert rows_text(target, "docs") == rows_text(world.app_dsn, "docs")


def test_generated_columns_are_left_for_the_target_to_compute(world: Env, journal: Journal) -> None:
    execute(world.app_dsn,
            "CREATE TABLE shapes (id int PRIMARY KEY, w int, area int GENERATED ALWAYS AS (w * w) STORED)",
            "INSERT INTO shapes (id, w) VALUES (1, 1)")
    run = start_capture(world, journal)
    execute(world.app_dsn, "INSERT INTO shapes (id, w) VALUES (2, 2)", "UPDATE shapes SET w = 3 WHERE id = 1")
    drain(run)
    target = restored(run)
    replay_all(run, target)
    assert rows_text(target, "shapes") == rows_text(world.app_dsn, "shapes") == ["(1,3,9)", "(2,2,4)"]


def test_columns_named_like_the_aliases_of_replay_queries_replay(world: Env, journal: Journal) -> None:
    # Aliases of the replay's queries, and names its plan and fold give their own values.
    execute(world.app_dsn, "CREATE TABLE plain (id int PRIMARY KEY, t text, r text, p text, kp text, "
                           "deleted bool, present bool, action text, conflict text, final text, old text)",
            "INSERT INTO plain VALUES (1, 't', 'r', 'p', 'kp', false, true, 'a', 'c', 'f', 'o')")
    run = start_capture(world, journal)
    execute(world.app_dsn,
            "INSERT INTO plain VALUES (2, 'a', 'b', 'c', 'd', true, false, 'x', 'y', 'z', 'w')",
            "UPDATE plain SET t = 'T', deleted = true WHERE id = 1",
            "UPDATE plain SET present = false, final = 'F' WHERE id = 1")
    drain(run)
    target = restored(run)
    replay_all(run, target)
    assert rows_text(target, "plain") == rows_text(world.app_dsn, "plain")


def test_a_row_moved_to_another_key_keeps_its_unchanged_toasted_array(world: Env, journal: Journal) -> None:
    # The update leaves the TOASTed array out (logical decoding sends it as unchanged): replay
    # takes it from the row at the old key, in the target, as the array's own text.
    execute(world.app_dsn, "CREATE TABLE arrays (id int PRIMARY KEY, nums int[] NOT NULL, note text)",
            "INSERT INTO arrays SELECT 1, array_agg((random() * 1e9)::int), 'x' "
            "FROM generate_series(1, 5000)")
    run = start_capture(world, journal)
    execute(world.app_dsn, "UPDATE arrays SET id = 100, note = 'moved' WHERE id = 1")
    drain(run)
    assert delta_rows(journal, run.release_id)[0]["unchanged"] == ["nums"]
    target = restored(run)
    replay_all(run, target)
    assert rows_text(target, "arrays") == rows_text(world.app_dsn, "arrays")
