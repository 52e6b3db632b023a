"""What the target's constraints and triggers ask of a replay, with or without a superuser.

Replay never relies on `session_replication_role = replica` (managed PostgreSQL gives no
superuser, and it would switch foreign keys off): foreign keys stay on, so a replay can never
leave a child without its parent, and the rows of a swap are checked as they are written.
Tables are written in foreign-key order instead: inserts and updates parents first, deletes
children first (a child moved away from a parent is moved before the parent goes; a cascade the
delta shows happens in the target as it did in the source). Deferrable constraints are deferred
to the end, which is how cycles go through. The application's own triggers are kept from firing
(they ran when the users acted): the table owner may disable them, and the replay enables them
again before it commits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql


def foreign_key_order(conn: psycopg.Connection[Any], tables: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """`tables` (schema, name), every parent before its children (a cycle in any order)."""
    wanted = set(tables)
    edges = conn.execute(
        """SELECT DISTINCT cn.nspname, c.relname, pn.nspname, p.relname
           FROM pg_constraint f
           JOIN pg_class c ON c.oid = f.conrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace
           JOIN pg_class p ON p.oid = f.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace
           WHERE f.contype = 'f' AND f.conrelid <> f.confrelid""").fetchall()
    parents: dict[tuple[str, str], set[tuple[str, str]]] = {t: set() for t in tables}
    for cs, cr, ps, pr in edges:
        if (cs, cr) in wanted and (ps, pr) in wanted:
            parents[(cs, cr)].add((ps, pr))
    ordered: list[tuple[str, str]] = []
    placed: set[tuple[str, str]] = set()
    while len(ordered) < len(tables):
        ready = [t for t in sorted(tables) if t not in placed and parents[t] <= placed]
        if not ready:  # a cycle: take the first left, deferred constraints carry it
            ready = [next(t for t in sorted(tables) if t not in placed)]
        for table in ready:
            ordered.append(table)
            placed.add(table)
    return ordered


def foreign_keys(conn: psycopg.Connection[Any], schema: str, table: str
                 ) -> list[tuple[tuple[str, str], list[str], list[str]]]:
    """The foreign keys of `table`: (parent schema, parent), its columns, the parent's."""
    return [((ps, pr), list(cols), list(refs)) for ps, pr, cols, refs in conn.execute(
        """SELECT pn.nspname, p.relname,
                  ARRAY(SELECT a.attname FROM unnest(f.conkey) WITH ORDINALITY k(n, o)
                        JOIN pg_attribute a ON a.attrelid = f.conrelid AND a.attnum = k.n ORDER BY k.o),
                  ARRAY(SELECT a.attname FROM unnest(f.confkey) WITH ORDINALITY k(n, o)
                        JOIN pg_attribute a ON a.attrelid = f.confrelid AND a.attnum = k.n ORDER BY k.o)
           FROM pg_constraint f JOIN pg_class p ON p.oid = f.confrelid
           JOIN pg_namespace pn ON pn.oid = p.relnamespace
           WHERE f.contype = 'f' AND f.conrelid = to_regclass(format('%%I.%%I', %s::text, %s::text))""",
        (schema, table)).fetchall()]


_ENABLE = {"O": "ENABLE TRIGGER", "A": "ENABLE ALWAYS TRIGGER", "R": "ENABLE REPLICA TRIGGER"}


@contextmanager
def quiet_triggers(conn: psycopg.Connection[Any], tables: list[tuple[str, str]]) -> Iterator[None]:
    """The application's triggers on `tables` disabled inside, then put back as they were."""
    found = conn.execute(
        """SELECT n.nspname, c.relname, t.tgname, t.tgenabled FROM pg_trigger t
           JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE NOT t.tgisinternal AND t.tgenabled <> 'D'
             AND (n.nspname, c.relname) IN (SELECT * FROM unnest(%s::text[], %s::text[]))""",
        ([s for s, _ in tables], [t for _, t in tables])).fetchall()
    for schema, table, trigger, _ in found:
        conn.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER {}").format(
            sql.Identifier(schema, table), sql.Identifier(trigger)))
    yield
    for schema, table, trigger, state in found:
        conn.execute(sql.SQL("ALTER TABLE {} {} {}").format(
            sql.Identifier(schema, table), sql.SQL(_ENABLE[state]), sql.Identifier(trigger)))
