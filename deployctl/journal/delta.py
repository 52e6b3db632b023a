"""The journal's side of a release's delta: what `deployctl.changes` and `deployctl.wal_batches`
hold for it, as the delta's code (deployctl/delta.py) and the report read it."""

from __future__ import annotations

from typing import Any

from deployctl.journal import Journal


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
