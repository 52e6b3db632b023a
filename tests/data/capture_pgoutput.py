"""Capture real pgoutput messages, and the values they must decode to, from a PostgreSQL server.

Regenerates tests/data/pgoutput_capture.json, which tests/test_pgoutput.py decodes offline:

    python tests/data/capture_pgoutput.py postgresql://postgres@127.0.0.1:5432/postgres
    python tests/data/capture_pgoutput.py DSN --out other.json --big-bytes 50000

The DSN names any database of a server with wal_level=logical, as a superuser (the script
creates and drops its own database, a replication slot and a replication origin). Nothing here
imports deployctl: the expected values come from the server itself, never from the decoder under
test. Every row written is read back in the same statement as `col::text` (RETURNING, or a
SELECT ... FOR UPDATE just before an UPDATE for its old values): that is the text pgoutput must
send. Each step also states what PostgreSQL sends beyond the new row: an old key or old row, and
which TOASTed columns arrive as "unchanged".

The decoding session and the writing sessions use the same SESSION_SETTINGS: pgoutput formats
values with the type output functions in the session that calls pg_logical_slot_*_changes, so
TimeZone, DateStyle, bytea_output and extra_float_digits of *that* session decide the text.
Writers use synchronous_commit=on because the SQL interface only decodes WAL that is flushed.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql

FIXTURE = Path(__file__).with_name("pgoutput_capture.json")
SESSION_SETTINGS = {"TimeZone": "UTC", "DateStyle": "ISO, MDY", "bytea_output": "hex",
                    "extra_float_digits": "1", "IntervalStyle": "postgres", "synchronous_commit": "on"}
# JSON has no "unchanged TOAST value": this object stands for it in expected values.
UNCHANGED_JSON = {"unchanged": True}

SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'it''s "complicated"');
CREATE DOMAIN email AS text CHECK (VALUE LIKE '%@%');
CREATE TABLE kitchen (
    id bigint PRIMARY KEY, t text, b bytea, ia int[], ta text[], j jsonb, n numeric, f float8,
    ts timestamptz, m mood, e email, moods mood[],
    t_len int GENERATED ALWAYS AS (length(t)) STORED  -- not sent by PostgreSQL 15
);
CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
CREATE TABLE pairs (a int, b text, v text, PRIMARY KEY (a, b));
CREATE TABLE audit (id int, note text, big text);  -- no primary key: FULL identity instead
ALTER TABLE audit REPLICA IDENTITY FULL;
CREATE TABLE scratch (id serial PRIMARY KEY);
CREATE TABLE scratch_child (id int REFERENCES scratch);
"""
TABLES = ("kitchen", "docs", "pairs", "audit", "scratch", "scratch_child")
KEYS = {"kitchen": ("id",), "docs": ("id",), "pairs": ("a", "b")}

NASTY = "it's \"quoted\" \\back\\slash\nnew line\ttab\r 😀 漢字 e\u0301 Z\u0308 \u200b end"


@dataclass
class Insert:
    table: str
    values: dict[str, Any]


@dataclass
class Update:
    table: str
    set: dict[str, Any]
    where: dict[str, Any]
    old: Literal["key", "full"] | None = None  # what PostgreSQL sends as the old tuple
    unchanged: tuple[str, ...] = ()  # TOASTed columns it does not send


@dataclass
class Delete:
    table: str
    where: dict[str, Any]
    old: Literal["key", "full"]


@dataclass
class Statement:
    """SQL that is not a row change (DDL, TRUNCATE); `expect` is the change it decodes to."""

    text: str
    expect: dict[str, Any] | None = None


@dataclass
class Emit:
    """pg_logical_emit_message(): decoded only with the `messages 'true'` option."""

    transactional: bool
    prefix: str
    content: bytes


Step = Insert | Update | Delete | Statement | Emit


@dataclass
class Txn:
    steps: list[Step]
    origin: bool = False  # write it from a session with a replication origin set up
    origin_lsn: str | None = None
    autocommit: bool = False  # a lone step outside any transaction block


