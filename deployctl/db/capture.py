"""Capture: every change users make during a release, drained into the journal as the delta.

Capture and snapshot start at one exact point. `start()` creates the logical replication slot
(or installs the capture triggers) *before* the snapshot is exported; the snapshot's
`pg_current_snapshot()` then decides, for each captured transaction, whether it is already in
the dump (its xid is visible in that snapshot) or belongs to the delta. No gap, no overlap, no
write pause.

Logical mode decodes `pgoutput` through the SQL interface (`pg_logical_slot_peek_binary_changes`),
stores the changes, and only then advances the slot, so a crash resends changes rather than
losing them (the journal ignores a change it already has). Trigger mode reads the capture table
the same way. Migration transactions (those writing `alembic_version`) and deployctl's own
replays (replication origin `deployctl`) are left out.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

from deployctl import failpoints, progress
from deployctl.db import pgoutput
from deployctl.journal import captured as store
from deployctl.log import log

TRIGGER_SQL = resources.files("deployctl") / "sql" / "capture_triggers.sql"  # in the package: in a wheel too
TRIGGER_SCHEMA = "deployctl_capture"
ORIGIN = "deployctl"
MIGRATION_TABLE = "alembic_version"
BATCH = 5000


class CaptureLost(RuntimeError):
    """The slot is gone or invalidated: the delta misses changes."""


def object_name(app: str, release_id: int) -> str:
    """The slot's and the publication's name (slot names allow [a-z0-9_] only)."""
    return f"deployctl_{re.sub(r'[^a-z0-9_]', '_', app)}_{release_id}"


@dataclass(frozen=True)
class XidSnapshot:
    """A `pg_current_snapshot()` (xmin:xmax:xip…), to tell which transactions it sees."""

    xmin: int
    xmax: int
    xip: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> XidSnapshot:
        xmin, xmax, xip = text.split(":")
        return cls(int(xmin), int(xmax), frozenset(int(x) for x in xip.split(",") if x))

    def full_xid(self, xid32: int) -> int:
        """A 32-bit xid (as logical decoding reports it) widened with the snapshot's epoch."""
        full = (self.xmax & ~0xFFFFFFFF) | xid32
        if full > self.xmax + (1 << 31):
            full -= 1 << 32
        elif full < self.xmax - (1 << 31):
            full += 1 << 32
        return full

    def visible(self, xid: int) -> bool:
        """Whether the snapshot sees the transaction `xid` (64-bit), i.e. it is in the dump."""
        return xid < self.xmin or (xid < self.xmax and xid not in self.xip)


# -- starting and stopping ---------------------------------------------------------------------

def capture_mode(conn: psycopg.Connection[Any], wanted: str) -> str:
    """`logical` when possible, else `trigger`; `wanted` may force one.

    Logical capture needs wal_level=logical and PostgreSQL 15 (publications FOR TABLES IN
    SCHEMA, which take in the tables a migration creates), and that needs a superuser.
    """
    if wanted != "auto":
        return wanted
    row = conn.execute(
        """SELECT current_setting('wal_level') = 'logical'
                  AND (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
                  AND current_setting('server_version_num')::int >= 150000"""
    ).fetchone()
    return "logical" if row and row[0] else "trigger"


def tables_without_key(conn: psycopg.Connection[Any], schemas: list[str]) -> list[str]:
    """Captured tables that have no primary key: their changes could not be replayed."""
    rows = conn.execute(
        """SELECT format('%%I.%%I', n.nspname, c.relname) FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY(%s)
             AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
           ORDER BY 1""",
        (schemas,),
    ).fetchall()
    return [r[0] for r in rows]


