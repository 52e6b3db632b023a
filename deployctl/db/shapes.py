"""Shapes: a captured change mapped from the schema it was captured in to the target's.

A delta holds changes in more than one shape. Those committed before the migration carry the
old version's columns, those after it the new version's, and a release of several revisions
passes through each one between. A change's shape is the columns it carries (the pgoutput
Relation in force, or the trigger row's columns) and the Alembic revision at its position in
the capture (`History`). Each change is mapped on its own, before any fold merges it with
another:

- captured at the target's own revision: taken as it is;
- captured at another one: every target column takes the change's value of the same name,
  except those the playbook maps (`replay.tables.T.columns`, written for the new version's
  row). `from: X` takes the value of X where the change has it, else the column's own (the
  shape predates the rename). `expr` computes the value for a shape that lacks the column, or
  for the release's last revision (the one the mapping was written for); a shape that has the
  column keeps its value.

A value of a column the target has is never dropped. Values of columns only the newer version
has are dropped and counted. A change that carries such values while a target column gets
nothing from it is a rename or a split nobody mapped: replay stops with an error that names the
mapping to write, rather than lose the value.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from deployctl.errors import StepFailed


@dataclass(frozen=True)
class History:
    """The Alembic revisions a capture went through: `base` at its start, then each
    migration's (position, revision), positions as in the delta's `pos`."""

    base: str | None = None
    points: tuple[tuple[int, str | None], ...] = ()

    @classmethod
    def from_capture(cls, row: dict[str, Any] | None) -> History:
        if row is None:
            return cls()
        return cls(row.get("base_revision"),
                   tuple((int(pos), rev) for pos, rev in row.get("revisions") or []))

    @property
    def head(self) -> str | None:
        """The revision the release migrated to (the new version's shape): the last one the
        capture saw other than its base (a downgrade at rollback goes back to the base)."""
        return next((rev for _, rev in reversed(self.points) if rev != self.base), self.base)

    def at(self, pos: int) -> str | None:
        revision = self.base
        for point, rev in self.points:
            if pos > point:
                revision = rev
        return revision

    def revision_sql(self, pos: sql.Composable) -> sql.Composable:
        """The revision in force at `pos`, as SQL."""
        if not self.points:
            return sql.Literal(self.base)
        cases = sql.SQL(" ").join(
            sql.SQL("WHEN {} > {} THEN {}").format(pos, sql.Literal(point), sql.Literal(rev))
            for point, rev in reversed(self.points))
        return sql.SQL("(CASE {} ELSE {} END)").format(cases, sql.Literal(self.base))


class Unmapped(StepFailed):
    """Changes carry values the target has no place for while a target column gets nothing."""


@dataclass
class Mapper:
    """Maps one target table's changes, in `replay_mapped`, to the target's shape."""

    table: str                           # the target table, for messages
    columns: list[str]                   # the target's columns (generated ones aside)
    pk: list[str]
    computed: set[str]                   # the target's generated columns: it computes them
    sources: dict[str, str] = field(default_factory=dict)       # column: from
    expressions: dict[str, str] = field(default_factory=dict)   # column: expr over `new`
    json: set[str] = field(default_factory=set)                 # the target's json/jsonb columns

    def _consumed(self) -> set[str]:
        """Columns of a newer shape that a mapping reads (an expression's `new->>'x'`)."""
        read = {name for expr in self.expressions.values()
                for name in re.findall(r"'((?:[^']|'')+)'", expr)}
        return set(self.sources.values()) | {name.replace("''", "'") for name in read}

    def _image(self, image: str, head: sql.Composable) -> sql.Composable:
        """SQL mapping the jsonb column `image` (key, new or old) of a change not in the
        target's shape."""
        img = sql.Identifier(image)
        wanted = self.pk if image == "key" else self.columns
        plain = [c for c in wanted if c not in self.sources and c not in self.expressions]
        parts: list[sql.Composable] = [sql.SQL(
            "(SELECT COALESCE(jsonb_object_agg(k, v), '{{}}') FROM jsonb_each({i}) e(k, v) "
            "WHERE k = ANY({cols}))").format(i=img, cols=sql.Literal(plain))]
        sources = {c: s for c, s in self.sources.items() if c in wanted}
        expressions = {c: e for c, e in self.expressions.items() if c in wanted}
        for col, src in sources.items():
            parts.append(sql.SQL(
                "CASE WHEN {i} ? {s} THEN jsonb_build_object({c}, {i} -> {s}) "
                "WHEN {i} ? {c} THEN jsonb_build_object({c}, {i} -> {c}) ELSE '{{}}' END").format(
                    i=img, s=sql.Literal(src), c=sql.Literal(col)))
        for col, expr in expressions.items():
            # Playbook expressions see the row as jsonb `new` (the image being mapped), its
            # JSON columns as JSON whatever the capture kept them as. What they give a column
            # that is not JSON is kept as its text, like a captured value: the column's type
            # reads it back (an array's text, not the JSON array to_jsonb() would make of it).
            parts.append(sql.SQL(
                "CASE WHEN {i} ? {c} AND NOT {head} THEN jsonb_build_object({c}, {i} -> {c}) "
                "WHEN {c} = ANY(r.unchanged) THEN '{{}}' "
                "ELSE jsonb_build_object({c}, (SELECT ({e}){as_text} FROM (SELECT {i} || COALESCE("
                "(SELECT jsonb_object_agg(j, ({i} ->> j)::jsonb) FROM unnest(r.json_columns) j "
                "WHERE {i} ->> j IS NOT NULL), '{{}}') AS new) s)) END").format(
                    i=img, c=sql.Literal(col), head=head, e=sql.SQL(expr),
                    as_text=sql.SQL("") if col in self.json else sql.SQL("::text")))
        return sql.SQL(" || ").join(parts)

    def _own(self, image: str) -> sql.Composable:
        """An image of the target's own shape: its columns as they are."""
        return sql.SQL("(SELECT COALESCE(jsonb_object_agg(k, v), '{{}}') FROM jsonb_each({}) e(k, v) "
                       "WHERE k = ANY({}))").format(
                           sql.Identifier(image), sql.Literal(self.pk if image == "key" else self.columns))

    def map(self, conn: psycopg.Connection[Any], history: History) -> Counter[str]:
        """Map `replay_mapped` in place; returns the values dropped per column the target lacks.

        Raises `Unmapped` when a change would lose a value the target has a place for.
        """
        head = sql.SQL("({} IS NOT DISTINCT FROM {})").format(
            history.revision_sql(sql.SQL("r.pos")), sql.Literal(history.head))
        mapped = {image: sql.SQL("CASE WHEN {i} IS NULL THEN NULL WHEN r.own THEN {o} ELSE {m} END").format(
            i=sql.Identifier(image), o=self._own(image), m=self._image(image, head))
            for image in ("key", "new", "old")}
        # Most changes are `plain` (the target's own shape, nothing to drop): left as they are.
        conn.execute(sql.SQL(
            "UPDATE replay_mapped r SET captured = r.new, key = {key}, new = {new}, old = {old} "
            "WHERE NOT r.plain").format(key=mapped["key"], new=mapped["new"], old=mapped["old"]))
        # The key, as text, in the target's names: from the full old image where there is one,
        # else the captured key (a key-only old tuple), else the new image (an insert); a
        # captured key of exactly the target's key columns as it is.
        pk = sql.Literal(self.pk)

        def key_of(image: str) -> sql.Composable:
            return sql.SQL("(SELECT CASE WHEN count(*) = {n} THEN jsonb_object_agg(c, m.{i} ->> c) END "
                           "FROM unnest({pk}::text[]) c WHERE m.{i} ? c)").format(
                               n=sql.Literal(len(self.pk)), i=sql.Identifier(image), pk=pk)
        conn.execute(sql.SQL(
            "UPDATE replay_mapped m SET key = COALESCE({}, {}, {}) "
            "WHERE m.old IS NOT NULL OR m.key IS NULL OR NOT m.key ?& {pk} OR m.key - {pk}::text[] <> '{{}}'"
        ).format(key_of("old"), key_of("key"), key_of("new"), pk=pk))
        known = sql.Literal(sorted(set(self.columns) | self.computed))
        consumed = sql.Literal(sorted(self._consumed()))
        self._refuse_lost(conn, known, consumed)
        dropped = conn.execute(sql.SQL(
            "SELECT k, count(*) FROM replay_mapped m, jsonb_each(m.captured) e(k, v) "
            "WHERE NOT m.plain AND v <> 'null' AND NOT k = ANY({known}) "
            "AND (m.own OR NOT k = ANY({consumed})) GROUP BY k").format(
                known=known, consumed=consumed)).fetchall()
        return Counter({k: n for k, n in dropped})

    def _refuse_lost(self, conn: psycopg.Connection[Any], known: sql.Composable,
                     consumed: sql.Composable) -> None:
        unchanged = sql.SQL("c = ANY(m.unchanged) OR {} = ANY(m.unchanged)").format(
            sql.SQL("CASE c {} ELSE c END").format(sql.SQL(" ").join(
                sql.SQL("WHEN {} THEN {}").format(sql.Literal(col), sql.Literal(src))
                for col, src in self.sources.items())) if self.sources else sql.SQL("c"))
        rows = conn.execute(sql.SQL(
            """SELECT missing, extra, count(*) FROM (
                   SELECT ARRAY(SELECT c FROM unnest({cols}::text[]) c
                                WHERE NOT m.new ? c AND NOT ({unchanged})) AS missing,
                          ARRAY(SELECT k FROM jsonb_object_keys(m.captured) k
                                WHERE NOT k = ANY({known}) AND NOT k = ANY({consumed})) AS extra
                   FROM replay_mapped m WHERE NOT m.own AND m.new IS NOT NULL AND m.captured IS NOT NULL) x
               WHERE missing <> '{{}}' AND extra <> '{{}}' GROUP BY 1, 2 ORDER BY 3 DESC""").format(
                   cols=sql.Literal(self.columns), unchanged=unchanged, known=known,
                   consumed=consumed)).fetchall()
        if rows:
            missing, extra, _ = rows[0]
            raise Unmapped(
                f"{self.table}: {sum(r[2] for r in rows)} changes carry {', '.join(extra)}, which the "
                f"target lacks, while its {', '.join(missing)} gets no value from them (a rename or "
                f"split with no mapping): nothing was replayed; map it in the playbook, e.g. "
                f"replay.tables.{self.table}.columns.{missing[0]}: {{from: {extra[0]}}} (or {{expr: ...}} "
                f"over the new row `new`), then run the rollback or `deployctl delta replay` again")
