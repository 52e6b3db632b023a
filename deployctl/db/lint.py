"""Migration lint: what in a migration's SQL breaks the old version while both versions run.

During a release blue keeps serving on the migrated schema until the last cohort moves, and a
`keep` rollback leaves it there for good. A migration is *expand-only* when blue still works on
it (new tables, nullable columns, columns with defaults, indexes); it *contracts* when it drops,
renames or retypes what blue reads or writes, or makes blue's inserts fail (NOT NULL without a
default). The input is the offline SQL of the upgrade (`alembic upgrade A:B --sql`); statements
the lint does not know are left alone, so it names problems and never proves their absence.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

ALL_MODES = ("keep", "downgrade", "restore")
# Blue cannot keep running on a contracted schema; the other two bring its schema back.
CONTRACTING_MODES = ("downgrade", "restore")

_WORD = re.compile(r"[A-Za-z_\x80-\uffff][A-Za-z0-9_$\x80-\uffff]*")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
_SERIAL_TYPES = {"serial", "bigserial", "smallserial", "serial2", "serial4", "serial8"}
_TRANSACTION = ("begin", "commit", "start", "end", "rollback")
_TABLE_CONSTRAINTS = {"constraint", "primary", "unique", "check", "foreign", "exclude"}


@dataclass(frozen=True)
class Token:
    kind: str      # word (unquoted, lowercased), ident (quoted), literal, number, punct
    text: str

    def is_word(self, *words: str) -> bool:
        return self.kind == "word" and self.text in words


@dataclass(frozen=True)
class Finding:
    """One operation that breaks the old version: `drop column users.bio`."""

    kind: str
    target: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.target}" + (f" {self.detail}" if self.detail else "")


@dataclass(frozen=True)
class Lint:
    findings: tuple[Finding, ...]
    statements: int
    index_builds: tuple[str, ...] = ()   # existing tables indexed without CONCURRENTLY
    opaque: int = 0                      # DO blocks: code the lint cannot read

    @property
    def contracting(self) -> bool:
        return bool(self.findings)

    @property
    def rollback_modes(self) -> tuple[str, ...]:
        return CONTRACTING_MODES if self.contracting else ALL_MODES


class _Lexer:
    """PostgreSQL's lexical rules, as far as splitting and reading DDL needs them."""

    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def _skip_comment(self) -> bool:
        text, pos = self.text, self.pos
        if text.startswith("--", pos):
            end = text.find("\n", pos)
            self.pos = len(text) if end < 0 else end + 1
            return True
        if text.startswith("/*", pos):
            depth, pos = 1, pos + 2   # PostgreSQL's block comments nest
            while pos < len(text) and depth:
                if text.startswith("/*", pos):
                    depth, pos = depth + 1, pos + 2
                elif text.startswith("*/", pos):
                    depth, pos = depth - 1, pos + 2
                else:
                    pos += 1
            self.pos = pos
            return True
        return False

    def _quoted(self, quote: str, backslashes: bool = False) -> str:
        text, pos = self.text, self.pos + 1
        out = []
        while pos < len(text):
            char = text[pos]
            if backslashes and char == "\\" and pos + 1 < len(text):
                out.append(text[pos + 1])
                pos += 2
            elif char == quote:
                if text.startswith(quote * 2, pos):
                    out.append(quote)
                    pos += 2
                else:
                    pos += 1
                    break
            else:
                out.append(char)
                pos += 1
        self.pos = pos
        return "".join(out)

    def tokens(self) -> Iterator[Token]:
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char.isspace():
                self.pos += 1
            elif self._skip_comment():
                continue
            elif char == "'":
                yield Token("literal", self._quoted("'"))
            elif char == '"':
                yield Token("ident", self._quoted('"'))
            elif char == "$" and (tag := _DOLLAR_TAG.match(text, self.pos)):
                end = text.find(tag.group(0), tag.end())
                end = len(text) if end < 0 else end
                yield Token("literal", text[tag.end():end])
                self.pos = end + len(tag.group(0))
            elif word := _WORD.match(text, self.pos):
                self.pos = word.end()
                if word.group(0).lower() in {"e", "b", "x", "n"} and text.startswith("'", self.pos):
                    yield Token("literal", self._quoted("'", backslashes=word.group(0).lower() == "e"))
                else:
                    yield Token("word", word.group(0).lower())
            elif number := _NUMBER.match(text, self.pos):
                self.pos = number.end()
                yield Token("number", number.group(0))
            else:
                self.pos += 1
                yield Token("punct", char)