def start(dsn: str, mode: str, name: str, schemas: list[str]) -> None:
    """Create the slot and publication (or the triggers). Idempotent; call before the snapshot."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if mode == "trigger":
            install_triggers(conn, schemas)
            return
        if not conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLES IN SCHEMA {}").format(
                sql.Identifier(name), sql.SQL(", ").join(map(sql.Identifier, schemas))))
        if not conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s",
                            (name,)).fetchone():
            conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,))


def install_triggers(conn: psycopg.Connection[Any], schemas: list[str]) -> list[str]:
    """Capture triggers on every table of `schemas` that lacks them; returns those tables.

    A partitioned table's row trigger is cloned onto its partitions by PostgreSQL; a TRUNCATE
    trigger is not, so every partition gets its own.
    """
    with conn.transaction():
        conn.execute(TRIGGER_SQL.read_text())
        missing = conn.execute(
            """SELECT n.nspname, c.relname,
                      NOT c.relispartition AND NOT EXISTS (SELECT 1 FROM pg_trigger t
                          WHERE t.tgrelid = c.oid AND t.tgname = 'deployctl_capture_row'),
                      NOT EXISTS (SELECT 1 FROM pg_trigger t
                          WHERE t.tgrelid = c.oid AND t.tgname = 'deployctl_capture_truncate')
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY(%s)
               ORDER BY c.relispartition, 1, 2""",
            (schemas,),
        ).fetchall()
        added = []
        for schema, table, row_trigger, truncate_trigger in missing:
            target = sql.Identifier(schema, table)
            if row_trigger:
                conn.execute(sql.SQL(
                    "CREATE TRIGGER deployctl_capture_row AFTER INSERT OR UPDATE OR DELETE ON {} "
                    "FOR EACH ROW EXECUTE FUNCTION deployctl_capture.record_row()").format(target))
            if truncate_trigger:
                conn.execute(sql.SQL(
                    "CREATE TRIGGER deployctl_capture_truncate AFTER TRUNCATE ON {} "
                    "FOR EACH STATEMENT EXECUTE FUNCTION deployctl_capture.record_truncate()"
                ).format(target))
            if row_trigger or truncate_trigger:
                added.append(f"{schema}.{table}")
    return added


def triggers_installed(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regnamespace(%s) IS NOT NULL", (TRIGGER_SCHEMA,)).fetchone()
    return bool(row and row[0])


def stop(dsn: str, name: str | None) -> None:
    """Drop the slot, the publication and the capture triggers. Idempotent."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        drop_objects(conn, name)


def drop_objects(conn: psycopg.Connection[Any], name: str | None) -> None:
    if name:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE slot_name = %s AND NOT active", (name,))
        conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name)))
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(TRIGGER_SCHEMA)))


def cleanup(conn: psycopg.Connection[Any], app: str, keep: set[str]) -> list[str]:
    """Drop the slots and publications of `app`'s releases except those in `keep`."""
    pattern = object_name(app, 0).removesuffix("0") + "%"
    dropped = []
    for (slot,) in conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE %s AND NOT active",
            (pattern,)).fetchall():
        if slot not in keep:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            dropped.append(f"slot {slot}")
    for (pub,) in conn.execute("SELECT pubname FROM pg_publication WHERE pubname LIKE %s",
                               (pattern,)).fetchall():
        if pub not in keep:
            conn.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(pub)))
            dropped.append(f"publication {pub}")
    if not keep and triggers_installed(conn):
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(TRIGGER_SCHEMA)))
        dropped.append(f"schema {TRIGGER_SCHEMA} and its triggers")
    return dropped


# -- draining ----------------------------------------------------------------------------------

def _key(relation: pgoutput.Relation, values: dict[str, Any]) -> dict[str, Any]:
    return {c.name: values.get(c.name) for c in relation.columns if c.key}


def _jsonable(relation: pgoutput.Relation, values: dict[str, Any] | None
              ) -> tuple[dict[str, Any] | None, list[str]]:
    """Values in their text form; unchanged TOAST columns listed apart."""
    if values is None:
        return None, []
    out: dict[str, Any] = {}
    unchanged = []
    for name, value in values.items():
        if value is pgoutput.UNCHANGED:
            unchanged.append(name)
        else:
            out[name] = value
    return out, unchanged