def workload(big_bytes: int) -> tuple[list[Txn], int]:
    """The transactions to write; the index after which `messages 'true'` is also captured."""
    big1, big2, big3 = (secrets.token_hex(big_bytes) for _ in range(3))  # incompressible, out of line
    kitchen = [
        {"id": 2, "t": NASTY, "b": bytes(range(256)), "ia": "{1,NULL,-3}",
         "ta": ["plain", None, 'with "quote"', "back\\slash", "comma,brace}", "NULL", "", "sp ace", "😀"],
         "j": '{"a": [1, 2.50, {"b": null}], "emoji": "😀", "q": "\\"x\\" \\\\ \\n"}',
         "n": "123456789012345678901234567890.123456789012345678901234567890", "f": 0.1,
         "ts": "2024-03-10 01:30:00-08", "m": 'it\'s "complicated"', "e": "a@b.c", "moods": "{sad,NULL,ok}"},
        {"id": 3, "t": "", "b": b"", "ia": "{{1,2},{3,4}}", "ta": "{}", "j": "[]", "n": "NaN",
         "f": "NaN", "ts": "2024-06-01 12:00:00.123456+05:30", "m": "sad", "moods": "{}"},
        {"id": 4, "t": "漢字🙂", "n": "-0.000000000000000000001", "f": "-0", "ts": "infinity",
         "j": '"just a string"', "b": b"\\\x00'\"", "ta": ['{"nested"}', "a\tb\nc"]},
        {"id": 5, "n": "Infinity", "f": 1e308, "ts": "1999-12-31 23:59:59.999999+14", "j": "null",
         "ia": "{2147483647,-2147483648}"},
    ]
    txns = [
        Txn([Emit(True, "deployctl", b"in a transaction \x00\xff"), Insert("kitchen", {"id": 100})]),
        Txn([Emit(False, "deployctl", b"outside")], autocommit=True),
        Txn([Insert("kitchen", {"id": 1})]),  # all NULL
    ]
    messages_until = len(txns)
    txns += [
        Txn([Insert("kitchen", row) for row in kitchen]),
        Txn([Update("kitchen", {"t": None, "ia": "{7}", "ts": "2000-01-01 00:00:00+00"}, {"id": 2})]),
        Txn([Insert("docs", {"id": 1, "title": "first", "body": big1})]),
        Txn([Update("docs", {"title": "renamed"}, {"id": 1}, unchanged=("body",))]),
        Txn([Update("docs", {"body": big2}, {"id": 1})]),
        Txn([Insert("pairs", {"a": 1, "b": "a", "v": "v1"}), Insert("pairs", {"a": 1, "b": "b", "v": "v2"})]),
        Txn([Update("pairs", {"b": "c"}, {"a": 1, "b": "a"}, old="key")]),
        Txn([Delete("pairs", {"a": 1, "b": "b"}, old="key")]),
        Txn([Insert("audit", {"id": 1, "note": "n1", "big": big3})]),
        Txn([Update("audit", {"note": "n2"}, {"id": 1}, old="full", unchanged=("big",))]),
        Txn([Delete("audit", {"id": 1}, old="full"), Delete("docs", {"id": 1}, old="key")]),
        # One transaction, many statements: the order must survive.
        Txn([Insert("kitchen", {"id": 6, "t": "six"}), Update("pairs", {"v": "v3"}, {"a": 1, "b": "c"}),
             Delete("kitchen", {"id": 1}, old="key"), Insert("audit", {"id": 2, "note": None}),
             Update("kitchen", {"t": "six again"}, {"id": 6}),
             Update("kitchen", {"id": 60}, {"id": 6}, old="key"), Delete("kitchen", {"id": 60}, old="key"),
             Update("audit", {"note": "x"}, {"id": 2}, old="full")]),
        Txn([Insert("kitchen", {"id": 7, "t": "from elsewhere"})], origin=True, origin_lsn="0/ABCDEF"),
        Txn([Update("kitchen", {"t": "origin without lsn"}, {"id": 7})], origin=True),
        # DDL is not decoded, but the next change of the table brings a new Relation message.
        Txn([Statement("ALTER TABLE pairs ADD COLUMN note text DEFAULT 'n/a', DROP COLUMN v"),
             Insert("pairs", {"a": 2, "b": "x"})]),
        Txn([Insert("scratch", {}), Insert("scratch", {}), Insert("scratch_child", {"id": 1})]),
        Txn([Statement("TRUNCATE scratch_child", {"op": "truncate", "relations": ["public.scratch_child"],
                                                  "cascade": False, "restart_identity": False})]),
        Txn([Statement("TRUNCATE scratch RESTART IDENTITY CASCADE",
                       {"op": "truncate", "relations": ["public.scratch", "public.scratch_child"],
                        "cascade": True, "restart_identity": True})]),
    ]
    return txns, messages_until


