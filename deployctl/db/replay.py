"""Replay: apply a release's delta to a database, mapped to that database's schema.

Changes are read in commit order and folded into their net effect per row (the row's state
after its last change, and what it was before its first), then applied set-wise: COPY into a
temporary table, `jsonb_populate_record()` to turn the captured text into the target's types,
and one INSERT, UPDATE and DELETE per table. Before anything is written, each row is classified
against the target:

- already applied: the target row already holds the final values (a second replay changes
  nothing, and says so);
- conflict `key_exists`: the delta inserted a key the target holds with other values;
- conflict `changed_since`: the target row differs from what the delta saw before its change
  (known when the captured table has a full old image: trigger capture, REPLICA IDENTITY FULL);
- conflict `row_gone`: the delta updated a row the target no longer has.

Conflicts follow the policy (`fail`: nothing is applied; `skip`; `overwrite`). Tables marked as
external side effects are never replayed: their changes go to a reconciliation file. Columns the
target lacks are dropped and counted; tables it lacks are reported (the delta keeps them for a
later replay). Everything runs in one transaction with `session_replication_role = replica`
(no triggers, no foreign-key order to respect) and replication origin `deployctl`, so a capture
running on the target does not capture the replay. Sequences are moved past the replayed keys.
"""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb, set_json_loads

from deployctl.db.capture import ORIGIN
from deployctl.errors import StepFailed

Policy = Literal["fail", "skip", "overwrite"]
MASK = "***"


@dataclass(frozen=True)
class TableMap:
    """How one source table lands in the target: its name there and per-column sources."""

    target: str | None = None                      # default: the same name
    columns: dict[str, dict[str, str]] = field(default_factory=dict)  # col: {from: x} | {expr: sql}


@dataclass(frozen=True)
class Options:
    on_conflict: Policy = "fail"
    side_effects: frozenset[str] = frozenset()
    tables: dict[str, TableMap] = field(default_factory=dict)
    personal: frozenset[str] = frozenset()          # "table.column"
    dry_run: bool = False
    reconciliation: Path | None = None
    json_as_text: bool = True        # logical capture; trigger capture keeps JSON values


@dataclass
class Conflict:
    table: str
    kind: str
    key: dict[str, Any]
    ours: dict[str, Any] | None
    theirs: dict[str, Any] | None
    resolution: str


@dataclass
class TableReport:
    table: str
    changes: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    already: int = 0
    skipped: int = 0
    truncated: bool = False
    missing: bool = False
    no_key: bool = False
    side_effect: bool = False
    dropped_columns: Counter[str] = field(default_factory=Counter)


@dataclass
class Report:
    release_id: int
    dry_run: bool
    tables: dict[str, TableReport] = field(default_factory=dict)
    conflicts: list[Conflict] = field(default_factory=list)
    side_effect_rows: int = 0
    reconciliation: str | None = None

    @property
    def applied(self) -> int:
        return sum(t.inserted + t.updated + t.deleted for t in self.tables.values())

    def summary(self) -> str:
        changes = sum(t.changes for t in self.tables.values())
        already = sum(t.already for t in self.tables.values())
        missing = [t.table for t in self.tables.values() if t.missing]
        dropped = sum(sum(t.dropped_columns.values()) for t in self.tables.values())
        text = (f"{changes} changes: {self.applied} rows written, {already} already there, "
                f"{len(self.conflicts)} conflicts, {self.side_effect_rows} side-effect rows kept "
                f"for reconciliation, {dropped} values of columns the target lacks dropped")
        if missing:
            text += f"; tables the target lacks, kept in the delta: {', '.join(missing)}"
        keyless = [t.table for t in self.tables.values() if t.no_key]
        if keyless:
            text += f"; tables without a primary key, kept in the delta: {', '.join(keyless)}"
        if changes and self.applied == 0 and not self.conflicts:
            text += "; nothing to do: the delta is already in this database"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "release_id": self.release_id, "dry_run": self.dry_run, "summary": self.summary(),
            "applied": self.applied, "side_effect_rows": self.side_effect_rows,
            "reconciliation": self.reconciliation,
            "tables": {name: {**t.__dict__, "dropped_columns": dict(t.dropped_columns)}
                       for name, t in self.tables.items()},
            "conflicts": [c.__dict__ for c in self.conflicts],
        }


