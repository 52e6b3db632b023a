"""What a capture stores in the journal: a slot's raw messages as they are collected (one row
per batch, decoded once, later); the changes a drain decoded or read (with the shapes they were
captured in), the capture's counters, and the migrations it saw, all in one journal transaction
per batch, before the slot (or capture table) lets go of them: a crash resends, never loses, and
the journal ignores a change it already has.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

# (schema, table, columns, columns that hold JSON)
ShapeKey = tuple[str, str, tuple[str, ...], tuple[str, ...]]


@dataclass
class Drained:
    """What drains saw: changes stored, and transactions left out (and why)."""

    changes: int = 0
    in_snapshot: int = 0
    migrations: int = 0
    own_writes: int = 0
    batches: int = 0  # of raw messages decoded (logical capture)

    def add(self, other: Drained) -> None:
        for field in ("changes", "in_snapshot", "migrations", "own_writes", "batches"):
            setattr(self, field, getattr(self, field) + getattr(other, field))


_LENGTH = struct.Struct(">I")


def pack(messages: list[bytes]) -> bytes:
    """A batch of raw messages as the journal keeps it (`wal_batches.messages`): each after its
    length, compressed (pgoutput's text values shrink several times, and so does the journal's
    WAL, often on the application's own server). Level 1: the CPU is the users' first."""
    return zlib.compress(b"".join(_LENGTH.pack(len(m)) + m for m in messages), 1)


def unpack(data: bytes) -> list[bytes]:
    raw = zlib.decompress(data)
    messages, pos = [], 0
    while pos < len(raw):
        (length,) = _LENGTH.unpack_from(raw, pos)
        messages.append(raw[pos + 4:pos + 4 + length])
        pos += 4 + length
    return messages


def collected_to(state: psycopg.Connection[Any], release_id: int) -> int:
    """The commit LSN of the last transaction stored raw: a batch resent after a crash starts
    before it."""
    row = state.execute("SELECT collected_to FROM deployctl.captures WHERE release_id = %s",
                        (release_id,)).fetchone()
    return int(row[0]) if row else 0


def keep_batch(state: psycopg.Connection[Any], release_id: int, messages: list[bytes], first: int,
               last: int, end_lsn: int) -> None:
    """A slot's raw messages (whole transactions, commits `first`..`last`, read up to `end_lsn`),
    stored undecoded, in one journal transaction with the capture's `collected_to`."""
    with state.transaction():
        state.execute(
            """INSERT INTO deployctl.wal_batches (release_id, end_lsn, start_lsn, messages)
               VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING""",
            (release_id, end_lsn, first, pack(messages)))
        state.execute("UPDATE deployctl.captures SET collected_to = GREATEST(collected_to, %s) "
                      "WHERE release_id = %s", (last, release_id))


def oldest_batch(state: psycopg.Connection[Any], release_id: int) -> tuple[int, list[bytes]] | None:
    """The oldest batch not yet decoded: its end LSN and its messages."""
    with state.cursor(binary=True) as cur:
        row = cur.execute(
            """SELECT end_lsn, messages FROM deployctl.wal_batches WHERE release_id = %s
               ORDER BY end_lsn LIMIT 1""", (release_id,)).fetchone()
    return None if row is None else (int(row[0]), unpack(row[1]))


def drop_batch(state: psycopg.Connection[Any], release_id: int, end_lsn: int) -> None:
    """A batch decoded: its changes are stored in the same transaction."""
    state.execute("DELETE FROM deployctl.wal_batches WHERE release_id = %s AND end_lsn = %s",
                  (release_id, end_lsn))


def jsonb(value: dict[str, Any] | None) -> Jsonb | None:
    return Jsonb(value) if value is not None else None


# COPY's text format, written here rather than field by field through psycopg's adapters: a
# drain is mostly this (a change's fields are ints, text, a timestamp, JSON and a text array).
NULL = "\\N"
_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _escaped(value: str) -> str:
    """`value` in COPY's text format (replace() where needed: several times faster than translate())."""
    if "\\" in value:
        value = value.replace("\\", "\\\\")
    if "\t" in value or "\n" in value or "\r" in value:
        value = value.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return value


def _copy_text(value: Any) -> str:
    """One field of a change as COPY text."""
    if value is None:
        return NULL
    if isinstance(value, Jsonb):
        value = _json(value.obj)
    elif isinstance(value, list):  # a text[] literal, every element quoted
        value = "{" + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in value) + "}"
    elif isinstance(value, datetime):
        return value.isoformat()
    elif not isinstance(value, str):
        return str(value)  # an integer
    return _escaped(value)