def _columns(conn: psycopg.Connection[Any], table: str) -> list[str]:
    """The columns pgoutput sends: live, not generated, in attribute order."""
    rows = conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                        "AND NOT attisdropped AND attgenerated = '' ORDER BY attnum", (table,)).fetchall()
    return [r[0] for r in rows]


def _as_text(cols: list[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in cols)


def _where(where: dict[str, Any]) -> sql.Composable:
    return sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in where)


def _one(rows: list[tuple[Any, ...]], what: object) -> tuple[Any, ...]:
    if len(rows) != 1:
        raise RuntimeError(f"{what}: expected one row, got {len(rows)}")
    return rows[0]


def _run_step(conn: psycopg.Connection[Any], step: Step) -> dict[str, Any] | None:
    """Run one step; return the change it must decode to (None if it decodes to nothing)."""
    if isinstance(step, Emit):
        conn.execute("SELECT pg_logical_emit_message(%s, %s, %s)", (step.transactional, step.prefix,
                                                                     step.content))
        return None
    if isinstance(step, Statement):
        conn.execute(step.text)  # fixed test SQL, no values in it
        return step.expect
    table = sql.Identifier(step.table)
    cols = _columns(conn, step.table)
    relation = f"public.{step.table}"
    if isinstance(step, Insert):
        query = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING {}").format(
            table, sql.SQL(", ").join(map(sql.Identifier, step.values)),
            sql.SQL(", ").join(sql.Placeholder() * len(step.values)), _as_text(cols))
        if not step.values:
            query = sql.SQL("INSERT INTO {} DEFAULT VALUES RETURNING {}").format(table, _as_text(cols))
        new = dict(zip(cols, _one(conn.execute(query, list(step.values.values())).fetchall(), step),
                       strict=True))
        return {"op": "insert", "relation": relation, "new": new, "old": None, "old_is_key": False}
    if isinstance(step, Update):
        before = sql.SQL("SELECT {} FROM {} WHERE {} FOR UPDATE").format(_as_text(cols), table,
                                                                         _where(step.where))
        old_row = dict(zip(cols, _one(conn.execute(before, list(step.where.values())).fetchall(), step),
                           strict=True))
        query = sql.SQL("UPDATE {} SET {} WHERE {} RETURNING {}").format(
            table, sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in step.set),
            _where(step.where), _as_text(cols))
        params = [*step.set.values(), *step.where.values()]
        new = dict(zip(cols, _one(conn.execute(query, params).fetchall(), step), strict=True))
        for col in step.unchanged:
            new[col] = UNCHANGED_JSON
        return {"op": "update", "relation": relation, "new": new, "old": _old(step.table, old_row, step.old),
                "old_is_key": step.old == "key"}
    query = sql.SQL("DELETE FROM {} WHERE {} RETURNING {}").format(table, _where(step.where), _as_text(cols))
    deleted = _one(conn.execute(query, list(step.where.values())).fetchall(), step)
    old_row = dict(zip(cols, deleted, strict=True))
    return {"op": "delete", "relation": relation, "new": None, "old": _old(step.table, old_row, step.old),
            "old_is_key": step.old == "key"}


def _old(table: str, row: dict[str, Any], kind: Literal["key", "full"] | None) -> dict[str, Any] | None:
    if kind is None:
        return None
    if kind == "full":
        return row
    return {k: row[k] for k in KEYS[table]}


