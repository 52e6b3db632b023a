"""The journal's side of a release's delta: what `deployctl.changes` and `deployctl.wal_batches`
hold for it, as the delta's code (deployctl/delta.py), replay and the report read it. A range
`stored` (after, upto] of the changes' `stored` marks picks what reached the journal between two
points (a restore's tail)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal
from functools import partial
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row
from psycopg.types.json import set_json_loads

from deployctl.journal import Journal

STORED_MAX = (1 << 63) - 1  # `stored` is a bigserial


def upto(stored_upto: int | None) -> int:
    """`stored_upto`, None meaning everything."""
    return STORED_MAX if stored_upto is None else stored_upto


def drop_undecoded(journal: Journal, release_id: int) -> None:
    """The raw batches a lazy capture stored and never decoded (a release that succeeded)."""
    journal.execute("DELETE FROM deployctl.wal_batches WHERE release_id = %s", (release_id,))


def last_stored(journal: Journal, release_id: int) -> int:
    """The `stored` mark of the last change the journal holds (0 when none)."""
    row = journal.execute(
        "SELECT COALESCE(max(stored), 0) AS last FROM deployctl.changes WHERE release_id = %s",
        (release_id,)).fetchone()
    return int(row["last"]) if row else 0


def held(journal: Journal, release_id: int) -> tuple[int, int]:
    """How many changes the journal holds, and how many batches wait to be decoded."""
    row = journal.execute(
        """SELECT (SELECT count(*) FROM deployctl.changes WHERE release_id = %(r)s) AS changes,
                  (SELECT count(*) FROM deployctl.wal_batches WHERE release_id = %(r)s) AS batches""",
        {"r": release_id}).fetchone()
    return (int(row["changes"]), int(row["batches"])) if row else (0, 0)


def per_table(journal: Journal, release_id: int) -> dict[str, dict[str, int]]:
    """Changes per `schema.table`, per operation."""
    found: dict[str, dict[str, int]] = {}
    for row in journal.execute(
            """SELECT schema_name || '.' || table_name AS table, op, count(*) AS n
               FROM deployctl.changes WHERE release_id = %s GROUP BY 1, 2 ORDER BY 1, 2""",
            (release_id,)).fetchall():
        found.setdefault(row["table"], {})[row["op"]] = row["n"]
    return found


def span(journal: Journal, release_id: int) -> dict[str, Any]:
    """changes, transactions, and the first and last commit times (`first`, `last`)."""
    row = journal.execute(
        """SELECT count(*) AS changes, count(DISTINCT xid) AS transactions,
                  min(committed_at) AS first, max(committed_at) AS last
           FROM deployctl.changes WHERE release_id = %s""", (release_id,)).fetchone()
    return row or {"changes": 0, "transactions": 0, "first": None, "last": None}


def values_of(journal: Journal, release_id: int, table: str, column: str, *, shortest: int,
              most: int) -> set[str]:
    """Distinct values (at least `shortest` characters, at most `most` of them) the delta
    captured in `column` of `table`: new and old images and keys."""
    rows = journal.execute(
        """SELECT DISTINCT v FROM deployctl.changes c,
               LATERAL (VALUES (c.new ->> %(col)s), (c.old ->> %(col)s), (c.key ->> %(col)s)) AS x(v)
           WHERE c.release_id = %(rid)s AND c.table_name = %(table)s AND length(v) >= %(min)s
           LIMIT %(limit)s""",
        {"col": column, "rid": release_id, "table": table, "min": shortest, "limit": most}).fetchall()
    return {r["v"] for r in rows}


def changes(state: psycopg.Connection[Any], release_id: int, stored_after: int = 0,
            table: tuple[str, str] | None = None, stored_upto: int | None = None) -> list[dict[str, Any]]:
    """The delta in commit order (optionally only what reached the journal after `stored_after`
    and up to `stored_upto`, only one table's)."""
    cur = state.cursor()
    # Every digit of a JSON number counts (trigger capture keeps numbers as JSON numbers).
    set_json_loads(partial(json.loads, parse_float=Decimal, parse_int=Decimal), cur)
    return cur.execute(
        """SELECT pos, seq, xid, committed_at, schema_name, table_name, op, key, new, old, unchanged
           FROM deployctl.changes WHERE release_id = %s AND stored > %s AND stored <= %s
             AND (%s::text IS NULL OR (schema_name, table_name) = (%s, %s))
           ORDER BY pos, seq""",
        (release_id, stored_after, upto(stored_upto), table and table[0], table and table[0],
         table and table[1])).fetchall()


def per_source(state: psycopg.Connection[Any], release_id: int, stored: tuple[int, int]
               ) -> dict[tuple[str, str], int]:
    """Changes per (schema, table they were captured from), in the range `stored`."""
    rows = state.cursor(row_factory=tuple_row).execute(
        """SELECT schema_name, table_name, count(*) FROM deployctl.changes
           WHERE release_id = %s AND stored > %s AND stored <= %s GROUP BY 1, 2 ORDER BY 1, 2""",
        (release_id, *stored)).fetchall()
    return {(schema, table): int(count) for schema, table, count in rows}


def copy_out(release_id: int, schema: str, sources: Sequence[str], stored: tuple[int, int],
             own: sql.Composable, columns: list[str]) -> sql.Composed:
    """COPY of the changes to `schema`.`sources` in the range `stored`, as replay loads them: pos,
    seq, op, key, new, old, unchanged, the shape's JSON columns, `own` (the caller's test of
    `c.pos`: captured at the target's revision) and whether it is also in a shape of only
    `columns` (the target's)."""
    return sql.SQL(
        "COPY (SELECT c.pos, c.seq, c.op, c.key, c.new, c.old, c.unchanged, "
        "COALESCE(s.json_columns, '{{}}'), {own}, {own} AND s.columns <@ {cols}::text[] IS TRUE "
        "FROM deployctl.changes c LEFT JOIN deployctl.shapes s ON s.id = c.shape "
        "WHERE c.release_id = {release} AND c.stored > {after} AND c.stored <= {upto} "
        "AND c.schema_name = {schema} AND c.table_name IN ({sources})) TO STDOUT").format(
            own=own, cols=sql.Literal(columns), release=sql.Literal(release_id),
            after=sql.Literal(stored[0]), upto=sql.Literal(stored[1]), schema=sql.Literal(schema),
            sources=sql.SQL(", ").join(map(sql.Literal, sources)))
