"""The fold, as a property: any history of changes per key, folded and replayed, gives the rows
that applying the same history directly gives.

Histories are drawn by hypothesis over a few keys: inserts, updates (some leaving a TOASTed
value out, as logical decoding does when it did not change), deletes, updates that change the
key, re-inserts of deleted keys, in two shapes: before the migration the table is
`t(id, a, b)`, after it `b` is called `c` (the playbook maps `b: {from: c}`). Each history is
written into the journal as a capture would store it (logical: key-only old tuples, or
trigger: full old images) and replayed by `replay.apply` into a real PostgreSQL table holding
the rows of the snapshot; the result must equal a model that applies the history to those rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from deployctl.db import replay
from deployctl.db.shapes import History
from deployctl.journal import Journal
from tests.conftest import Env, _janitor, free_port

pytestmark = pytest.mark.integration

KEYS = range(1, 7)
SNAPSHOT = {1: ("a1", "b1"), 2: ("a2", None), 3: ("a3", "b3")}
MIGRATED_AT = 1000  # positions after it are in the new shape (b renamed to c)
MAPPING = {"t": replay.TableMap(columns={"b": {"from": "c"}})}
VALUES = st.one_of(st.none(), st.text(alphabet="xyz'\"\\ é", max_size=4))


@dataclass(frozen=True)
class Change:
    op: str                      # insert | update | delete
    key: int
    new_key: int | None = None   # an update that moves the row to another key
    a: str | None = None
    b: str | None = None
    b_unchanged: bool = False    # a TOASTed value the update did not change: left out


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Change], int]:
    """A valid history over KEYS from SNAPSHOT, and how many of its changes come before the
    migration."""
    rows = dict(SNAPSHOT)
    changes: list[Change] = []
    for _ in range(draw(st.integers(0, 25))):
        key = draw(st.sampled_from(KEYS))
        if key not in rows:
            change = Change("insert", key, a=draw(VALUES), b=draw(VALUES))
            rows[key] = (change.a, change.b)
        elif draw(st.booleans()):
            free = [k for k in KEYS if k not in rows]
            moved = draw(st.sampled_from(free)) if free and draw(st.integers(0, 4)) == 0 else None
            unchanged = draw(st.booleans())
            change = Change("update", key, moved, draw(VALUES), None if unchanged else draw(VALUES),
                            unchanged)
            before = rows.pop(key)
            rows[moved or key] = (change.a, before[1] if unchanged else change.b)
        else:
            change = Change("delete", key)
            del rows[key]
        changes.append(change)
    return changes, draw(st.integers(0, len(changes)))


def model(changes: list[Change]) -> dict[int, tuple[str | None, str | None]]:
    rows = dict(SNAPSHOT)
    for change in changes:
        if change.op == "insert":
            rows[change.key] = (change.a, change.b)
        elif change.op == "update":
            before = rows.pop(change.key)
            rows[change.new_key or change.key] = (change.a, before[1] if change.b_unchanged else change.b)
        else:
            del rows[change.key]
    return rows


def captured(changes: list[Change], migrated: int, trigger: bool) -> Iterator[tuple[Any, ...]]:
    """The journal rows a capture stores for `changes` (pos, op, key, new, old, unchanged)."""
    rows = dict(SNAPSHOT)
    for i, change in enumerate(changes):
        b_name = "b" if i < migrated else "c"
        pos = i + 1 + (MIGRATED_AT if i >= migrated else 0)
        before = rows.get(change.key)
        old = ({"id": str(change.key), "a": before[0], b_name: before[1]}
               if trigger and before is not None else None)
        key = {"id": str(change.key)}
        if change.op == "delete":
            del rows[change.key]
            yield pos, "delete", key, None, old, []
            continue
        target = change.new_key or change.key
        new: dict[str, Any] = {"id": str(target), "a": change.a}
        if not change.b_unchanged:
            new[b_name] = change.b
        assert before is not None or change.op == "insert"
        rows.pop(change.key, None)
        rows[target] = (change.a, before[1] if change.b_unchanged and before else change.b)
        yield pos, change.op, key, new, old, [b_name] if change.b_unchanged else []


@pytest.fixture(scope="module")
def world(pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Journal, str]]:
    """One state database and one target database, for every example."""
    env = Env(pg_server, f"fold_{uuid.uuid4().hex[:8]}", f"foldstate_{uuid.uuid4().hex[:8]}",
              tmp_path_factory.mktemp("fold"), free_port(), free_port())
    janitors = [_janitor(pg_server, env.dbname), _janitor(pg_server, env.state_dbname)]
    for janitor in janitors:
        janitor.init()
    try:
        with Journal(env.state_dsn) as journal:
            yield journal, env.app_dsn
    finally:
        for janitor in janitors:
            janitor.drop()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=histories(), trigger=st.booleans())
def test_any_history_folded_and_replayed_equals_the_history_applied(
        world: tuple[Journal, str], history: tuple[list[Change], int], trigger: bool) -> None:
    journal, target = world
    changes, migrated = history
    release = journal.create_release(app="fold", version="2", from_version="1", playbook_path="-",
                                     playbook_text="", playbook_sha256="")
    with journal.transaction() as conn:
        for pos, op, key, new, old, unchanged in captured(changes, migrated, trigger):
            conn.execute(
                "INSERT INTO deployctl.changes (release_id, pos, seq, xid, schema_name, table_name, "
                "op, key, new, old, unchanged) VALUES (%s, %s, 0, %s, 'public', 't', %s, %s, %s, %s, %s)",
                (release, pos, pos, op, Jsonb(key), Jsonb(new) if new else None,
                 Jsonb(old) if old else None, unchanged))
        conn.execute("UPDATE deployctl.releases SET status = 'rolled_back' WHERE id = %s", (release,))
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS t")
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, a text, b text)")
        for key, (a, b) in SNAPSHOT.items():
            conn.execute("INSERT INTO t VALUES (%s, %s, %s)", (key, a, b))

    report = replay.apply(journal.conn, release, target, replay.Options(
        tables=MAPPING, history=History("1", ((MIGRATED_AT, "2"),)), json_as_text=not trigger))

    assert not report.conflicts
    with psycopg.connect(target) as conn:
        rows = {r[0]: (r[1], r[2]) for r in conn.execute("SELECT id, a, b FROM t").fetchall()}
    assert rows == model(changes)