def _rows_of(tx: pgoutput.Transaction) -> Iterator[tuple[Any, ...]]:
    seq = 0
    for change in tx.changes:
        relations = change.truncated if change.op == "truncate" else (change.relation,)
        for relation in relations:
            assert relation is not None
            new, unchanged = _jsonable(relation, change.new)
            old, _ = _jsonable(relation, change.old)
            identity = change.old if change.old is not None else change.new
            key = _key(relation, identity) if identity is not None and change.op != "truncate" else None
            # A key-only old tuple is just the key: keep `old` for full row images only.
            yield (tx.commit_lsn, seq, tx.xid, tx.commit_time, relation.schema, relation.name,
                   change.op, store.jsonb(key), store.jsonb(new),
                   store.jsonb(old) if not change.old_is_key else None, unchanged, _shape(relation))
            seq += 1


JSON_TYPES = (114, 3802)  # json, jsonb

@functools.lru_cache(maxsize=1024)  # one per relation message: computed once, not per change
def _shape(relation: pgoutput.Relation) -> store.ShapeKey:
    """The shape a change was captured in: its table's columns, and which hold JSON (logical
    capture keeps those as text, so that replay can read them as JSON where it must)."""
    return (relation.schema, relation.name, tuple(c.name for c in relation.columns),
            tuple(c.name for c in relation.columns if c.type_oid in JSON_TYPES))


# One peek of the slot: whole transactions' messages, as they are stored.
_PEEK = """
    SELECT array_agg(data ORDER BY n)
    FROM pg_logical_slot_peek_binary_changes(%s::name, %s::pg_lsn, %s,
             'proto_version', '1', 'publication_names', %s::text) WITH ORDINALITY AS p(l, x, data, n)"""
RAW_BATCH = 20000
IN_USE_WAIT_S = 30.0


@dataclass(frozen=True)
class SlotWal:
    """What a slot holds: `held` bytes of WAL kept on the server's disk (from its restart point,
    which follows the confirmed point by up to a running-transactions record, ~15 s), of which
    `pending` bytes are not yet stored in the journal."""

    held: int
    pending: int


def slot_wal(app: psycopg.Connection[Any], slot: str) -> SlotWal:
    """The WAL the slot holds; CaptureLost when it is gone or invalidated."""
    row = app.execute(
        """SELECT wal_status, COALESCE(pg_current_wal_lsn() - restart_lsn, 0)::bigint,
                  COALESCE(pg_current_wal_lsn() - confirmed_flush_lsn, 0)::bigint
           FROM pg_replication_slots WHERE slot_name = %s""", (slot,)).fetchone()
    if row is None or row[0] == "lost":
        raise CaptureLost(f"replication slot {slot} is {'gone' if row is None else 'lost'}")
    return SlotWal(max(int(row[1]), 0), max(int(row[2]), 0))


def wal_keep_size(conn: psycopg.Connection[Any]) -> int | None:
    """max_slot_wal_keep_size in bytes, past which the server invalidates a slot (None: unlimited)."""
    row = conn.execute(
        "SELECT setting::bigint FROM pg_settings WHERE name = 'max_slot_wal_keep_size'").fetchone()
    return None if row is None or row[0] < 0 else int(row[0]) * (1 << 20)