class ReplayConflict(StepFailed):
    """Conflicts under policy `fail`: nothing was applied."""

    def __init__(self, report: Report) -> None:
        self.report = report
        first = report.conflicts[0]
        super().__init__(f"{len(report.conflicts)} conflicts, nothing applied (first: {first.table} "
                         f"{first.kind} at {first.key}); use --on-conflict skip or overwrite")


# -- reading the delta ---------------------------------------------------------------------------

def changes(state: psycopg.Connection[Any], release_id: int, stored_after: int = 0
            ) -> list[dict[str, Any]]:
    """The delta in commit order (optionally only what reached the journal after `stored_after`)."""
    cur = state.cursor()
    # Every digit of a JSON number counts (trigger capture keeps numbers as JSON numbers).
    set_json_loads(partial(json.loads, parse_float=Decimal, parse_int=Decimal), cur)
    return cur.execute(
        """SELECT pos, seq, xid, committed_at, schema_name, table_name, op, key, new, old, unchanged
           FROM deployctl.changes WHERE release_id = %s AND stored > %s
           ORDER BY pos, seq""",
        (release_id, stored_after)).fetchall()


@dataclass
class Net:
    """A row's net change: first op and image before it, final values (None: deleted)."""

    first_op: str
    key: dict[str, Any]
    old: dict[str, Any] | None
    final: dict[str, Any] | None


def fold(rows: Iterable[dict[str, Any]], pk: list[str]) -> tuple[dict[tuple[Any, ...], Net], bool]:
    """Net effect per key and whether a TRUNCATE came first."""
    net: dict[tuple[Any, ...], Net] = {}
    truncated = False

    def key_of(values: dict[str, Any]) -> tuple[Any, ...]:
        # Trigger capture keeps JSON numbers where logical capture has text: compare as text.
        return tuple(v if v is None or isinstance(v, str) else str(v) for v in (values.get(c) for c in pk))

    for row in rows:
        op = row["op"]
        if op == "truncate":
            net.clear()
            truncated = True
            continue
        key = row["key"] or {}
        old_key = key_of(key)
        if op == "delete":
            entry = net.get(old_key)
            if entry is None:
                net[old_key] = Net("delete", key, row["old"], None)
            else:
                entry.final = None
            continue
        new = row["new"]
        new_key = key_of(new) if all(c in new for c in pk) else old_key
        if op == "update" and new_key != old_key:  # the key itself changed: delete, then insert
            previous = net.get(old_key)
            carried = previous.final if previous and previous.final else {}
            if previous is None:
                net[old_key] = Net("update", key, row["old"], None)
            else:
                previous.final = None
            net[new_key] = Net("insert", {c: new.get(c) for c in pk}, None, {**carried, **new})
            continue
        entry = net.get(new_key)
        if entry is None:
            net[new_key] = Net(op, {c: new.get(c) for c in pk} if op == "insert" else key,
                               row["old"], dict(new))
        else:
            entry.final = {**(entry.final or {}), **new}
    return net, truncated


# -- the target's schema -------------------------------------------------------------------------

@dataclass(frozen=True)
class Shape:
    """What replay needs to know of a target table's columns."""

    columns: list[str]          # writable columns (generated ones are the target's to compute)
    pk: list[str]
    json: dict[str, str]        # json/jsonb columns and their type
    always_identity: set[str]   # GENERATED ALWAYS AS IDENTITY: never SET by an UPDATE


def _target_shape(conn: psycopg.Connection[Any], schema: str, table: str) -> Shape | None:
    """The target table's shape, or None if it does not exist."""
    rows = conn.execute(
        """SELECT a.attname, COALESCE(a.attnum = ANY(i.indkey), false), a.atttypid::regtype::text,
                  a.attidentity = 'a'
           FROM pg_attribute a
           LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
           WHERE a.attrelid = to_regclass(format('%%I.%%I', %s::text, %s::text))
             AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
           ORDER BY a.attnum""",
        (schema, table)).fetchall()
    if not rows:
        return None
    return Shape([r[0] for r in rows], [r[0] for r in rows if r[1]],
                 {r[0]: r[2] for r in rows if r[2] in ("json", "jsonb")}, {r[0] for r in rows if r[3]})