def _shape_ids(state: psycopg.Connection[Any], release_id: int, keys: set[ShapeKey]) -> dict[ShapeKey, int]:
    ids = {}
    for key in keys:
        row = state.execute(
            """WITH added AS (
                   INSERT INTO deployctl.shapes (release_id, schema_name, table_name, columns, json_columns)
                   VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING id)
               SELECT id FROM added UNION ALL
               SELECT id FROM deployctl.shapes WHERE (release_id, schema_name, table_name, columns,
                                                      json_columns) = (%s, %s, %s, %s, %s)""",
            (release_id, *key[:2], list(key[2]), list(key[3]),
             release_id, *key[:2], list(key[2]), list(key[3]))).fetchone()
        assert row is not None
        ids[key] = row[0]
    return ids


def _store(state: psycopg.Connection[Any], release_id: int, rows: list[tuple[Any, ...]],
           resent: bool) -> int:
    """Copy rows (their last field: the shape, or None) into the journal. Where a batch may be
    `resent` (after a crash), through a temporary table, skipping the rows the journal has."""
    columns = ("release_id", "pos", "seq", "xid", "committed_at", "schema_name", "table_name",
               "op", "key", "new", "old", "unchanged", "shape")
    if resent:
        state.execute(
            """CREATE TEMP TABLE IF NOT EXISTS incoming (LIKE deployctl.changes INCLUDING DEFAULTS)
               ON COMMIT DELETE ROWS""")
    shapes = _shape_ids(state, release_id, {row[-1] for row in rows if row[-1] is not None})
    into = sql.Identifier("incoming") if resent else sql.Identifier("deployctl", "changes")
    prefix = f"{release_id}\t"
    data = "".join(prefix + "\t".join(map(_copy_text, row[:-1])) + f"\t{shapes.get(row[-1], NULL)}\n"
                   for row in rows)
    with state.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(
            into, sql.SQL(", ").join(map(sql.Identifier, columns)))) as copy:
        copy.write(data.encode(state.info.encoding))
    if not resent:
        return len(rows)
    cur = state.execute("INSERT INTO deployctl.changes SELECT * FROM incoming ON CONFLICT DO NOTHING")
    return cur.rowcount


def record(state: psycopg.Connection[Any], release_id: int, rows: list[tuple[Any, ...]],
            seen: Drained, to: int, migrated: Sequence[tuple[int, str | None]] = (),
            resent: bool = True) -> None:
    """Store a batch, the capture's counters and the migrations seen, in one journal transaction."""
    with state.transaction():
        seen.changes = _store(state, release_id, rows, resent)
        state.execute(
            """UPDATE deployctl.captures SET drained_to = GREATEST(drained_to, %s),
                   in_snapshot = in_snapshot + %s, migrations = migrations + %s,
                   own_writes = own_writes + %s,
                   -- a resent batch brings its migrations again: one point per position
                   revisions = (SELECT COALESCE(jsonb_agg(p ORDER BY (p ->> 0)::numeric), '[]')
                                FROM (SELECT DISTINCT ON (p ->> 0) p
                                      FROM jsonb_array_elements(revisions || %s) p) points)
               WHERE release_id = %s""",
            (to, seen.in_snapshot, seen.migrations, seen.own_writes,
             Jsonb([list(point) for point in migrated]), release_id))


def current_revision(state: psycopg.Connection[Any], release_id: int) -> str | None:
    """The Alembic revision after the last migration the capture has seen (else its base)."""
    row = state.execute(
        "SELECT base_revision, revisions -> -1 ->> 1, jsonb_array_length(revisions) "
        "FROM deployctl.captures WHERE release_id = %s", (release_id,)).fetchone()
    if row is None:
        return None
    base, last, points = row
    return str(last) if points else base if base is None else str(base)


def revision_after(before: str | None, writes: Iterable[tuple[Any, Any]]) -> str | None:
    """alembic_version's contents after a migration's writes to it, each (old, new) version_num
    (a branched history holds one row per head: they are listed with commas)."""
    heads = set(before.split(",")) if before else set()
    for old, new in writes:
        if old is not None:
            heads.discard(str(old))
        if new is not None:
            heads.add(str(new))
    return ",".join(sorted(heads)) or None