def wal_budget(conn: psycopg.Connection[Any], configured: int) -> int:
    """The WAL a lazy capture leaves in its slot before storing it in the journal:
    `capture.max_retained_wal`, and never more than half of max_slot_wal_keep_size."""
    keep = wal_keep_size(conn)
    return configured if keep is None else min(configured, keep // 2)


def _on_slot(app: psycopg.Connection[Any], query: str, params: Any, binary: bool = False) -> Any:
    """A query that acquires the slot; a slot another session is reading (an aborted release's
    capture keeper, which stops once a rollback takes over) is waited for."""
    deadline = time.monotonic() + IN_USE_WAIT_S
    while True:
        try:
            with app.cursor(binary=binary) as cur:
                return cur.execute(query, params).fetchone()
        except psycopg.errors.ObjectInUse:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def collect(app: psycopg.Connection[Any], state: psycopg.Connection[Any], release_id: int,
            slot: str, upto_lsn: str | None = None) -> int:
    """Store the slot's committed transactions in the journal as raw pgoutput messages, batch by
    batch, advancing the slot only past what is stored; return the messages stored.

    With `upto_lsn` (a pause's last read: nothing commits after it), the last batch leaves the
    slot where it is. An advance reads the slot's WAL again from its restart point, which a
    restore's load may have left a database's worth behind; a later read resends what is stored,
    and `collected_to` leaves it out."""
    stored = 0
    while True:
        slot_wal(app, slot)
        after = store.collected_to(state, release_id)
        # Read up to a known point: a peek that returns less than a batch has read everything
        # before it, and the slot may go there (past WAL of other databases, such as the
        # journal's own writes, which it would otherwise read again every time).
        upto = upto_lsn or str(app.execute("SELECT pg_current_wal_flush_lsn()::text").fetchone()[0])  # type: ignore[index]
        messages = _on_slot(app, _PEEK, (slot, upto, RAW_BATCH, slot), binary=True)[0] or []
        count = len(messages)
        if not messages:
            if upto_lsn is None:
                _on_slot(app, "SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (slot, upto))
            return stored
        first, last, end_lsn = pgoutput.transaction_bounds(messages)
        if count < RAW_BATCH:
            end_lsn = max(end_lsn, pgoutput.parse_lsn(upto))
        if first <= after:  # resent after a crash between storing and advancing
            messages = pgoutput.committed_after(messages, after)
        if messages:
            store.keep_batch(state, release_id, messages, first, last, end_lsn)
            stored += len(messages)
            failpoints.hit("capture", "collected")
        if count < RAW_BATCH and upto_lsn is not None:
            return stored
        # Only now that the journal has them may the slot forget them.
        _on_slot(app, "SELECT pg_replication_slot_advance(%s, %s::pg_lsn)",
                 (slot, pgoutput.format_lsn(end_lsn)))
        if count < RAW_BATCH:
            return stored


def decode(state: psycopg.Connection[Any], release_id: int, snapshot: XidSnapshot,
           stopping: threading.Event | None = None, most: int | None = None) -> store.Drained:
    """Decode the stored batches into changes, each in the shape it was captured in, oldest
    first; a batch is deleted in the transaction that stores its changes (decoded once).
    `stopping` ends it between two batches; `most` limits how many it decodes."""
    total = store.Drained()
    while not (stopping and stopping.is_set()) and (most is None or total.batches < most):
        with state.transaction():
            # One decoder at a time per release (another thread, another process): each takes
            # the oldest batch, so batches are decoded in order, which revisions need.
            state.execute("SELECT pg_advisory_xact_lock(hashtext('deployctl.decode'), %s::int)",
                          (release_id,))
            if (oldest := store.oldest_batch(state, release_id)) is None:
                return total
            end_lsn, messages = oldest
            rows, seen, migrated = _decoded(messages, snapshot, store.current_revision(state, release_id))
            seen.batches = 1
            # Never resent: a batch is stored once (collected_to) and goes with its changes.
            store.record(state, release_id, rows, seen, end_lsn, migrated, resent=False)
            store.drop_batch(state, release_id, end_lsn)
        total.add(seen)
    return total


def _decoded(messages: list[bytes], snapshot: XidSnapshot, revision: str | None
             ) -> tuple[list[tuple[Any, ...]], store.Drained, list[tuple[int, str | None]]]:
    """A batch's changes to keep, what was left out (and why), and the migrations seen."""
    # Each batch is one peek of the slot: it sends every Relation before its first use.
    decoder = pgoutput.Decoder()
    rows: list[tuple[Any, ...]] = []
    seen = store.Drained()
    migrated: list[tuple[int, str | None]] = []
    for data in messages:
        tx = decoder.feed(data)
        if tx is None:
            continue
        if tx.origin == ORIGIN:
            seen.own_writes += 1
        elif snapshot.visible(snapshot.full_xid(tx.xid)):
            seen.in_snapshot += 1
        elif writes := [(c.old and c.old.get("version_num"), c.new and c.new.get("version_num"))
                        for c in tx.changes
                        if c.relation is not None and c.relation.name == MIGRATION_TABLE]:
            seen.migrations += 1
            revision = store.revision_after(revision, writes)
            migrated.append((tx.commit_lsn, revision))
        else:
            rows.extend(_rows_of(tx))
    return rows, seen, migrated


def _primary_keys(app: psycopg.Connection[Any]) -> dict[tuple[str, str], list[str]]:
    rows = app.execute(
        """SELECT n.nspname, c.relname, array_agg(a.attname ORDER BY k.ord)
           FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
           CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
           JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
           WHERE i.indisprimary GROUP BY 1, 2""").fetchall()
    return {(s, t): list(cols) for s, t, cols in rows}


def drain_triggers(app: psycopg.Connection[Any], state: psycopg.Connection[Any], release_id: int,
                   snapshot: XidSnapshot) -> store.Drained:
    """Move committed rows of the capture table into the journal, then delete them there."""
    total = store.Drained()
    keys = _primary_keys(app)
    while True:
        with app.transaction():
            # One statement, one snapshot: a migration transaction's rows are all seen at once.
            # jsonb as text: psycopg would read JSON numbers as floats and lose digits.
            rows = app.execute(
                """SELECT id, txid::text::bigint, schema_name, table_name, op, old::text, new::text,
                          txid IN (SELECT txid FROM deployctl_capture.changes WHERE table_name = %s)
                   FROM deployctl_capture.changes ORDER BY id LIMIT %s""",
                (MIGRATION_TABLE, BATCH)).fetchall()
        if not rows:
            return total
        seen = store.Drained()
        batch: list[tuple[Any, ...]] = []
        transactions: dict[int, str] = {}
        migrated: list[tuple[int, str | None]] = []
        revision = store.current_revision(state, release_id)
        for id_, txid, schema, table, op, old, new, migration in rows:
            if migration:
                transactions[txid] = "migrations"
                if table == MIGRATION_TABLE:
                    # A row is written in the shape of the moment it is written: the revision
                    # changes at this row's position, whenever the transactions commit.
                    before, after = (json.loads(image)["version_num"] if image else None
                                     for image in (old, new))
                    revision = store.revision_after(revision, [(before, after)])
                    migrated.append((id_, revision))
            elif snapshot.visible(txid):
                transactions[txid] = "in_snapshot"
            else:
                # For show and export only: replay takes keys from the rows' images, which
                # outlive a renamed table or key column.
                key_cols = keys.get((schema, table), [])
                identity = json.loads(old if old is not None else new or "null", parse_float=Decimal)
                key = ({c: _text(identity[c]) for c in key_cols}
                       if identity and key_cols and all(c in identity for c in key_cols) else None)
                # A trigger row's JSON values are JSON already: its shape is its own keys.
                batch.append((id_, 0, txid, None, schema, table, op, store.jsonb(key), new, old, [], None))
        for kind in transactions.values():
            setattr(seen, kind, getattr(seen, kind) + 1)
        store.record(state, release_id, batch, seen, rows[-1][0], migrated)
        total.add(seen)
        app.execute("DELETE FROM deployctl_capture.changes WHERE id = ANY(%s)", ([r[0] for r in rows],))
        if len(rows) < BATCH:
            return total


def _text(value: Any) -> Any:
    # A key from to_jsonb() may be a JSON number; keys compare as text, like logical ones.
    return value if value is None or isinstance(value, str) else str(value)


# -- the worker ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class CaptureInfo:
    release_id: int
    mode: str
    name: str | None
    snapshot: XidSnapshot


    @classmethod
    def from_row(cls, row: dict[str, Any]) -> CaptureInfo:
        return cls(row["release_id"], row["mode"], row["slot"], XidSnapshot.parse(row["snapshot"]))


# The worker and a step's final drain must not both advance the slot.
_drain_lock = threading.Lock()


# Decoded values are formatted by the session that reads the slot: pin the formats, so that a
# value reads the same in every drain and replays the same into any database.
SESSION_FORMATS = (("TimeZone", "UTC"), ("DateStyle", "ISO, YMD"), ("IntervalStyle", "postgres"),
                   ("bytea_output", "hex"), ("extra_float_digits", "3"))


def wait_flushed(app: psycopg.Connection[Any], lsn: str, timeout: float = 10.0) -> None:
    """Logical decoding reads flushed WAL only; asynchronous commits flush a little later."""
    deadline = time.monotonic() + timeout
    while not app.execute("SELECT pg_current_wal_flush_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0]:  # type: ignore[index]
        if time.monotonic() > deadline:
            raise psycopg.OperationalError(f"WAL not flushed to {lsn} after {timeout:g}s")
        time.sleep(0.01)


def _session(app: psycopg.Connection[Any]) -> None:
    for setting, value in SESSION_FORMATS:
        app.execute("SELECT set_config(%s, %s, false)", (setting, value))


def drain_with(app: psycopg.Connection[Any], state_dsn: str, info: CaptureInfo,
               upto_lsn: str | None = None) -> store.Drained:
    """One whole drain over an open connection to the captured database: the slot's WAL
    collected and decoded (or the capture table read) into the journal's changes."""
    _session(app)
    if upto_lsn is not None and info.mode == "logical":
        wait_flushed(app, upto_lsn)
    with _drain_lock, psycopg.connect(state_dsn, autocommit=True) as state:
        if info.mode == "logical":
            assert info.name is not None
            try:
                collect(app, state, info.release_id, info.name, upto_lsn)
            finally:
                # What was collected before the slot was lost is the delta still.
                drained = decode(state, info.release_id, info.snapshot)
            return drained
        return drain_triggers(app, state, info.release_id, info.snapshot)


def drain(app_dsn: str, state_dsn: str, info: CaptureInfo) -> store.Drained:
    """One drain, with connections of its own."""
    with psycopg.connect(app_dsn, autocommit=True) as app:
        return drain_with(app, state_dsn, info)


def keep_within(app: psycopg.Connection[Any], state_dsn: str, info: CaptureInfo, budget: int
                ) -> SlotWal | None:
    """Lazy capture: collect the slot's WAL into the journal (undecoded) once more than `budget`
    bytes of it are not stored yet. Returns what the slot held (None: trigger capture)."""
    if info.mode != "logical":
        return None
    assert info.name is not None
    wal = slot_wal(app, info.name)
    if wal.pending > budget:
        if budget:  # continuous capture collects every round: only the budget's doing is news
            log.info("capture: over its budget, the slot's WAL goes into the journal",
                     pending=progress.amount(wal.pending), budget=progress.amount(budget))
        _session(app)
        with _drain_lock, psycopg.connect(state_dsn, autocommit=True) as state:
            collect(app, state, info.release_id, info.name)
    return wal


def after_migration(dsn: str, mode: str, schemas: list[str]) -> list[str]:
    """Keep capturing tables the migration created; returns the tables that needed care.

    Triggers are added to new tables. In logical mode new tables are in the publication
    already; one without a primary key gets REPLICA IDENTITY FULL, so that users' UPDATEs and
    DELETEs on it do not fail (its changes are kept, but cannot be replayed by key).
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        if mode == "trigger":
            return install_triggers(conn, schemas)
        keyless = [t for t in tables_without_key(conn, schemas)
                   if conn.execute("SELECT relreplident = 'd' FROM pg_class WHERE oid = %s::regclass",
                                   (t,)).fetchone()[0]]  # type: ignore[index]
        for table in keyless:
            schema, name = conn.execute(
                "SELECT relnamespace::regnamespace::text, relname FROM pg_class WHERE oid = %s::regclass",
                (table,)).fetchone()  # type: ignore[misc]
            conn.execute(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(
                sql.Identifier(schema, name)))
            log.warning("table without a primary key: captured with REPLICA IDENTITY FULL, "
                        "its changes cannot be replayed by key", table=table)
        return keyless


REPORT_EVERY_S = 60.0  # how often a lazy capture tells the WAL its slot holds
# Continuous capture decodes in the background for at most this share of the time (and at the
# lowest CPU priority): decoding in Python costs more CPU than the transactions it decodes, and
# whatever is left is decoded when the delta is needed.
DECODE_SHARE = 0.1


class Worker(threading.Thread):
    """Keeps the capture in hand, every `interval` seconds, in one of three modes:

    - `lazy` keeps the WAL not yet stored within `budget` bytes (see `wal_budget`);
    - `continuous` stores the slot's messages every round and decodes them in a thread of its
      own, at the lowest CPU priority and for at most DECODE_SHARE of the time;
    - `restore` (a rollback's, while the snapshot loads) stores what the slot holds at once and
      decodes it at full speed (users are on blue, and the pause waits for it), then stores again
      only over the budget: the load's long transactions hold the slot's restart point, so every
      read of the slot would go over the load's WAL from there again.
    """

    def __init__(self, app_dsn: str, state_dsn: str, info: CaptureInfo, interval: float = 1.0,
                 mode: str = "continuous", budget: int = 1 << 30) -> None:
        super().__init__(name="deployctl-capture", daemon=True)
        self.app_dsn, self.state_dsn, self.info, self.interval = app_dsn, state_dsn, info, interval
        self.mode, self.budget, self.nice = mode, budget, mode == "continuous"
        self.stopping = threading.Event()
        self.lost: str | None = None
        self.wal: SlotWal | None = None  # what the slot held at the last look

    def run(self) -> None:
        decoder = None
        if self.mode in ("continuous", "restore"):
            decoder = threading.Thread(target=self._decode, name="deployctl-decode", daemon=True)
            decoder.start()
        app: psycopg.Connection[Any] | None = None
        next_report = time.monotonic() + REPORT_EVERY_S
        everything = self.mode in ("continuous", "restore")  # this round stores all the slot holds
        wait = 0.0 if self.mode == "restore" else self.interval  # a restore's first round: at once
        while not self.stopping.wait(wait):
            wait = self.interval
            try:
                if app is None or app.closed:
                    app = psycopg.connect(self.app_dsn, autocommit=True)
                    budget = wal_budget(app, self.budget)
                self.wal = keep_within(app, self.state_dsn, self.info, 0 if everything else budget)
                everything = self.mode == "continuous"
                if self.wal is not None and time.monotonic() >= next_report:
                    next_report = time.monotonic() + REPORT_EVERY_S
                    log.info("capture", slot_holds=progress.amount(self.wal.held),
                             not_yet_stored=progress.amount(self.wal.pending),
                             **({"budget": progress.amount(budget)} if budget else {}))
                if self.info.mode == "trigger" and self.mode != "lazy":
                    drain_with(app, self.state_dsn, self.info)
            except CaptureLost as exc:
                self.lost = str(exc)
                log.error("capture lost: the delta is incomplete", error=str(exc))
                break
            except psycopg.Error as exc:  # the database may be swapping: try again next round
                log.warning("capture drain failed; retrying", error=str(exc).strip())
                if app is not None:
                    app.close()
        if app is not None:
            app.close()
        if decoder is not None:
            self.stopping.set()
            decoder.join()

    def _decode(self) -> None:
        if self.nice:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # this thread (Linux)
        while not self.stopping.wait(self.interval):
            try:
                with psycopg.connect(self.state_dsn, autocommit=True) as state:
                    while True:
                        started = time.monotonic()
                        if not decode(state, self.info.release_id, self.info.snapshot,
                                      self.stopping, most=1).batches:
                            break
                        if self.nice:  # at most DECODE_SHARE of the time: the rest is the users'
                            self.stopping.wait((time.monotonic() - started) * (1 / DECODE_SHARE - 1))
            except psycopg.Error as exc:
                log.warning("decoding the capture failed; retrying", error=str(exc).strip())

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=60)

    def ask_to_stop(self) -> None:
        """Stop after the drain in progress, without waiting for it."""
        self.stopping.set()