def _mask(table: str, values: dict[str, Any] | None, personal: frozenset[str]) -> dict[str, Any] | None:
    if values is None:
        return None
    return {k: (MASK if f"{table}.{k}" in personal and v is not None else v) for k, v in values.items()}


# -- applying ------------------------------------------------------------------------------------

def _jsonb(values: dict[str, Any] | None, json_columns: dict[str, str]) -> Jsonb | None:
    """A row for jsonb_populate_record: exact numbers go in as text, which numeric reads exactly
    (but a json/jsonb column's number stays a JSON number)."""
    if values is None:
        return None
    plain = {k: str(v) if isinstance(v, Decimal) and k not in json_columns else v
             for k, v in values.items()}
    return Jsonb(plain, dumps=_dumps)


def _dumps(value: Any) -> str:
    # Numbers nested in a json/jsonb column's value stay numbers.
    return json.dumps(value, default=_number)


def _number(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value.as_tuple().exponent >= 0 else float(value)  # type: ignore[operator]
    return str(value)


# Aliases of the replay queries: long enough never to be the name of a user's column.
_T, _R, _P, _K = (sql.Identifier(a) for a in ("deployctl_t", "deployctl_r", "deployctl_p", "deployctl_k"))


class _Table:
    """Replay of one source table into its target table, inside the caller's transaction."""

    def __init__(self, conn: psycopg.Connection[Any], schema: str, target: str, shape: Shape,
                 mapping: TableMap, report: TableReport, json_as_text: bool) -> None:
        self.conn, self.schema, self.target = conn, schema, target
        self.ident = sql.Identifier(schema, target)
        self.shape, self.columns, self.pk = shape, shape.columns, shape.pk
        self.mapping, self.report = mapping, report
        # Logical capture keeps json/jsonb values as their exact text; triggers as JSON values.
        self.json_as_text = json_as_text
        self.sources = {col: spec["from"] for col, spec in mapping.columns.items() if "from" in spec}
        self.expressions = {col: spec["expr"] for col, spec in mapping.columns.items() if "expr" in spec}

    def map_row(self, values: dict[str, Any] | None, count_drops: bool) -> dict[str, Any] | None:
        if values is None:
            return None
        out = {}
        used = set()
        for col in self.columns:
            source = self.sources.get(col, col)
            if col not in self.expressions and source in values:
                out[col] = values[source]
                used.add(source)
        if count_drops:
            for name, value in values.items():
                if name not in used and value is not None and not self._feeds_expression(name):
                    self.report.dropped_columns[name] += 1
        return out

    def _feeds_expression(self, name: str) -> bool:
        return any(name in expr for expr in self.expressions.values())

    def _key_match(self) -> sql.Composable:
        return sql.SQL(" AND ").join(
            sql.SQL("{}.{} = {}.{}").format(_T, sql.Identifier(c), _K, sql.Identifier(c)) for c in self.pk)

    def _value(self, col: str, keep_target: bool) -> sql.Composable:
        """The value a row gets for `col`: from the delta, else (updates) the target's own."""
        name = sql.Identifier(col)
        kind = self.shape.json.get(col)
        if kind is None:
            return sql.SQL("{}.{}").format(_P, name)
        cast = sql.SQL(kind)  # "json" or "jsonb", from the catalog
        value = (sql.SQL("({}.final ->> {})::{}") if self.json_as_text
                 else sql.SQL("NULLIF({}.final -> {}, 'null')::{}")).format(_R, sql.Literal(col), cast)
        if not keep_target:
            return value
        return sql.SQL("CASE WHEN {r}.final ? {c} THEN {v} ELSE {t}.{n} END").format(
            r=_R, c=sql.Literal(col), v=value, t=_T, n=name)

    def _row(self, columns: list[str], keep_target: bool) -> sql.Composable:
        return sql.SQL(", ").join(self._value(c, keep_target) for c in columns)

    def load(self, net: dict[tuple[Any, ...], Net]) -> list[tuple[int, Net]]:
        """Put the mapped net changes in a temp table; return them numbered."""
        self.conn.execute("DROP TABLE IF EXISTS replay_rows")
        self.conn.execute("CREATE TEMP TABLE replay_rows (id int PRIMARY KEY, k jsonb, first_op text, "
                          "old jsonb, final jsonb, src jsonb) ON COMMIT DROP")
        numbered = list(enumerate(net.values()))
        with self.conn.cursor().copy("COPY replay_rows FROM STDIN") as copy:
            for i, entry in numbered:
                final = self.map_row(entry.final, count_drops=True)
                keyvals = self.map_row(entry.key, count_drops=False) or {}
                json_columns = self.shape.json
                copy.write_row((i, _jsonb({c: keyvals.get(c) for c in self.pk}, json_columns),
                                entry.first_op, _jsonb(self.map_row(entry.old, False), json_columns),
                                _jsonb(final, json_columns),
                                # The unmapped row, for playbook expressions only.
                                _jsonb(entry.final, json_columns) if self.expressions else None))
        for col, expr in self.expressions.items():
            # Playbook expressions see the new version's row as jsonb `new`.
            self.conn.execute(sql.SQL(
                "UPDATE replay_rows r SET final = r.final || jsonb_build_object({}, "
                "(SELECT ({}) FROM (SELECT r.src AS new) s)) WHERE r.final IS NOT NULL").format(
                    sql.Literal(col), sql.SQL(expr)))  # type: ignore[arg-type]
        return numbered

    def target_row(self, ctid: Any) -> dict[str, Any] | None:
        """The target's row (for a conflict listing), by the ctid classify() saw."""
        row = self.conn.execute(sql.SQL("SELECT to_jsonb({t}) FROM {tbl} AS {t} WHERE ctid = %s::tid").format(
            t=_T, tbl=self.ident), (ctid,)).fetchone()
        return row[0] if row else None

    def classify(self) -> dict[int, tuple[bool, bool | None, bool | None, Any]]:
        """Per row id: (target has it, equals final, equals old image, the target row's ctid)."""
        every = self._row(self.columns, keep_target=True)
        target_row = sql.SQL(", ").join(sql.SQL("{}.{}").format(_T, sql.Identifier(c)) for c in self.columns)
        rows = self.conn.execute(sql.SQL(
            """SELECT {r}.id, {t}.ctid IS NOT NULL,
                      CASE WHEN {t}.ctid IS NOT NULL AND {r}.final IS NOT NULL
                           THEN ROW({target_row})::text = ROW({every})::text END,
                      CASE WHEN {t}.ctid IS NOT NULL AND {r}.old IS NOT NULL
                           THEN ROW({target_row})::text = ROW({old_row})::text END,
                      {t}.ctid
               FROM replay_rows {r}
               CROSS JOIN LATERAL jsonb_populate_record(NULL::{tbl}, {r}.k) AS {k}
               LEFT JOIN {tbl} AS {t} ON {match}
               LEFT JOIN LATERAL jsonb_populate_record({t}, {r}.final) AS {p} ON true""").format(
                   r=_R, t=_T, k=_K, p=_P, tbl=self.ident, match=self._key_match(), every=every,
                   target_row=target_row, old_row=self._old_row())).fetchall()
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}

    def _old_row(self) -> sql.Composable:
        # The same as _row(), over the old image: populate the target row with `old`.
        return sql.SQL(", ").join(
            sql.SQL("(jsonb_populate_record({t}, {r}.old)).{c}").format(t=_T, r=_R, c=sql.Identifier(c))
            if c not in self.shape.json else
            sql.SQL("CASE WHEN {r}.old ? {l} THEN {v} ELSE {t}.{c} END").format(
                r=_R, l=sql.Literal(c), t=_T, c=sql.Identifier(c),
                v=(sql.SQL("({}.old ->> {})::{}") if self.json_as_text else
                   sql.SQL("NULLIF({}.old -> {}, 'null')::{}")).format(
                       _R, sql.Literal(c), sql.SQL(self.shape.json[c])))
            for c in self.columns)

    def apply(self, inserts: list[int], updates: list[int], deletes: list[int]) -> None:
        if deletes:
            self.conn.execute(sql.SQL(
                "DELETE FROM {tbl} AS {t} USING replay_rows {r}, "
                "jsonb_populate_record(NULL::{tbl}, {r}.k) {k} WHERE {r}.id = ANY(%s) AND {match}").format(
                    tbl=self.ident, t=_T, r=_R, k=_K, match=self._key_match()), (deletes,))
        if updates:
            settable = [c for c in self.columns if c not in self.shape.always_identity]
            self.conn.execute(sql.SQL(
                "UPDATE {tbl} AS {t} SET ({cols}) = "
                "(SELECT {row} FROM jsonb_populate_record({t}, {r}.final) {p}) "
                "FROM replay_rows {r}, jsonb_populate_record(NULL::{tbl}, {r}.k) {k} "
                "WHERE {r}.id = ANY(%s) AND {match}").format(
                    tbl=self.ident, t=_T, r=_R, k=_K, p=_P, match=self._key_match(),
                    cols=sql.SQL(", ").join(map(sql.Identifier, settable)),
                    row=self._row(settable, keep_target=True)),
                (updates,))
        if inserts:
            # Rows with different column sets insert apart, so absent columns get their defaults.
            shapes: dict[tuple[str, ...], list[int]] = {}
            for row_id, keys in self.conn.execute(
                    "SELECT id, ARRAY(SELECT jsonb_object_keys(final)) FROM replay_rows WHERE id = ANY(%s)",
                    (inserts,)).fetchall():
                shapes.setdefault(tuple(c for c in self.columns if c in keys), []).append(row_id)
            for cols, ids in shapes.items():
                self.conn.execute(sql.SQL(
                    "INSERT INTO {tbl} ({cols}) OVERRIDING SYSTEM VALUE SELECT {row} FROM replay_rows {r}, "
                    "jsonb_populate_record(NULL::{tbl}, {r}.final) {p} WHERE {r}.id = ANY(%s)").format(
                        tbl=self.ident, cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
                        row=self._row(list(cols), keep_target=False), r=_R, p=_P),
                    (ids,))

    def fix_sequences(self) -> None:
        for col, seq in self.conn.execute(
                """SELECT a.attname, pg_get_serial_sequence(format('%%I.%%I', %s::text, %s::text), a.attname)
                   FROM pg_attribute a WHERE a.attrelid = to_regclass(format('%%I.%%I', %s::text, %s::text))
                     AND a.attnum > 0 AND NOT a.attisdropped""",
                (self.schema, self.target, self.schema, self.target)).fetchall():
            if seq is None:
                continue
            self.conn.execute(sql.SQL(
                "SELECT setval(%s::regclass, m) FROM (SELECT max({col}) AS m FROM {tbl}) s "
                "WHERE m > COALESCE(pg_sequence_last_value(%s::regclass), 0)").format(
                    col=sql.Identifier(col), tbl=self.ident), (seq, seq))


