"""The fold: one table's changes, each mapped to the target's shape already (`replay_mapped`),
to each row's net effect, computed in the target by one query (which replay plans from).

An UPDATE that changes the key is a DELETE of the old key and an INSERT of the new one. A row's
final values merge its changes since the key's last DELETE, in commit order, so a TOASTed value
an update left out keeps the value known before. A row moved to another key by an update that
left columns out takes those columns along from its old key first (`carry_into_moved_rows`).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

WORK_MEM = "64MB"   # the fold sorts in memory
_NEW_KEY = sql.SQL("(SELECT jsonb_object_agg(k, new ->> k) FROM jsonb_object_keys(key) k)")
_ORDER = sql.SQL("pos::numeric * 8589934592 + seq * 2")   # (pos, seq) as one number

# Most keys change once: their one change is their net effect. The others are sorted by key and
# position, and one sort serves every window: rows with a DELETE after them
# (`deletes_so_far < deletes`) are not merged, and the first row of each key carries the result.
# Keys are grouped by their text `key_text` (three times faster to sort than jsonb; key values are
# text, so equal keys have equal text).
_NET = sql.SQL("""
WITH several AS (SELECT key_text FROM replay_mapped GROUP BY key_text HAVING count(*) > 1)
SELECT key AS k, first_op, first_old AS old, final
FROM (SELECT key, op AS first_op, old AS first_old, CASE WHEN op = 'delete' THEN NULL ELSE new END AS final
      FROM replay_mapped WHERE key_text NOT IN (SELECT key_text FROM several)
      UNION ALL
      SELECT key, first_op, first_old, CASE WHEN last_op = 'delete' THEN NULL ELSE merged END
      FROM (SELECT key, row_number() OVER w AS n, first_value(op) OVER w AS first_op,
                   first_value(old) OVER w AS first_old, last_value(op) OVER w AS last_op,
                   pg_temp.deployctl_merge(new) FILTER (WHERE deletes_so_far = deletes) OVER w AS merged
            FROM (SELECT key, key_text, pos, seq, part, op, old, new,
                         count(*) FILTER (WHERE op = 'delete')
                             OVER (PARTITION BY key_text ORDER BY pos, seq, part ROWS UNBOUNDED PRECEDING)
                             AS deletes_so_far,
                         count(*) FILTER (WHERE op = 'delete') OVER (PARTITION BY key_text) AS deletes
                  FROM replay_mapped WHERE key_text IN (SELECT key_text FROM several)) AS ordered
            WINDOW w AS (PARTITION BY key_text ORDER BY pos, seq, part
                         ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)) AS per_key
      WHERE n = 1) AS folded
""")

# An UPDATE that moves a row to another key: an INSERT at the new key (`part` 1), then the
# update itself becomes the DELETE of the old one.
_SPLIT = sql.SQL("""
WITH moved AS (SELECT * FROM (SELECT pos, seq, key, {new_key} AS new_key FROM replay_mapped
                              WHERE op = 'update' AND NOT new @> key) m WHERE new_key <> key),
inserted AS (
    INSERT INTO replay_mapped (pos, seq, part, op, key, new, own, plain)
    SELECT r.pos, r.seq, 1, 'insert', m.new_key, r.new, r.own, r.plain
    FROM replay_mapped r JOIN moved m USING (pos, seq))
UPDATE replay_mapped r SET op = 'delete', new = NULL FROM moved m WHERE (r.pos, r.seq) = (m.pos, m.seq)
""").format(new_key=_NEW_KEY)

# What the row at `key` held just before (pos, seq): the delta's changes of that key since its
# last DELETE, and whether the target's row is where the rest comes from (no DELETE before).
_BEFORE_MOVE = sql.SQL("""
WITH m AS (
    SELECT {order} AS ord, op, key, new, CASE WHEN op = 'update' THEN {new_key} END AS new_key
    FROM replay_mapped WHERE (pos, seq) < (%(pos)s, %(seq)s)),
