"""Replay: apply a release's delta to a database, mapped to that database's schema.

Each table's changes are streamed once with COPY from the journal into a temporary table beside
the target (values never pass through Python), mapped there from the shape they were captured
in (`shapes`), then planned by one query: folded, in commit order, into their net effect per row
(`fold`), converted to the target's types (logical capture's text by each type's input, as COPY
does; trigger capture's JSON by `jsonb_populate_record()`) and classified against the target,
before anything is written (then one INSERT, UPDATE and DELETE per table apply the plan):

- already applied: the target row already holds the final values (a second replay changes
  nothing, and says so);
- conflict `key_exists`: the delta inserted a key the target holds with other values;
- conflict `changed_since`: the target row differs from what the delta saw before its change
  (known when the captured table has a full old image: trigger capture, REPLICA IDENTITY FULL);
- conflict `row_gone`: the delta updated a row the target no longer has;
- conflict `parent_gone`: the row's parent, in a table this replay does not write, is not in
  the target (deleted since): never written, whatever the policy.

Conflicts follow the policy (`fail`: nothing is applied; `skip`; `overwrite`). Tables marked as
external side effects are never replayed: their changes go to a reconciliation file. Columns the
target lacks are dropped and counted; tables it lacks are reported (the delta keeps them for a
later replay). Every table is planned first, then written in foreign-key order with the
application's triggers quiet (`constraints`), in one transaction, under replication origin
`deployctl` where the role may set one, so a capture running on the target does not capture the
replay. Sequences are moved past the replayed keys.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql

from deployctl import progress
from deployctl.db import constraints, fold, shapes
from deployctl.db.capture import ORIGIN
from deployctl.db.shapes import History
from deployctl.errors import StepFailed
from deployctl.journal import delta as delta_rows
from deployctl.redact import mask_personal

Policy = Literal["fail", "skip", "overwrite"]
UNWRITABLE = "parent_gone"  # a conflict no policy overwrites
TEMP_BUFFERS = "256MB"       # the replay's temporary tables stay in memory up to this size


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
    history: History = History()     # the revisions the capture went through
    only: frozenset[str] = frozenset()  # replay these tables only (their names in either version)


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
    stages: dict[str, float] = field(default_factory=dict)  # seconds spent per stage, all tables

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
                f"for reconciliation, {dropped} values of columns only the newer version has, dropped")
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


@dataclass(frozen=True)
class Target:
    """What replay needs to know of a target table's columns (the shape changes are mapped to)."""

    columns: list[str]          # writable columns (generated ones are the target's to compute)
    pk: list[str]
    json: dict[str, str]        # json/jsonb columns and their type
    types: dict[str, str]       # every writable column's type, as SQL (format_type)
    always_identity: set[str]   # GENERATED ALWAYS AS IDENTITY: never SET by an UPDATE
    computed: set[str]          # generated columns


def _target_shape(conn: psycopg.Connection[Any], schema: str, table: str) -> Target | None:
    """The target table's shape, or None if it does not exist."""
    rows = conn.execute(
        """SELECT a.attname, COALESCE(a.attnum = ANY(i.indkey), false), a.atttypid::regtype::text,
                  a.attidentity = 'a', a.attgenerated <> '', format_type(a.atttypid, a.atttypmod)
           FROM pg_attribute a
           LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
           WHERE a.attrelid = to_regclass(format('%%I.%%I', %s::text, %s::text))
             AND a.attnum > 0 AND NOT a.attisdropped
           ORDER BY a.attnum""",
        (schema, table)).fetchall()
    if not rows:
        return None
    writable = [r for r in rows if not r[4]]
    return Target([r[0] for r in writable], [r[0] for r in writable if r[1]],
                 {r[0]: r[2] for r in writable if r[2] in ("json", "jsonb")}, {r[0]: r[5] for r in writable},
                 {r[0] for r in writable if r[3]}, {r[0] for r in rows if r[4]})


# -- applying ------------------------------------------------------------------------------------

# Aliases of the replay queries: long enough never to be the name of a user's column.
_T, _R, _P, _J, _O = (sql.Identifier(f"deployctl_{a}") for a in ("t", "r", "p", "j", "o"))