def _run(conn: psycopg.Connection[Any], txn: Txn, origin: str) -> dict[str, Any] | None:
    if txn.autocommit:
        for step in txn.steps:
            _run_step(conn, step)
        return None
    if txn.origin:
        conn.execute("SELECT pg_replication_origin_session_setup(%s)", (origin,))
    changes = []
    try:
        with conn.transaction():
            xid8, started = _one(conn.execute("SELECT pg_current_xact_id()::text, now()").fetchall(), txn)
            if txn.origin_lsn:
                conn.execute("SELECT pg_replication_origin_xact_setup(%s, now())", (txn.origin_lsn,))
            for step in txn.steps:
                change = _run_step(conn, step)
                if change is not None:
                    changes.append(change)
        (committed,) = _one(conn.execute("SELECT clock_timestamp()").fetchall(), txn)
    finally:
        if txn.origin:  # or the origin stays busy and cannot be dropped
            conn.execute("SELECT pg_replication_origin_session_reset()")
    if not changes:
        raise RuntimeError(f"{txn}: a transaction without changes")
    expected: dict[str, Any] = {"xid": int(xid8) & 0xFFFFFFFF, "origin": None, "origin_lsn": None,
                                "time_min": started.isoformat(), "time_max": committed.isoformat()}
    if txn.origin:
        # The decoded commit time of a transaction written under a replication origin is the origin's
        # timestamp from pg_replication_origin_xact_setup() (here now()), or 0 (2000-01-01) if unset.
        expected.update(origin=origin, origin_lsn=txn.origin_lsn or "0/0", time_max=None,
                        time_min=started.isoformat() if txn.origin_lsn else "2000-01-01T00:00:00+00:00")
    return {**expected, "changes": changes}


def _changes(conn: psycopg.Connection[Any], func: str, slot: str, publication: str, *,
             upto_lsn: str | None = None, messages: bool = False) -> list[dict[str, Any]]:
    options = ["proto_version", "1", "publication_names", publication]
    if messages:
        options += ["messages", "true"]
    query = sql.SQL("SELECT lsn::text, xid::text, data FROM {}(%s, %s, NULL, {})").format(
        sql.Identifier(func), sql.SQL(", ").join(sql.Placeholder() * len(options)))
    rows = conn.execute(query, [slot, upto_lsn, *options]).fetchall()
    return [{"lsn": lsn, "xid": int(xid), "hex": bytes(data).hex()} for lsn, xid, data in rows]