touching AS (
    SELECT ord, new, op = 'delete' OR (op = 'update' AND key = %(key)s AND new_key <> key) AS gone
    FROM m WHERE key = %(key)s OR new_key = %(key)s),
last_gone AS (SELECT max(ord) AS ord FROM touching WHERE gone)
SELECT (SELECT ord IS NULL FROM last_gone),
       (SELECT pg_temp.deployctl_merge(new ORDER BY ord) FROM touching
        WHERE NOT gone AND ord > COALESCE((SELECT ord FROM last_gone), -1))
""").format(new_key=_NEW_KEY, order=_ORDER)


def _merge_aggregate(conn: psycopg.Connection[Any]) -> None:
    """jsonb `||` as an aggregate, in this session's temporary schema."""
    exists = conn.execute("SELECT 1 FROM pg_proc WHERE proname = 'deployctl_merge' "
                          "AND pronamespace = pg_my_temp_schema()").fetchone()
    if not exists:
        conn.execute("CREATE AGGREGATE pg_temp.deployctl_merge(jsonb) (SFUNC = jsonb_concat, STYPE = jsonb)")


def carry_into_moved_rows(conn: psycopg.Connection[Any], table: sql.Identifier, columns: list[str],
                          pk: list[str], json: set[str]) -> None:
    """Fill in the columns a key-moving update left out, from its old key. Rare: one query per
    such row, in commit order (a row moved twice carries what its first move brought). Values
    taken from the target's row are their text, as captured ones are (`json` columns: JSON)."""
    _merge_aggregate(conn)
    moved = conn.execute(sql.SQL(
        "SELECT pos, seq, key FROM replay_mapped WHERE op = 'update' AND NOT new @> key "
        "AND {} <> key AND EXISTS (SELECT FROM unnest({}::text[]) c WHERE NOT new ? c) "
        "ORDER BY pos, seq").format(_NEW_KEY, sql.Literal(columns))).fetchall()
    # Aliases no user's column is called.
    key_match = sql.SQL(" AND ").join(
        sql.SQL("deployctl_t.{c} = deployctl_k.{c}").format(c=sql.Identifier(c)) for c in pk)
    for pos, seq, key in moved:
        from_target, merged = conn.execute(
            _BEFORE_MOVE, {"pos": pos, "seq": seq, "key": Jsonb(key)}).fetchone()  # type: ignore[misc]
        before = merged or {}
        if from_target:
            texts = [c for c in columns if c not in json]
            row = conn.execute(sql.SQL(
                "SELECT to_jsonb(deployctl_t) || jsonb_object({names}::text[], ARRAY[{values}]::text[]) "
                "FROM {tbl} AS deployctl_t, jsonb_populate_record(NULL::{tbl}, %s) deployctl_k "
                "WHERE {match}").format(
                    tbl=table, match=key_match, names=sql.Literal(texts),
                    values=sql.SQL(", ").join(
                        sql.SQL("deployctl_t.{}::text").format(sql.Identifier(c)) for c in texts)),
                (Jsonb(key),)).fetchone()
            before = {**(row[0] if row else {}), **before}
        conn.execute("UPDATE replay_mapped SET new = %s || new WHERE pos = %s AND seq = %s",
                      (Jsonb({c: v for c, v in before.items() if c in columns}), pos, seq))


def net(conn: psycopg.Connection[Any], table: sql.Identifier, columns: list[str],
        pk: list[str], json: set[str]) -> sql.Composable:
    """A query of `replay_mapped` folded to one row per key (k, first_op, old, final), once
    the updates that move rows are split (and carry what they left out)."""
    carry_into_moved_rows(conn, table, columns, pk, json)
    conn.execute(f"SET LOCAL work_mem = '{WORK_MEM}'")
    conn.execute(_SPLIT)
    return _NET