def _decide(entry: Net, present: bool, same_final: bool | None, same_old: bool | None
            ) -> tuple[str, str | None]:
    """(action, conflict kind) for one net row; action is insert|update|delete|already."""
    if entry.final is None:
        if not present:
            return "already", None
        if same_old is False:
            return "delete", "changed_since"
        return "delete", None
    if present and same_final:
        return "already", None
    if present:
        if entry.first_op == "insert":
            return "update", "key_exists"
        if same_old is False:
            return "update", "changed_since"
        return "update", None
    if entry.first_op == "insert":
        return "insert", None
    return "insert", "row_gone"


def _session_setup(conn: psycopg.Connection[Any]) -> None:
    """No triggers, no FK order, and a replication origin, where this role may set them."""
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    if not row or not row[0]:
        return
    conn.execute("SET LOCAL session_replication_role = replica")
    if conn.execute("SELECT current_setting('wal_level') = 'logical'").fetchone()[0]:  # type: ignore[index]
        conn.execute("SELECT pg_replication_origin_create(%s) WHERE NOT EXISTS "
                     "(SELECT 1 FROM pg_replication_origin WHERE roname = %s)", (ORIGIN, ORIGIN))
        conn.execute("SELECT pg_replication_origin_session_setup(%s)", (ORIGIN,))