def statements(sql_text: str) -> list[list[Token]]:
    """The statements of `sql_text` as tokens, comments left out."""
    out: list[list[Token]] = [[]]
    for token in _Lexer(sql_text).tokens():
        if token.kind == "punct" and token.text == ";":
            out.append([])
        else:
            out[-1].append(token)
    return [s for s in out if s]


class _Statement:
    """A cursor over one statement's tokens."""

    def __init__(self, tokens: list[Token]) -> None:
        self.tokens, self.pos = tokens, 0

    def peek(self, ahead: int = 0) -> Token | None:
        index = self.pos + ahead
        return self.tokens[index] if index < len(self.tokens) else None

    def accept(self, *words: str) -> bool:
        """Consume the words in order if they come next."""
        for ahead, word in enumerate(words):
            token = self.peek(ahead)
            if token is None or not token.is_word(word):
                return False
        self.pos += len(words)
        return True

    def name(self) -> str | None:
        """A possibly qualified name (`public.users`), as it reads."""
        parts = []
        while (token := self.peek()) is not None and token.kind in {"word", "ident"}:
            parts.append(token.text)
            self.pos += 1
            dot = self.peek()
            if dot is None or dot.kind != "punct" or dot.text != ".":
                break
            self.pos += 1
        return ".".join(parts) or None

    def rest(self) -> list[Token]:
        return self.tokens[self.pos:]


def _split_actions(tokens: list[Token]) -> list[list[Token]]:
    """ALTER TABLE's comma-separated actions (commas inside parentheses belong to the action)."""
    actions: list[list[Token]] = [[]]
    depth = 0
    for token in tokens:
        if token.kind == "punct" and token.text in "([":
            depth += 1
        elif token.kind == "punct" and token.text in ")]":
            depth -= 1
        elif token.kind == "punct" and token.text == "," and depth == 0:
            actions.append([])
            continue
        actions[-1].append(token)
    return [a for a in actions if a]


def _top_level_words(tokens: list[Token]) -> list[str]:
    words, depth = [], 0
    for token in tokens:
        if token.kind == "punct" and token.text == "(":
            depth += 1
        elif token.kind == "punct" and token.text == ")":
            depth -= 1
        elif depth == 0 and token.kind == "word":
            words.append(token.text)
    return words


def _has(words: list[str], *sequence: str) -> bool:
    return any(words[i:i + len(sequence)] == list(sequence) for i in range(len(words)))


def _render(tokens: list[Token]) -> str:
    """Tokens back as SQL-ish text, for a message: `varchar(200)`."""
    out = ""
    for token in tokens:
        text = f'"{token.text}"' if token.kind == "ident" else (
            f"'{token.text}'" if token.kind == "literal" else token.text)
        glued = token.kind == "punct" and token.text in "()[],.:" or out.endswith(("(", "[", ".", ":"))
        out += text if glued or not out else f" {text}"
    return out