def _relations(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """The tables as their last Relation message must describe them, from the catalog."""
    out = {}
    for table in TABLES:
        oid, replident = _one(conn.execute("SELECT oid::int, relreplident::text FROM pg_class WHERE oid = "
                                           "%s::regclass", (table,)).fetchall(), table)
        columns = conn.execute(
            "SELECT a.attname, a.atttypid::int, a.atttypmod, c.relreplident = 'f' OR EXISTS ("
            "  SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND a.attnum = ANY(i.indkey)"
            "  AND (i.indisreplident OR (c.relreplident = 'd' AND i.indisprimary)))"
            " FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid WHERE c.oid = %s AND a.attnum > 0"
            " AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum", (oid,)).fetchall()
        out[f"public.{table}"] = {"oid": oid, "replica_identity": replident,
                                  "columns": [list(c) for c in columns]}
    return out


def _types(conn: psycopg.Connection[Any]) -> dict[str, list[str]]:
    """Types of published columns that are not built in: each must come in a Type message.

    A domain's Type message carries the domain's oid but the name of its base type (`text`, with
    an empty namespace for pg_catalog), as PostgreSQL 15 writes it.
    """
    rows = conn.execute(
        "WITH RECURSIVE used AS (SELECT DISTINCT a.atttypid AS oid FROM pg_attribute a"
        "  WHERE a.attrelid = ANY(%s::regclass[]) AND a.attnum > 0 AND NOT a.attisdropped"
        "  AND a.attgenerated = '' AND a.atttypid >= 10000),"
        " base(oid, base) AS (SELECT oid, oid FROM used UNION ALL SELECT b.oid, t.typbasetype"
        "  FROM base b JOIN pg_type t ON t.oid = b.base WHERE t.typtype = 'd')"
        " SELECT b.oid::int, CASE n.nspname WHEN 'pg_catalog' THEN '' ELSE n.nspname::text END,"
        "  t.typname::text FROM base b JOIN pg_type t ON t.oid = b.base"
        "  JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.typtype <> 'd' ORDER BY 1",
        (list(TABLES),)).fetchall()
    return {str(oid): [nsp, name] for oid, nsp, name in rows}


def _connect(dsn: str, dbname: str | None = None) -> psycopg.Connection[Any]:
    kwargs: dict[str, Any] = {"dbname": dbname} if dbname else {}
    options = " ".join(f"-c {k}={v.replace(' ', '')}" for k, v in SESSION_SETTINGS.items())
    return psycopg.connect(dsn, autocommit=True, options=options, **kwargs)


def capture(dsn: str, *, big_bytes: int = 2048) -> dict[str, Any]:
    """Run the workload in a new database on the server of `dsn`; return the fixture's content.

    `big_bytes` random bytes, as hex, make the TOASTed values (twice as many characters): over
    PostgreSQL's ~2 kB threshold and incompressible, they are stored out of line.
    """
    suffix = uuid.uuid4().hex[:10]
    dbname, slot, pub, origin = (f"pgoutput_{suffix}", f"pgoutput_{suffix}", f"pgoutput_{suffix}",
                                 f"pgoutput_{suffix}")
    with _connect(dsn) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        try:
            with _connect(dsn, dbname) as conn:
                conn.execute(SCHEMA)
                conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLES IN SCHEMA public").format(
                    sql.Identifier(pub)))
                conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
                conn.execute("SELECT pg_replication_origin_create(%s)", (origin,))
                try:
                    data = _record(conn, slot, pub, origin, big_bytes)
                finally:
                    conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                                 "WHERE slot_name = %s", (slot,))
                    conn.execute("SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin "
                                 "WHERE roname = %s", (origin,))
        finally:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
    return {"created": {"database": dbname, "slot": slot, "publication": pub, "origin": origin}, **data}


def _record(conn: psycopg.Connection[Any], slot: str, pub: str, origin: str,
            big_bytes: int) -> dict[str, Any]:
    """Write the workload, then read the slot: once with logical messages (peek), once without (get)."""
    txns, messages_until = workload(big_bytes)
    expected = []
    upto, messages_expected = None, 0
    for i, txn in enumerate(txns):
        result = _run(conn, txn, origin)
        if result is not None:
            expected.append(result)
        if i + 1 == messages_until:
            (upto,) = _one(conn.execute("SELECT pg_current_wal_lsn()::text").fetchall(), txn)
            messages_expected = len(expected)
    emitted = [step for txn in txns[:messages_until] for step in txn.steps if isinstance(step, Emit)]
    with_messages = _changes(conn, "pg_logical_slot_peek_binary_changes", slot, pub, upto_lsn=upto,
                             messages=True)
    rows = _changes(conn, "pg_logical_slot_get_binary_changes", slot, pub)
    version = conn.execute("SHOW server_version").fetchone()
    return {
        "server_version": version[0] if version else None,
        "session_settings": SESSION_SETTINGS,
        "rows": rows,
        "transactions": expected,
        "relations": _relations(conn),
        "types": _types(conn),
        "with_messages": {
            "rows": with_messages,
            "transactions": expected[:messages_expected],
            "messages": [{"transactional": e.transactional, "prefix": e.prefix,
                          "content_hex": e.content.hex()} for e in emitted],
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dsn", help="a superuser DSN of a server with wal_level=logical")
    parser.add_argument("--out", type=Path, default=FIXTURE, help=f"where to write (default {FIXTURE})")
    parser.add_argument("--big-bytes", type=int, default=2048,
                        help="random bytes behind each TOASTed value (hex doubles them; default 2048)")
    args = parser.parse_args(argv)
    data = capture(args.dsn, big_bytes=args.big_bytes)
    args.out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"{args.out}: {len(data['rows'])} messages, {len(data['transactions'])} transactions "
          f"from PostgreSQL {data['server_version']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