def _session_reset(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SELECT pg_replication_origin_session_reset() "
                 "WHERE pg_replication_origin_session_is_setup()")


def apply(rows: list[dict[str, Any]], target_dsn: str, release_id: int, options: Options) -> Report:
    """Replay `rows` (from `changes()`) into the database at `target_dsn`."""
    report = Report(release_id, options.dry_run)
    by_table: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        by_table.setdefault((row["schema_name"], row["table_name"]), []).append(row)
    side_effects: list[dict[str, Any]] = []
    written: list[_Table] = []
    with psycopg.connect(target_dsn) as conn:
        try:
            _session_setup(conn)
            for (schema, source), table_rows in by_table.items():
                mapping = options.tables.get(source, TableMap())
                target = mapping.target or source
                table_report = report.tables.setdefault(source, TableReport(source, len(table_rows)))
                if source in options.side_effects or target in options.side_effects:
                    table_report.side_effect = True
                    side_effects.extend(table_rows)
                    continue
                shape = _target_shape(conn, schema, target)
                if shape is None:
                    table_report.missing = True
                    continue
                if not shape.pk:  # cannot be matched row by row: kept in the delta, reported
                    table_report.no_key = True
                    continue
                table = _Table(conn, schema, target, shape, mapping, table_report, options.json_as_text)
                if _replay_table(table, table_rows, report, options):
                    written.append(table)
            if report.conflicts and options.on_conflict == "fail":
                raise ReplayConflict(report)
            if not options.dry_run:
                # setval() is not transactional: only once nothing can undo the replay.
                for table in written:
                    table.fix_sequences()
        except BaseException:
            conn.rollback()
            raise
        if options.dry_run:
            conn.rollback()
        else:
            conn.commit()
        # After the commit: the commit record is what carries the origin.
        _session_reset(conn)
    report.side_effect_rows = len(side_effects)
    if side_effects and options.reconciliation and not options.dry_run:
        write_jsonl(options.reconciliation, side_effects)
        report.reconciliation = str(options.reconciliation)
    return report


