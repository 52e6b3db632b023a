"""Replay: apply a release's delta to a database, mapped to that database's schema.

Each table's changes are folded, in commit order, into their net effect per row (the row's
state after its last change, and what it was before its first) by one query in the journal,
whose result is streamed with COPY into a temporary table beside the target: values never pass
through Python. `jsonb_populate_record()` turns the captured text into the target's types, and
one INSERT, UPDATE and DELETE per table apply it. Before anything is written, each row is
classified against the target:

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
from psycopg.types.json import set_json_loads

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

def changes(state: psycopg.Connection[Any], release_id: int, stored_after: int = 0,
            table: tuple[str, str] | None = None) -> list[dict[str, Any]]:
    """The delta in commit order (optionally only what reached the journal after `stored_after`,
    only one table's)."""
    cur = state.cursor()
    # Every digit of a JSON number counts (trigger capture keeps numbers as JSON numbers).
    set_json_loads(partial(json.loads, parse_float=Decimal, parse_int=Decimal), cur)
    return cur.execute(
        """SELECT pos, seq, xid, committed_at, schema_name, table_name, op, key, new, old, unchanged
           FROM deployctl.changes WHERE release_id = %s AND stored > %s
             AND (%s::text IS NULL OR (schema_name, table_name) = (%s, %s))
           ORDER BY pos, seq""",
        (release_id, stored_after, table and table[0], table and table[0], table and table[1])).fetchall()


# The net effect of a table's changes per key, computed where the delta lives (the journal),
# streamed to the target as COPY bytes: values never go through Python. An UPDATE that changes
# the key is a DELETE of the old key and an INSERT of the new one. A row's final values merge
# its changes in order (so a TOASTed value an update left out keeps the value known before).
_NET = """
WITH raw AS (
    SELECT pos, seq, op, key, new, old,
           CASE WHEN op = 'update' THEN (SELECT jsonb_object_agg(k, new ->> k) FROM jsonb_object_keys(key) k)
           END AS new_key
    FROM deployctl.changes
    WHERE release_id = {rid} AND stored > {after} AND schema_name = {schema} AND table_name = {table}
      AND (pos, seq) > ({from_pos}, {from_seq}) AND op <> 'truncate'),
steps AS (
    SELECT pos, seq, 0 AS part, op, key, new, old FROM raw WHERE new_key IS NOT DISTINCT FROM key
        OR op <> 'update'
    UNION ALL
    SELECT pos, seq, 0, 'delete', key, NULL, old FROM raw WHERE op = 'update' AND new_key <> key
    UNION ALL
    SELECT pos, seq, 1, 'insert', new_key, new, NULL FROM raw WHERE op = 'update' AND new_key <> key)
SELECT (row_number() OVER ()) - 1, key,
       (array_agg(op ORDER BY pos, seq, part))[1],
       (array_agg(old ORDER BY pos, seq, part))[1],
       CASE WHEN (array_agg(op ORDER BY pos DESC, seq DESC, part DESC))[1] = 'delete' THEN NULL
            ELSE pg_temp.deployctl_merge(new ORDER BY pos, seq, part) END,
       NULL::jsonb
FROM steps GROUP BY key
"""


def _merge_aggregate(state: psycopg.Connection[Any]) -> None:
    """jsonb `||` as an aggregate, in this session's temporary schema."""
    exists = state.execute("SELECT 1 FROM pg_proc WHERE proname = 'deployctl_merge' "
                           "AND pronamespace = pg_my_temp_schema()").fetchone()
    if not exists:
        state.execute("CREATE AGGREGATE pg_temp.deployctl_merge(jsonb) (SFUNC = jsonb_concat, STYPE = jsonb)")


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

    def load(self, state: psycopg.Connection[Any], release_id: int, source: str, stored_after: int) -> None:
        """The net changes of `source` from the journal into a temp table here, mapped to the target."""
        self.conn.execute("DROP TABLE IF EXISTS replay_rows")
        self.conn.execute("CREATE TEMP TABLE replay_rows (id int PRIMARY KEY, k jsonb, first_op text, "
                          "old jsonb, final jsonb, src jsonb) ON COMMIT DROP")
        where = {"rid": sql.Literal(release_id), "after": sql.Literal(stored_after),
                 "schema": sql.Literal(self.schema), "table": sql.Literal(source)}
        truncated = state.execute(sql.SQL(
            "SELECT pos, seq FROM deployctl.changes WHERE release_id = {rid} AND stored > {after} "
            "AND schema_name = {schema} AND table_name = {table} AND op = 'truncate' "
            "ORDER BY pos DESC, seq DESC LIMIT 1").format(**where)).fetchone()
        if truncated:  # what came before the last TRUNCATE does not matter
            self.conn.execute(sql.SQL("TRUNCATE {}").format(self.ident))
            self.report.truncated = True
        _merge_aggregate(state)
        query = sql.SQL(_NET).format(  # type: ignore[arg-type]
            from_pos=sql.Literal(truncated["pos"] if truncated else -1),
            from_seq=sql.Literal(truncated["seq"] if truncated else -1), **where)
        with state.cursor().copy(sql.SQL("COPY ({}) TO STDOUT").format(query)) as out, \
                self.conn.cursor().copy("COPY replay_rows FROM STDIN") as into:
            for data in out:
                into.write(data)
        self._map()

    def _map(self) -> None:
        """Source names to target names: renames, expressions, and columns the target lacks."""
        present = {r[0] for r in self.conn.execute(
            "SELECT DISTINCT jsonb_object_keys(final) FROM replay_rows WHERE final IS NOT NULL")}
        taken = {col: self.sources.get(col, col) for col in self.columns if col not in self.expressions}
        renames = {src: col for col, src in taken.items() if src != col and src in present}
        drops = sorted(present - set(taken.values()))
        if drops:
            counts = self.conn.execute(sql.SQL("SELECT {} FROM replay_rows").format(sql.SQL(", ").join(
                sql.SQL("count(*) FILTER (WHERE final ? {c} AND final -> {c} <> 'null')").format(
                    c=sql.Literal(c)) for c in drops))).fetchone()
            for col, n in zip(drops, counts or (), strict=True):
                # A value the expressions read is used, not dropped.
                if n and not any(col in expr for expr in self.expressions.values()):
                    self.report.dropped_columns[col] += n
        if self.expressions:
            self.conn.execute("UPDATE replay_rows SET src = final")
        if drops or renames:
            gone = sql.Literal(drops + sorted(renames))
            def mapped(part: str) -> sql.Composable:
                renamed = sql.SQL(" || ").join(
                    sql.SQL("CASE WHEN {p} ? {s} THEN jsonb_build_object({d}, {p} -> {s}) "
                            "ELSE '{{}}' END").format(p=sql.Identifier(part), s=sql.Literal(src),
                                                      d=sql.Literal(dst))
                    for src, dst in renames.items()) if renames else sql.SQL("'{}'::jsonb")
                return sql.SQL("({p} - {gone}::text[]) || {renamed}").format(
                    p=sql.Identifier(part), gone=gone, renamed=renamed)
            self.conn.execute(sql.SQL("UPDATE replay_rows SET k = {}, old = {}, final = {}").format(
                mapped("k"), mapped("old"), mapped("final")))
        for col, expr in self.expressions.items():
            # Playbook expressions see the new version's row as jsonb `new`.
            self.conn.execute(sql.SQL(
                "UPDATE replay_rows r SET final = r.final || jsonb_build_object({}, "
                "(SELECT ({}) FROM (SELECT r.src AS new) s)) WHERE r.final IS NOT NULL").format(
                    sql.Literal(col), sql.SQL(expr)))  # type: ignore[arg-type]

    def conflicting(self, ids: list[int]) -> dict[int, tuple[dict[str, Any], dict[str, Any] | None]]:
        """The key and final values of the rows that conflict (for the report)."""
        rows = self.conn.execute("SELECT id, k, final FROM replay_rows WHERE id = ANY(%s)", (ids,)).fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}

    def target_row(self, ctid: Any) -> dict[str, Any] | None:
        """The target's row (for a conflict listing), by the ctid classify() saw."""
        row = self.conn.execute(sql.SQL("SELECT to_jsonb({t}) FROM {tbl} AS {t} WHERE ctid = %s::tid").format(
            t=_T, tbl=self.ident), (ctid,)).fetchone()
        return row[0] if row else None

    def classify(self) -> list[tuple[int, str, bool, bool, bool | None, bool | None, Any]]:
        """Per row: id, first op, deleted, target has it, equals final, equals old image, ctid."""
        every = self._row(self.columns, keep_target=True)
        target_row = sql.SQL(", ").join(sql.SQL("{}.{}").format(_T, sql.Identifier(c)) for c in self.columns)
        rows = self.conn.execute(sql.SQL(
            """SELECT {r}.id, {r}.first_op, {r}.final IS NULL, {t}.ctid IS NOT NULL,
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
        return rows  # type: ignore[return-value]

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


def _decide(first_op: str, deleted: bool, present: bool, same_final: bool | None, same_old: bool | None
            ) -> tuple[str, str | None]:
    """(action, conflict kind) for one net row; action is insert|update|delete|already."""
    if deleted:
        if not present:
            return "already", None
        if same_old is False:
            return "delete", "changed_since"
        return "delete", None
    if present and same_final:
        return "already", None
    if present:
        if first_op == "insert":
            return "update", "key_exists"
        if same_old is False:
            return "update", "changed_since"
        return "update", None
    if first_op == "insert":
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


def apply(state: psycopg.Connection[Any], release_id: int, target_dsn: str, options: Options,
          stored_after: int = 0) -> Report:
    """Replay the delta of `release_id` (from the journal at `state`) into `target_dsn`;
    `stored_after` limits it to what reached the journal after that point (a restore's tail)."""
    report = Report(release_id, options.dry_run)
    tables = state.execute(
        """SELECT schema_name, table_name, count(*) FROM deployctl.changes
           WHERE release_id = %s AND stored > %s GROUP BY 1, 2 ORDER BY 1, 2""",
        (release_id, stored_after)).fetchall()
    side_effects: list[dict[str, Any]] = []
    written: list[_Table] = []
    with psycopg.connect(target_dsn) as conn:
        try:
            _session_setup(conn)
            for row in tables:
                schema, source, count = (row["schema_name"], row["table_name"], row["count"]) if isinstance(
                    row, dict) else row
                mapping = options.tables.get(source, TableMap())
                target = mapping.target or source
                table_report = report.tables.setdefault(source, TableReport(source, count))
                if source in options.side_effects or target in options.side_effects:
                    table_report.side_effect = True
                    side_effects.extend(changes(state, release_id, stored_after, (schema, source)))
                    continue
                shape = _target_shape(conn, schema, target)
                if shape is None:
                    table_report.missing = True
                    continue
                if not shape.pk:  # cannot be matched row by row: kept in the delta, reported
                    table_report.no_key = True
                    continue
                table = _Table(conn, schema, target, shape, mapping, table_report, options.json_as_text)
                table.load(state, release_id, source, stored_after)
                if _replay_table(table, report, options):
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
        # A restore's tail adds to what its first replay wrote.
        write_jsonl(options.reconciliation, side_effects, append=stored_after > 0)
        report.reconciliation = str(options.reconciliation)
    return report


def _replay_table(table: _Table, report: Report, options: Options) -> bool:
    """Classify and apply the loaded rows; True if it wrote rows whose sequences may need moving."""
    actions: dict[str, list[int]] = {"insert": [], "update": [], "delete": []}
    conflicts: list[tuple[int, str, Any]] = []
    for row_id, first_op, deleted, present, same_final, same_old, ctid in table.classify():
        action, conflict = _decide(first_op, deleted, present, same_final, same_old)
        if conflict is not None:
            conflicts.append((row_id, conflict, ctid if present else None))
            if options.on_conflict != "overwrite":
                table.report.skipped += 1
                continue
        if action == "already":
            table.report.already += 1
        else:
            actions[action].append(row_id)
    if conflicts:
        resolution = {"fail": "none", "skip": "skipped", "overwrite": "overwritten"}[options.on_conflict]
        ours = table.conflicting([c[0] for c in conflicts])
        for row_id, kind, ctid in conflicts:
            key, final = ours[row_id]
            report.conflicts.append(Conflict(
                table.target, kind, _mask(table.target, key, options.personal) or {},
                _mask(table.target, final, options.personal),
                _mask(table.target, table.target_row(ctid) if ctid else None, options.personal),
                resolution))
    table.apply(actions["insert"], actions["update"], actions["delete"])
    table.report.inserted += len(actions["insert"])
    table.report.updated += len(actions["update"])
    table.report.deleted += len(actions["delete"])
    return bool(actions["insert"] or actions["update"])


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]], append: bool = False) -> None:
    """Compressed JSON lines, created 0600 in a 0700 folder: they hold user data."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC), 0o600)
    with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb") as out:
        for row in rows:
            out.write(json.dumps(row, default=str).encode() + b"\n")
