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

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from deployctl.db import capture_store as store
from deployctl.db import pgoutput
from deployctl.log import log

SQL_DIR = Path(__file__).resolve().parent.parent.parent / "sql"
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
        conn.execute((SQL_DIR / "capture_triggers.sql").read_text())  # type: ignore[arg-type]
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

def _shape(relation: pgoutput.Relation) -> store.ShapeKey:
    """The shape a change was captured in: its table's columns, and which hold JSON (logical
    capture keeps those as text, so that replay can read them as JSON where it must)."""
    return (relation.schema, relation.name, tuple(c.name for c in relation.columns),
            tuple(c.name for c in relation.columns if c.type_oid in JSON_TYPES))


def drain_logical(app: psycopg.Connection[Any], state: psycopg.Connection[Any], release_id: int,
                  slot: str, snapshot: XidSnapshot, upto_lsn: str | None = None) -> store.Drained:
    """Move the slot's committed transactions into the journal; return what was seen."""
    total = store.Drained()
    while True:
        status = app.execute("SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s",
                             (slot,)).fetchone()
        if status is None or status[0] == "lost":
            raise CaptureLost(f"replication slot {slot} is {'gone' if status is None else 'lost'}")
        messages = app.execute(
            """SELECT data FROM pg_logical_slot_peek_binary_changes(
                   %s, %s::pg_lsn, %s, 'proto_version', '1', 'publication_names', %s)""",
            (slot, upto_lsn, BATCH, slot)).fetchall()
        decoder = pgoutput.Decoder()
        rows: list[tuple[Any, ...]] = []
        seen = store.Drained()
        migrated: list[tuple[int, str | None]] = []
        revision = store.current_revision(state, release_id)
        end_lsn = 0
        for (data,) in messages:
            tx = decoder.feed(bytes(data))
            if tx is None:
                continue
            end_lsn = tx.end_lsn
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
        if end_lsn == 0:
            return total
        store.record(state, release_id, rows, seen, end_lsn, migrated)
        total.add(seen)
        # Only now that the journal has them may the slot forget them.
        app.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)",
                    (slot, pgoutput.format_lsn(end_lsn)))
        if len(messages) < BATCH:
            return total


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


def drain_with(app: psycopg.Connection[Any], state_dsn: str, info: CaptureInfo,
               upto_lsn: str | None = None) -> store.Drained:
    """One drain over an open connection to the captured database."""
    for setting, value in SESSION_FORMATS:
        app.execute("SELECT set_config(%s, %s, false)", (setting, value))
    if upto_lsn is not None and info.mode == "logical":
        wait_flushed(app, upto_lsn)
    with _drain_lock, psycopg.connect(state_dsn, autocommit=True) as state:
        if info.mode == "logical":
            assert info.name is not None
            return drain_logical(app, state, info.release_id, info.name, info.snapshot, upto_lsn)
        return drain_triggers(app, state, info.release_id, info.snapshot)


def drain(app_dsn: str, state_dsn: str, info: CaptureInfo) -> store.Drained:
    """One drain, with connections of its own."""
    with psycopg.connect(app_dsn, autocommit=True) as app:
        return drain_with(app, state_dsn, info)


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


class Worker(threading.Thread):
    """Drains the capture every `interval` seconds while the release runs."""

    def __init__(self, app_dsn: str, state_dsn: str, info: CaptureInfo, interval: float = 1.0) -> None:
        super().__init__(name="deployctl-capture", daemon=True)
        self.app_dsn, self.state_dsn, self.info, self.interval = app_dsn, state_dsn, info, interval
        self.stopping = threading.Event()
        self.lost: str | None = None

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                drain(self.app_dsn, self.state_dsn, self.info)
            except CaptureLost as exc:
                self.lost = str(exc)
                log.error("capture lost: the delta is incomplete", error=str(exc))
                return
            except psycopg.Error as exc:  # the database may be swapping: try again next round
                log.warning("capture drain failed; retrying", error=str(exc).strip())

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=60)

    def ask_to_stop(self) -> None:
        """Stop after the drain in progress, without waiting for it."""
        self.stopping.set()