def _replay_table(table: _Table, rows: list[dict[str, Any]], report: Report, options: Options) -> bool:
    """Replay one table's changes; True if it wrote rows that may need their sequences moved."""
    conn = table.conn
    source_pk = list((rows[0]["key"] or {}).keys()) or table.pk
    net, truncated = fold(rows, source_pk)
    if truncated:
        conn.execute(sql.SQL("TRUNCATE {}").format(table.ident))
        table.report.truncated = True
    numbered = table.load(net)
    states = table.classify()
    actions: dict[str, list[int]] = {"insert": [], "update": [], "delete": []}
    for row_id, entry in numbered:
        present, same_final, same_old, ctid = states[row_id]
        action, conflict = _decide(entry, present, same_final, same_old)
        if conflict is not None:
            resolution = {"fail": "none", "skip": "skipped", "overwrite": "overwritten"}[options.on_conflict]
            report.conflicts.append(Conflict(
                table.target, conflict, _mask(table.target, entry.key, options.personal) or {},
                _mask(table.target, entry.final, options.personal),
                _mask(table.target, table.target_row(ctid) if present else None, options.personal),
                resolution))
            if options.on_conflict != "overwrite":
                table.report.skipped += 1
                continue
        if action == "already":
            table.report.already += 1
        else:
            actions[action].append(row_id)
    table.apply(actions["insert"], actions["update"], actions["delete"])
    table.report.inserted += len(actions["insert"])
    table.report.updated += len(actions["update"])
    table.report.deleted += len(actions["delete"])
    return bool(actions["insert"] or actions["update"])


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Compressed JSON lines, created 0600 in a 0700 folder: they hold user data."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb") as out:
        for row in rows:
            out.write(json.dumps(row, default=str).encode() + b"\n")