class _Migration:
    """What the statements seen so far did, to judge the next one."""

    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self.index_builds: list[str] = []
        # Blue never uses what this migration creates: changing it breaks nothing.
        self.new_tables: set[str] = set()
        self.new_columns: dict[tuple[str, str], bool] = {}   # True once it has a default

    def note(self, kind: str, table: str, column: str | None = None, detail: str = "") -> None:
        if table not in self.new_tables:
            self.findings.append(Finding(kind, f"{table}.{column}" if column else table, detail))

    def read(self, tokens: list[Token]) -> None:
        st = _Statement(tokens)
        if st.accept("alter", "table"):
            self._alter_table(st)
        elif st.accept("drop", "table"):
            st.accept("if", "exists")
            for part in _split_actions(st.rest()):
                table = _Statement(part).name()
                if table:
                    self.note("drop table", table)
        elif st.accept("create"):
            self._create(st)

    def _create(self, st: _Statement) -> None:
        for modifier in ("global", "local", "temporary", "temp", "unlogged"):
            st.accept(modifier)
        if st.accept("table"):
            st.accept("if", "not", "exists")
            if table := st.name():
                self.new_tables.add(table)
            return
        st.accept("unique")
        if not st.accept("index") or st.accept("concurrently"):
            return
        # CREATE INDEX [IF NOT EXISTS] [name] ON [ONLY] table: blocks writes to it while it builds.
        words = [t.text if t.kind == "word" else "" for t in st.rest()]
        if "on" in words:
            st.pos += words.index("on") + 1
            st.accept("only")
            table = st.name()
            if table and table not in self.new_tables and table not in self.index_builds:
                self.index_builds.append(table)

    def _alter_table(self, st: _Statement) -> None:
        st.accept("if", "exists")
        st.accept("only")
        table = st.name()
        if table is None:
            return
        if st.accept("rename"):
            if st.accept("to"):
                new_name = st.name()
                if table in self.new_tables and new_name:
                    self.new_tables.add(new_name)
                self.note("rename table", table, detail=f"to {new_name}")
            elif not st.accept("constraint"):
                st.accept("column")
                old = st.name()
                st.accept("to")
                new_name = st.name()
                if old and (table, old) in self.new_columns and new_name:
                    self.new_columns[(table, new_name)] = self.new_columns.pop((table, old))
                elif old:
                    self.note("rename column", table, old, f"to {new_name}")
            return
        if st.accept("set", "schema"):
            self.note("move table", table, detail=f"to schema {st.name()}")
            return
        for action in _split_actions(st.rest()):
            self._action(table, _Statement(action))

    def _action(self, table: str, st: _Statement) -> None:
        if st.accept("drop"):
            if st.accept("constraint"):
                return
            st.accept("column")
            st.accept("if", "exists")
            column = st.name()
            if column and self.new_columns.pop((table, column), None) is None:
                self.note("drop column", table, column)
        elif st.accept("alter"):
            if st.accept("constraint"):
                return
            st.accept("column")
            column = st.name()
            if column is None:
                return
            new = (table, column) in self.new_columns
            if st.accept("type") or st.accept("set", "data", "type"):
                if not new:
                    rest = st.rest()
                    cut = next((i for i, t in enumerate(rest) if t.is_word("using", "collate")), len(rest))
                    self.note("type change", table, column, f"to {_render(rest[:cut])}")
            elif st.accept("set", "not", "null"):
                # Blue's inserts leave a column it does not know NULL, unless it has a default.
                if not self.new_columns.get((table, column), False):
                    self.note("set not null", table, column)
            elif st.accept("set", "default") and new:
                self.new_columns[(table, column)] = True
        elif st.accept("add"):
            first = st.peek()
            if first is None or (first.kind == "word" and first.text in _TABLE_CONSTRAINTS):
                return
            st.accept("column")
            st.accept("if", "not", "exists")
            column = st.name()
            if column is None:
                return
            words = _top_level_words(st.rest())
            has_default = bool({"default", "generated"} & set(words)) or bool(
                words and words[0] in _SERIAL_TYPES)
            if (_has(words, "not", "null") or _has(words, "primary", "key")) and not has_default:
                self.note("add column not null without default", table, column)
            self.new_columns[(table, column)] = has_default


def lint(sql_text: str) -> Lint:
    """The operations in `sql_text` that break the old version, in the order they run."""
    migration = _Migration()
    counted = opaque = 0
    for tokens in statements(sql_text):
        if tokens[0].is_word(*_TRANSACTION):
            continue
        counted += 1
        opaque += tokens[0].is_word("do")
        migration.read(tokens)
    return Lint(tuple(migration.findings), counted, tuple(migration.index_builds), opaque)