@contextmanager
def _timed(stages: dict[str, float], stage: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        stages[stage] = stages.get(stage, 0.0) + time.perf_counter() - started


class _Table:
    """Replay of one source table into its target table, inside the caller's transaction."""

    def __init__(self, conn: psycopg.Connection[Any], n: int, schema: str, target: str, shape: Target,
                 mapping: TableMap, report: TableReport, json_as_text: bool) -> None:
        self.conn, self.schema, self.target = conn, schema, target
        # This table's plan, kept in the session until every table's writes are done (they go
        # in foreign-key order, after every table is planned).
        self.plan = sql.Identifier(f"replay_plan_{n}")
        self.ident = sql.Identifier(schema, target)
        self.shape, self.columns, self.pk = shape, shape.columns, shape.pk
        self.mapping, self.report = mapping, report
        # Logical capture keeps json/jsonb values as their exact text; triggers as JSON values.
        self.json_as_text = json_as_text
        self.sources = {col: spec["from"] for col, spec in mapping.columns.items() if "from" in spec}
        self.expressions = {col: spec["expr"] for col, spec in mapping.columns.items() if "expr" in spec}

    def _key_match(self) -> sql.Composable:
        """A target row and a planned row with the same key."""
        return sql.SQL(" AND ").join(
            sql.SQL("{}.{} = {}.{}").format(_T, sql.Identifier(c), _P, sql.Identifier(c)) for c in self.pk)

    def _typed(self, col: str, image: str, record: sql.Identifier) -> sql.Composable:
        """`col` of the delta row's `image` (k, final or old) in the target's type.

        Logical capture keeps every value as its type's text (pgoutput's): the type's input
        converts it, as COPY would. Trigger capture keeps JSON values, converted by
        jsonb_populate_record() of that image (alias `record`), json/jsonb columns as they are.
        """
        if self.json_as_text:
            kind = self.shape.types[col]
        elif col in self.shape.json:
            return sql.SQL("NULLIF({}.{} -> {}, 'null')::{}").format(
                _R, sql.Identifier(image), sql.Literal(col), sql.SQL(self.shape.json[col]))
        else:
            return sql.SQL("{}.{}").format(record, sql.Identifier(col))
        return sql.SQL("({}.{} ->> {})::{}").format(  # the type from the catalog
            _R, sql.Identifier(image), sql.Literal(col), sql.SQL(kind))

    def _value(self, col: str, value: sql.Composable, final: sql.Composable) -> sql.Composable:
        """The value an updated row gets for `col`: `value` where the delta's `final` image has
        the column, else the target's own."""
        return sql.SQL("CASE WHEN {f} ? {c} THEN {v} ELSE {t}.{n} END").format(
            f=final, c=sql.Literal(col), v=value, t=_T, n=sql.Identifier(col))

    def load(self, state: psycopg.Connection[Any], release_id: int, sources: list[str],
             stored: tuple[int, int], history: History, target_revision: str | None,
             stages: dict[str, float]) -> sql.Composable:
        """The changes of `sources` (the target's own name, or the names it had in the new
        version) from the journal into the target, each mapped from its shape; the query that
        folds them per key."""
        self.conn.execute("DROP TABLE IF EXISTS replay_mapped")
        self.conn.execute("CREATE TEMP TABLE replay_mapped (pos bigint, seq int, op text, key jsonb, "
                          "new jsonb, old jsonb, unchanged text[], json_columns text[], own boolean, "
                          "plain boolean, captured jsonb, part int DEFAULT 0, "
                          # Keys are grouped by their text (see `fold`), kept up to date here.
                          "key_text text COLLATE \"C\" GENERATED ALWAYS AS (COALESCE(key::text, '')) STORED"
                          ") ON COMMIT DROP")
        # `own`: captured at the target's revision; `plain`: and in a shape (known for logical
        # capture) of only columns the target has. Decided where the delta is, on the way.
        own = sql.SQL("({} IS NOT DISTINCT FROM {})").format(
            history.revision_sql(sql.SQL("c.pos")), sql.Literal(target_revision))
        with _timed(stages, "copy_in"), state.cursor().copy(delta_rows.copy_out(
                release_id, self.schema, sources, stored, own, self.columns)) as out, \
                self.conn.cursor().copy("COPY replay_mapped (pos, seq, op, key, new, old, unchanged, "
                                        "json_columns, own, plain) FROM STDIN") as into:
            for data in out:
                into.write(data)
        truncated = self.conn.execute("SELECT pos, seq FROM replay_mapped WHERE op = 'truncate' "
                                      "ORDER BY pos DESC, seq DESC LIMIT 1").fetchone()
        if truncated:  # what came before the last TRUNCATE does not matter
            self.conn.execute("DELETE FROM replay_mapped WHERE (pos, seq) <= (%s, %s)", truncated)
            self.conn.execute(sql.SQL("TRUNCATE {}").format(self.ident))
            self.report.truncated = True
        mapper = shapes.Mapper(self.target, self.columns, self.pk, self.shape.computed,
                               self.sources, self.expressions, set(self.shape.json))
        with _timed(stages, "map"):
            self.report.dropped_columns.update(mapper.map(self.conn, history))
            return fold.net(self.conn, self.ident, self.columns, self.pk, set(self.shape.json))

    def plan_rows(self, folded: sql.Composable) -> None:
        """Each row of `folded` (see `fold`) with its values in the target's types, converted
        once, and its action and conflict against the target (see the module's docstring), into
        the plan, in one query."""
        final = sql.SQL("{}.final").format(_R)
        typed = {c: self._typed(c, "k" if c in self.pk else "final", _J) for c in self.columns}
        target_row = sql.SQL(", ").join(sql.SQL("{}.{}").format(_T, sql.Identifier(c)) for c in self.columns)
        every = sql.SQL(", ").join(self._value(c, v, final) for c, v in typed.items())
        old_row = sql.SQL(", ").join(
            self._typed(c, "old", _O) if c not in self.shape.json and not self.json_as_text else
            sql.SQL("CASE WHEN {r}.old ? {l} THEN {v} ELSE {t}.{c} END").format(
                r=_R, l=sql.Literal(c), t=_T, c=sql.Identifier(c), v=self._typed(c, "old", _O))
            for c in self.columns)
        columns = sql.SQL(", ").join(map(sql.Identifier, self.columns))
        # Rows compare by their values' binary images (`*=`: equal images, equal text; json has
        # no `=`). OFFSET 0 keeps the inner query whole: each comparison is computed once per row.
        # Its own columns are prefixed: they sit beside the application's.
        self.conn.execute(sql.SQL(
            """CREATE TEMP TABLE {plan} ON COMMIT DROP AS
               SELECT deployctl_key, deployctl_final, {columns},
                      CASE WHEN deployctl_gone THEN CASE WHEN deployctl_there THEN 'delete' ELSE 'already' END
                           WHEN deployctl_there AND deployctl_same THEN 'already'
                           WHEN deployctl_there THEN 'update' ELSE 'insert' END AS deployctl_action,
                      CASE WHEN deployctl_gone
                           THEN CASE WHEN deployctl_there AND deployctl_same_old IS FALSE
                                     THEN 'changed_since' END
                           WHEN deployctl_there AND deployctl_same THEN NULL
                           WHEN deployctl_there AND deployctl_first_op = 'insert' THEN 'key_exists'
                           WHEN deployctl_there AND deployctl_same_old IS FALSE THEN 'changed_since'
                           WHEN NOT deployctl_there AND deployctl_first_op <> 'insert' THEN 'row_gone'
                      END AS deployctl_conflict,
                      deployctl_ctid
               FROM (SELECT {r}.k AS deployctl_key, {r}.final AS deployctl_final,
                            {typed}, {r}.first_op AS deployctl_first_op, {r}.final IS NULL AS deployctl_gone,
                            {t}.ctid IS NOT NULL AS deployctl_there, {t}.ctid AS deployctl_ctid,
                            CASE WHEN {t}.ctid IS NOT NULL AND {r}.final IS NOT NULL
                                 THEN ROW({target_row})::record *= ROW({every})::record END AS deployctl_same,
                            CASE WHEN {t}.ctid IS NOT NULL AND {r}.old IS NOT NULL
                                 THEN ROW({target_row})::record *= ROW({old_row})::record
                            END AS deployctl_same_old
                     FROM ({folded}) {r} {final_record}
                     LEFT JOIN {tbl} AS {t} ON {match} {old_record}
                     OFFSET 0) AS classified""").format(
                plan=self.plan, columns=columns, r=_R, t=_T, folded=folded, tbl=self.ident,
                typed=sql.SQL(", ").join(sql.SQL("{} AS {}").format(v, sql.Identifier(c))
                                         for c, v in typed.items()),
                match=sql.SQL(" AND ").join(
                    sql.SQL("{}.{} = {}").format(_T, sql.Identifier(c), typed[c]) for c in self.pk),
                target_row=target_row, every=every, old_row=old_row,
                # Trigger capture's JSON values, through jsonb_populate_record() (see `_typed`).
                final_record=sql.SQL("") if self.json_as_text else sql.SQL(
                    "CROSS JOIN LATERAL jsonb_populate_record(NULL::{tbl}, {r}.k || COALESCE({r}.final, "
                    "'{{}}')) {j}").format(tbl=self.ident, r=_R, j=_J),
                old_record=sql.SQL("") if self.json_as_text else sql.SQL(
                    "LEFT JOIN LATERAL jsonb_populate_record({t}, {r}.old) AS {o} ON {r}.old IS NOT NULL"
                ).format(t=_T, r=_R, o=_O)))

    def parents_gone(self, replayed: set[tuple[str, str]]) -> None:
        """Rows whose parent (by a foreign key to a table this replay does not write) is not in
        the target: conflict `parent_gone`, never written (the parent is not brought back)."""
        for (parent_schema, parent), columns, referenced in constraints.foreign_keys(
                self.conn, self.schema, self.target):
            if (parent_schema, parent) in replayed:
                continue
            if not set(columns) <= set(self.columns):
                continue
            pairs = list(zip(columns, referenced, strict=True))
            self.conn.execute(sql.SQL(
                "UPDATE {plan} {p} SET deployctl_conflict = {kind} "
                "WHERE {p}.deployctl_action IN ('insert', 'update') "
                "AND {p}.deployctl_conflict IS NULL AND {present} AND NOT EXISTS "
                "(SELECT FROM {parent} x WHERE {match})").format(
                    kind=sql.Literal(UNWRITABLE), p=_P, parent=sql.Identifier(parent_schema, parent),
                    plan=self.plan,
                    present=sql.SQL(" AND ").join(
                        sql.SQL("{}.{} IS NOT NULL").format(_P, sql.Identifier(c)) for c, _ in pairs),
                    match=sql.SQL(" AND ").join(
                        sql.SQL("x.{} = {}.{}").format(sql.Identifier(r), _P, sql.Identifier(c))
                        for c, r in pairs)))

    def counts(self) -> Counter[tuple[str, str | None]]:
        """How many rows per (action, conflict)."""
        return Counter({(a, c): n for a, c, n in self.conn.execute(sql.SQL(
            "SELECT deployctl_action, deployctl_conflict, count(*) FROM {} GROUP BY 1, 2").format(
                self.plan)).fetchall()})

    def conflicts(self) -> list[tuple[str, dict[str, Any], dict[str, Any] | None, dict[str, Any] | None]]:
        """Each conflict: kind, key, the delta's final values, the target's row."""
        return self.conn.execute(sql.SQL(
            "SELECT {p}.deployctl_conflict, {p}.deployctl_key, {p}.deployctl_final, to_jsonb({t}) "
            "FROM {plan} {p} LEFT JOIN {tbl} AS {t} ON {t}.ctid = {p}.deployctl_ctid "
            "WHERE {p}.deployctl_conflict IS NOT NULL ORDER BY {p}.deployctl_key").format(
                p=_P, t=_T, tbl=self.ident, plan=self.plan)).fetchall()

    def write(self, action: str, overwrite: bool) -> None:
        """Write the planned rows of one action; conflicting ones only if `overwrite`."""
        planned = sql.SQL("{p}.deployctl_action = {a} AND ({p}.deployctl_conflict IS NULL "
                          "OR ({o} AND {p}.deployctl_conflict <> {u}))").format(
            p=_P, a=sql.Literal(action), o=sql.Literal(overwrite), u=sql.Literal(UNWRITABLE))
        match = self._key_match()
        if action == "delete":
            self.conn.execute(sql.SQL("DELETE FROM {tbl} AS {t} USING {plan} {p} WHERE {planned} AND {match}"
                                      ).format(tbl=self.ident, t=_T, p=_P, plan=self.plan, planned=planned,
                                               match=match))
        elif action == "update":
            final = sql.SQL("{}.deployctl_final").format(_P)
            assignments = sql.SQL(", ").join(
                sql.SQL("{} = {}").format(sql.Identifier(c), self._value(
                    c, sql.SQL("{}.{}").format(_P, sql.Identifier(c)), final))
                for c in self.columns if c not in self.shape.always_identity)
            self.conn.execute(sql.SQL(
                "UPDATE {tbl} AS {t} SET {set} FROM {plan} {p} WHERE {planned} AND {match}").format(
                tbl=self.ident, t=_T, p=_P, plan=self.plan, planned=planned, match=match, set=assignments))
        else:
            # Rows with different column sets insert apart, so absent columns get their defaults;
            # most rows have every column, and go in one statement.
            complete = sql.SQL("{}.deployctl_final ?& {}::text[]").format(_P, sql.Literal(self.columns))
            keys = sql.SQL("ARRAY(SELECT jsonb_object_keys({}.deployctl_final))").format(_P)
            shapes = [(self.columns, complete, ())] + [
                ([c for c in self.columns if c in present], sql.SQL("NOT {} AND {} = %s::text[]").format(
                    complete, keys), (present,))
                for (present,) in self.conn.execute(sql.SQL(
                    "SELECT DISTINCT {keys} FROM {plan} {p} WHERE {planned} AND NOT {complete}").format(
                        keys=keys, plan=self.plan, p=_P, planned=planned, complete=complete)).fetchall()]
            for cols, which, params in shapes:
                self.conn.execute(sql.SQL(
                    "INSERT INTO {tbl} ({cols}) OVERRIDING SYSTEM VALUE SELECT {row} FROM {plan} {p} "
                    "WHERE {planned} AND {which}").format(
                        tbl=self.ident, cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
                        row=sql.SQL(", ").join(sql.SQL("{}.{}").format(_P, sql.Identifier(c)) for c in cols),
                        plan=self.plan, p=_P, planned=planned, which=which), params)

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


def _session_setup(conn: psycopg.Connection[Any]) -> bool:
    """The session's settings for a few large set-wise queries: no JIT (compiling them costs more
    than running them) and the temporary tables kept in memory. Then replication origin
    `deployctl`, where this role may set one (a superuser): a logical capture running on the
    target then leaves the replay out. Whether it was set."""
    conn.execute(f"SET jit = off; SET temp_buffers = '{TEMP_BUFFERS}'")
    row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    if not row or not row[0]:
        return False
    if conn.execute("SELECT current_setting('wal_level') = 'logical'").fetchone()[0]:  # type: ignore[index]
        conn.execute("SELECT pg_replication_origin_create(%s) WHERE NOT EXISTS "
                     "(SELECT 1 FROM pg_replication_origin WHERE roname = %s)", (ORIGIN, ORIGIN))
        conn.execute("SELECT pg_replication_origin_session_setup(%s)", (ORIGIN,))
        return True
    return False


def _session_reset(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SELECT pg_replication_origin_session_reset()")


def apply(state: psycopg.Connection[Any], release_id: int, target_dsn: str, options: Options,
          stored_after: int = 0, stored_upto: int | None = None) -> Report:
    """Replay the delta of `release_id` (from the journal at `state`) into `target_dsn`;
    `stored_after` and `stored_upto` limit it to what reached the journal after and up to those
    points (a restore's tail; what was stored before a drain that runs beside it)."""
    stored = (stored_after, delta_rows.upto(stored_upto))
    report = Report(release_id, options.dry_run)
    counted = delta_rows.per_source(state, release_id, stored)
    # A table's changes land in one target table, whatever it was called when they were made.
    groups: dict[tuple[str, str], dict[str, int]] = {}
    for (schema, source), count in counted.items():
        target = options.tables.get(source, TableMap()).target or source
        if not options.only or options.only & {source, target}:
            groups.setdefault((schema, target), {})[source] = count
    side_effects: list[dict[str, Any]] = []
    planned: list[_Table] = []
    with psycopg.connect(target_dsn) as conn:
        try:
            with_origin = _session_setup(conn)
            revision = _revision(conn, options.history)
            with progress.watching("replay", lambda: sum(t.changes for t in report.tables.values()),
                                   sum(counted.values()), unit="changes"):
                for n, ((schema, target), sources) in enumerate(sorted(groups.items())):
                    table = _one_table(conn, state, release_id, n, schema, target, sources,
                                       options, report, side_effects, stored, revision, set(groups))
                    if table is not None:
                        planned.append(table)
            if report.conflicts and options.on_conflict == "fail":
                raise ReplayConflict(report)
            with _timed(report.stages, "write"):
                _write(conn, planned, options.on_conflict == "overwrite")
            if not options.dry_run:
                # setval() is not transactional: only once nothing can undo the replay.
                for table in planned:
                    if table.report.inserted or table.report.updated:
                        table.fix_sequences()
        except BaseException:
            conn.rollback()
            raise
        with _timed(report.stages, "commit"):
            if options.dry_run:
                conn.rollback()
            else:
                conn.commit()
        if with_origin:  # after the commit: the commit record is what carries the origin
            _session_reset(conn)
    report.side_effect_rows = len(side_effects)
    if side_effects and options.reconciliation and not options.dry_run:
        # A restore's tail adds to what its first replay wrote.
        write_jsonl(options.reconciliation, side_effects, append=stored_after > 0)
        report.reconciliation = str(options.reconciliation)
    return report


def _write(conn: psycopg.Connection[Any], planned: list[_Table], overwrite: bool) -> None:
    """Every table's planned rows, in foreign-key order (see `constraints`)."""
    by_name = {(t.schema, t.target): t for t in planned}
    order = [by_name[name] for name in constraints.foreign_key_order(conn, list(by_name))]
    conn.execute("SET CONSTRAINTS ALL DEFERRED")
    with constraints.quiet_triggers(conn, list(by_name)):
        for action in ("insert", "update"):
            for table in order:
                table.write(action, overwrite)
        for table in reversed(order):
            table.write("delete", overwrite)
        # Deferred constraints are checked here, where an error still names the replay.
        conn.execute("SET CONSTRAINTS ALL IMMEDIATE")


def _revision(conn: psycopg.Connection[Any], history: History) -> str | None:
    """The target's Alembic revision: changes captured at it are in its shape already. A
    database without Alembic's table is taken to be at the capture's base revision."""
    if conn.execute("SELECT to_regclass('alembic_version') IS NULL").fetchone()[0]:  # type: ignore[index]
        return history.base
    heads = [r[0] for r in conn.execute("SELECT version_num FROM alembic_version").fetchall()]
    return ",".join(sorted(heads)) or None


def _one_table(conn: psycopg.Connection[Any], state: psycopg.Connection[Any], release_id: int, n: int,
               schema: str, target: str, sources: dict[str, int], options: Options, report: Report,
               side_effects: list[dict[str, Any]], stored: tuple[int, int], revision: str | None,
               replayed: set[tuple[str, str]]) -> _Table | None:
    """Load and plan the changes of `sources` (with their counts) into `target`; the table if
    it has rows to write."""
    if target in options.side_effects or options.side_effects & sources.keys():
        report.tables.setdefault(target, TableReport(target, sum(sources.values()))).side_effect = True
        for source in sources:
            side_effects.extend(delta_rows.changes(state, release_id, stored[0], (schema, source), stored[1]))
        return None
    shape = _target_shape(conn, schema, target)
    if shape is None:
        for source, count in sources.items():  # kept in the delta under the names it has there
            report.tables.setdefault(source, TableReport(source, count)).missing = True
        return None
    table_report = report.tables.setdefault(target, TableReport(target))
    table_report.changes += sum(sources.values())
    if not shape.pk:  # cannot be matched row by row: kept in the delta, reported
        table_report.no_key = True
        return None
    columns = {col: spec for source in sources
               for col, spec in options.tables.get(source, TableMap()).columns.items()}
    table = _Table(conn, n, schema, target, shape, TableMap(target, columns), table_report,
                   options.json_as_text)
    folded = table.load(state, release_id, sorted(sources), stored, options.history, revision,
                        report.stages)
    with _timed(report.stages, "plan"):
        table.plan_rows(folded)
        table.parents_gone(replayed)
        return table if _plan(table, report, options) else None


def _plan(table: _Table, report: Report, options: Options) -> bool:
    """Count what the writes of the classified rows will do; True if there are any."""
    overwrite = options.on_conflict == "overwrite"
    counts = table.counts()
    if any(conflict for _, conflict in counts):
        resolution = {"fail": "none", "skip": "skipped", "overwrite": "overwritten"}[options.on_conflict]
        for kind, key, final, theirs in table.conflicts():
            report.conflicts.append(Conflict(
                table.target, kind, mask_personal(table.target, key, options.personal) or {},
                mask_personal(table.target, final, options.personal),
                mask_personal(table.target, theirs, options.personal),
                "skipped" if kind == UNWRITABLE and resolution != "none" else resolution))
    done = Counter[str]()
    for (action, conflict), n in counts.items():
        if conflict and (not overwrite or conflict == UNWRITABLE):
            table.report.skipped += n
        else:
            done[action] += n
    table.report.already += done["already"]
    table.report.inserted += done["insert"]
    table.report.updated += done["update"]
    table.report.deleted += done["delete"]
    return bool(done["insert"] or done["update"] or done["delete"])


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]], append: bool = False) -> None:
    """Compressed JSON lines, created 0600 in a 0700 folder: they hold user data."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC), 0o600)
    os.fchmod(fd, 0o600)  # a file that was there before keeps its mode otherwise
    with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb") as out:
        for row in rows:
            out.write(json.dumps(row, default=str).encode() + b"\n")
