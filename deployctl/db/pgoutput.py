"""Decoder of PostgreSQL's `pgoutput` logical replication messages (protocol version 1, text values).

The release capture reads every change made during a release through the SQL interface of
logical decoding (`pg_logical_slot_get_binary_changes(slot, NULL, NULL, 'proto_version', '1',
'publication_names', pub)`); each row it returns holds one message in `data`. psycopg 3 speaks no
replication protocol and no maintained Python decoder of pgoutput exists, so this module decodes
the documented format ("Logical Replication Message Formats" in the PostgreSQL manual) itself:

    decoder = Decoder()
    for (data,) in cur.execute("SELECT data FROM pg_logical_slot_get_binary_changes(...)"):
        txn = decoder.feed(data)         # None until a transaction's Commit arrives
        if txn is not None:
            store(txn)

Values stay in PostgreSQL's text form (what `col::text` returns): replay hands them back to the
server as text, so no type is ever parsed here. A TOASTed value that an UPDATE left alone is not
sent at all; it arrives as the `UNCHANGED` marker and replay must leave that column alone.

What PostgreSQL 15 actually sends (checked against real output in tests/test_pgoutput.py):
- Relation (and, before it, one Type message per column whose type is not built in: enums,
  domains, arrays of those) comes before the first change of a table in each decoding session,
  and again after the table changes (ALTER TABLE, TRUNCATE). Each SQL-interface call is a new
  session, so a Decoder must live across transactions and calls.
- A domain's Type message carries the domain's oid with the *base* type's name ('' and 'text').
- An old key tuple ('K') has one entry per column of the table, 'n' for the columns outside the
  replica identity (dropped here); it is only sent when an UPDATE changes the key. REPLICA
  IDENTITY FULL marks every column as key and sends whole old rows ('O'), TOAST values included.
- Generated and dropped columns are in neither the Relation message nor the tuples.
- Under a replication origin, the commit time is the origin's timestamp (2000-01-01 when the
  writer set none): order transactions by LSN, never by commit time.
- Values are formatted by the session that reads the slot (its TimeZone, DateStyle,
  bytea_output, extra_float_digits), not by the one that wrote them.
- Transactions that touch no published table send nothing at all (not even Begin/Commit).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, NoReturn

__all__ = [
    "UNCHANGED",
    "Change",
    "Column",
    "DecodeError",
    "Decoder",
    "LogicalMessage",
    "PgType",
    "Relation",
    "Transaction",
    "Unchanged",
    "Value",
    "format_lsn",
    "parse_lsn",
]

# Timestamps in the protocol are microseconds since the PostgreSQL epoch, in UTC.
PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)

_BEGIN = struct.Struct(">QqI")  # final LSN, commit time, xid
_COMMIT = struct.Struct(">BQQq")  # flags, commit LSN, end LSN, commit time
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_I16 = struct.Struct(">h")
_REPLIDENT_NCOLS = struct.Struct(">Bh")  # after the two strings of a Relation message
_COLUMN_TAIL = struct.Struct(">Ii")  # type oid, typmod
_TRUNCATE_HEAD = struct.Struct(">iB")  # number of relations, options
_MESSAGE_HEAD = struct.Struct(">BQ")  # flags, LSN

# Truncate options bits.
_TRUNCATE_CASCADE: Final = 1
_TRUNCATE_RESTART_IDENTITY: Final = 2

# Byte values compared in the hot loops (indexing bytes yields ints).
_T, _N, _U, _B = ord("t"), ord("n"), ord("u"), ord("b")
_KEY, _OLD, _NEW = ord("K"), ord("O"), ord("N")


def parse_lsn(text: str) -> int:
    """'0/16B3748' (pg_lsn's text form) -> its 64-bit integer."""
    high, sep, low = text.strip().partition("/")
    if not sep or not high or not low or len(high) > 8 or len(low) > 8:
        raise ValueError(f"not an LSN: {text!r} (expected two hex numbers like '0/16B3748')")
    try:
        return (int(high, 16) << 32) | int(low, 16)
    except ValueError:
        raise ValueError(f"not an LSN: {text!r} (expected two hex numbers like '0/16B3748')") from None


def format_lsn(value: int) -> str:
    """64-bit integer -> pg_lsn's text form, as PostgreSQL prints it ('0/16B3748')."""
    if not 0 <= value < 1 << 64:
        raise ValueError(f"LSN out of range: {value}")
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


class Unchanged:
    """A TOASTed value an UPDATE did not touch: PostgreSQL did not send it.

    One instance, `UNCHANGED`; compare with `is`. Using it as a boolean raises TypeError: code
    written as `value or default` or `if value:` would silently treat a large unsent value as
    empty, and replaying that would destroy the user's data.
    """

    _instance: Unchanged | None = None

    def __new__(cls) -> Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"

    def __bool__(self) -> bool:
        raise TypeError("UNCHANGED has no truth value: test `value is UNCHANGED` instead")

    def __reduce__(self) -> str:
        # Pickling and copy.deepcopy must give back the singleton, or `is UNCHANGED` breaks.
        return "UNCHANGED"


UNCHANGED: Final = Unchanged()

Value = str | None | Unchanged


def transaction_bounds(messages: list[bytes]) -> tuple[int, int, int]:
    """Of whole transactions' messages (Begin first, Commit last): the first transaction's
    final LSN, the last one's commit LSN and its end LSN, read without decoding the rest."""
    first, last = messages[0], messages[-1]
    if first[:1] != b"B" or last[:1] != b"C":
        raise DecodeError("messages that do not start with a Begin and end with a Commit")
    _flags, commit_lsn, end_lsn, _time = _COMMIT.unpack_from(last, 1)
    return _BEGIN.unpack_from(first, 1)[0], commit_lsn, end_lsn


def committed_after(messages: list[bytes], lsn: int) -> list[bytes]:
    """The messages of the transactions that commit after `lsn`."""
    kept: list[bytes] = []
    keep = False
    for data in messages:
        if data[:1] == b"B":
            keep = _BEGIN.unpack_from(data, 1)[0] > lsn
        if keep:
            kept.append(data)
    return kept


class DecodeError(ValueError):
    """Input that is not a pgoutput protocol-1 message this decoder understands."""

    def __init__(self, problem: str, *, message_type: str | None = None, offset: int | None = None) -> None:
        self.problem, self.message_type, self.offset = problem, message_type, offset
        where = []
        if message_type is not None:
            where.append(f"message {message_type!r}")
        if offset is not None:
            where.append(f"offset {offset}")
        super().__init__(f"pgoutput {', '.join(where)}: {problem}" if where else f"pgoutput: {problem}")


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    typmod: int
    key: bool  # part of the replica identity (every column under REPLICA IDENTITY FULL)


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    schema: str  # empty for pg_catalog, as the protocol sends it
    name: str
    replica_identity: str  # pg_class.relreplident: 'd' default, 'n' nothing, 'f' full, 'i' index
    columns: tuple[Column, ...]

    @property
    def key_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.key)

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


@dataclass(frozen=True, slots=True)
class PgType:
    """A Type message: the name of a type that is not built in (enum, domain, composite...)."""

    oid: int
    schema: str
    name: str


@dataclass(frozen=True, slots=True)
class Change:
    """One row change, or one TRUNCATE of one or more tables, in the order it was made."""

    op: Literal["insert", "update", "delete", "truncate"]
    relation: Relation | None  # None for truncate: see `truncated`
    new: dict[str, Value] | None  # insert and update
    # update: the old key ('K', only when the key changed) or old row ('O', REPLICA IDENTITY
    # FULL), else None; delete: always present. A 'K' tuple holds the key columns only.
    old: dict[str, Value] | None
    old_is_key: bool
    truncated: tuple[Relation, ...] = ()
    cascade: bool = False
    restart_identity: bool = False


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """A pg_logical_emit_message() record (sent only with the `messages 'true'` option)."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes


@dataclass(slots=True)
class Transaction:
    """A committed transaction with its changes; `final_lsn == commit_lsn`, both from the protocol."""

    xid: int
    final_lsn: int
    commit_lsn: int
    end_lsn: int
    commit_time: datetime  # UTC, aware
    origin: str | None  # replication origin of the writing session, if it set one
    changes: list[Change]
    origin_lsn: int | None = None  # 0 when the writer set an origin but no origin LSN
    messages: list[LogicalMessage] = field(default_factory=list)


@dataclass(slots=True)
class _Open:
    """A transaction between its Begin and its Commit."""

    xid: int
    final_lsn: int
    origin: str | None = None
    origin_lsn: int | None = None
    changes: list[Change] = field(default_factory=list)
    messages: list[LogicalMessage] = field(default_factory=list)


class Decoder:
    """Decodes one message per `feed()`; remembers relations and types across calls.

    `keep_messages`: keep logical decoding messages ('M'): transactional ones go to their
    Transaction's `messages`, the others to `self.messages` for the caller to drain. Otherwise
    they are checked and dropped.
    """

    def __init__(self, *, keep_messages: bool = False, encoding: str = "utf-8") -> None:
        self.relations: dict[int, Relation] = {}
        self.types: dict[int, PgType] = {}
        self.messages: list[LogicalMessage] = []
        self.keep_messages = keep_messages
        self.encoding = encoding
        self._open: _Open | None = None

    @property
    def in_transaction(self) -> bool:
        return self._open is not None

    def transactions(self, messages: Iterable[bytes]) -> Iterator[Transaction]:
        """Feed every message, yielding each transaction as its Commit arrives."""
        for data in messages:
            txn = self.feed(data)
            if txn is not None:
                yield txn

    def feed(self, data: bytes | bytearray | memoryview) -> Transaction | None:
        """Decode one message; return the transaction when this message is its Commit."""
        if not isinstance(data, bytes):
            data = bytes(data)
        if not data:
            raise DecodeError("empty message", offset=0)
        kind = data[0]
        try:
            if kind == 0x49:  # 'I'
                self._insert(data)
            elif kind == 0x55:  # 'U'
                self._update(data)
            elif kind == 0x44:  # 'D'
                self._delete(data)
            elif kind == 0x42:  # 'B'
                self._begin(data)
            elif kind == 0x43:  # 'C'
                return self._commit(data)
            elif kind == 0x52:  # 'R'
                self._relation(data)
            elif kind == 0x59:  # 'Y'
                self._type(data)
            elif kind == 0x4F:  # 'O'
                self._origin(data)
            elif kind == 0x54:  # 'T'
                self._truncate(data)
            elif kind == 0x4D:  # 'M'
                self._message(data)
            else:
                raise DecodeError(
                    "unknown message type (only protocol version 1 is supported: do not ask for "
                    "streaming, two-phase or binary output)", message_type=chr(kind), offset=0)
        except struct.error as exc:
            # Fixed-size fields are unpacked without bounds checks of our own: the message ended
            # before one of them did.
            raise DecodeError(f"message is truncated ({exc})", message_type=chr(kind),
                              offset=len(data)) from None
        except DecodeError as exc:
            if exc.message_type is None:
                raise DecodeError(exc.problem, message_type=chr(kind), offset=exc.offset) from None
            raise
        return None

    # -- transaction framing ------------------------------------------------------------------

    def _begin(self, data: bytes) -> None:
        if self._open is not None:
            raise DecodeError(f"Begin inside transaction {self._open.xid}, whose Commit never came",
                              offset=0)
        final_lsn, _time, xid = _BEGIN.unpack_from(data, 1)
        _end(data, 1 + _BEGIN.size)
        self._open = _Open(xid, final_lsn)

    def _commit(self, data: bytes) -> Transaction:
        txn = self._require_open()
        flags, commit_lsn, end_lsn, time = _COMMIT.unpack_from(data, 1)
        _end(data, 1 + _COMMIT.size)
        if flags != 0:
            raise DecodeError(f"commit flags {flags}, expected 0", offset=1)
        if commit_lsn != txn.final_lsn:
            raise DecodeError(f"commit LSN {format_lsn(commit_lsn)} is not the final LSN "
                              f"{format_lsn(txn.final_lsn)} announced by Begin", offset=2)
        self._open = None
        return Transaction(xid=txn.xid, final_lsn=txn.final_lsn, commit_lsn=commit_lsn, end_lsn=end_lsn,
                           commit_time=PG_EPOCH + timedelta(microseconds=time), origin=txn.origin,
                           changes=txn.changes, origin_lsn=txn.origin_lsn, messages=txn.messages)

    def _origin(self, data: bytes) -> None:
        txn = self._require_open()
        (lsn,) = _U64.unpack_from(data, 1)
        name, pos = self._string(data, 9)
        _end(data, pos)
        # The format allows several Origin messages per transaction; the last one wins.
        txn.origin, txn.origin_lsn = name, lsn

    def _require_open(self) -> _Open:
        if self._open is None:
            raise DecodeError("outside a transaction (no Begin before it)", offset=0)
        return self._open

    # -- metadata -----------------------------------------------------------------------------

    def _relation(self, data: bytes) -> None:
        (oid,) = _U32.unpack_from(data, 1)
        schema, pos = self._string(data, 5)
        name, pos = self._string(data, pos)
        replident, ncols = _REPLIDENT_NCOLS.unpack_from(data, pos)
        pos += _REPLIDENT_NCOLS.size
        if ncols < 0:
            raise DecodeError(f"negative column count {ncols}", offset=pos - 2)
        columns = []
        for _ in range(ncols):
            flags = data[pos] if pos < len(data) else _truncated(pos)
            colname, pos = self._string(data, pos + 1)
            type_oid, typmod = _COLUMN_TAIL.unpack_from(data, pos)
            pos += _COLUMN_TAIL.size
            columns.append(Column(colname, type_oid, typmod, bool(flags & 1)))
        _end(data, pos)
        self.relations[oid] = Relation(oid, schema, name, chr(replident), tuple(columns))

    def _type(self, data: bytes) -> None:
        (oid,) = _U32.unpack_from(data, 1)
        schema, pos = self._string(data, 5)
        name, pos = self._string(data, pos)
        _end(data, pos)
        self.types[oid] = PgType(oid, schema, name)

    # -- changes ------------------------------------------------------------------------------

    def _insert(self, data: bytes) -> None:
        txn = self._require_open()
        rel = self._known_relation(data)
        _expect(data, 5, _NEW, "'N' before the new tuple")
        new, pos = self._tuple(data, 6, rel)
        _end(data, pos)
        txn.changes.append(Change("insert", rel, new, None, False))

    def _update(self, data: bytes) -> None:
        txn = self._require_open()
        rel = self._known_relation(data)
        old: dict[str, Value] | None = None
        old_is_key = False
        pos = 5
        marker = data[pos] if pos < len(data) else _truncated(pos)
        if marker in (_KEY, _OLD):
            old_is_key = marker == _KEY
            old, pos = self._tuple(data, pos + 1, rel, key_only=old_is_key)
        _expect(data, pos, _NEW, "'K', 'O' or 'N' after the relation id")
        new, pos = self._tuple(data, pos + 1, rel)
        _end(data, pos)
        txn.changes.append(Change("update", rel, new, old, old_is_key))

    def _delete(self, data: bytes) -> None:
        txn = self._require_open()
        rel = self._known_relation(data)
        marker = data[5] if len(data) > 5 else _truncated(5)
        if marker not in (_KEY, _OLD):
            raise DecodeError(f"expected 'K' or 'O' after the relation id, got {chr(marker)!r}", offset=5)
        old_is_key = marker == _KEY
        old, pos = self._tuple(data, 6, rel, key_only=old_is_key)
        _end(data, pos)
        txn.changes.append(Change("delete", rel, None, old, old_is_key))

    def _truncate(self, data: bytes) -> None:
        txn = self._require_open()
        nrels, options = _TRUNCATE_HEAD.unpack_from(data, 1)
        pos = 1 + _TRUNCATE_HEAD.size
        if nrels < 0:
            raise DecodeError(f"negative relation count {nrels}", offset=1)
        oids = struct.unpack_from(f">{nrels}I", data, pos)
        pos += 4 * nrels
        _end(data, pos)
        rels = []
        for i, oid in enumerate(oids):
            rel = self.relations.get(oid)
            if rel is None:
                raise DecodeError(f"truncate of relation {oid}, which no Relation message described",
                                  offset=1 + _TRUNCATE_HEAD.size + 4 * i)
            rels.append(rel)
        txn.changes.append(Change("truncate", None, None, None, False, tuple(rels),
                                  cascade=bool(options & _TRUNCATE_CASCADE),
                                  restart_identity=bool(options & _TRUNCATE_RESTART_IDENTITY)))

    def _message(self, data: bytes) -> None:
        flags, lsn = _MESSAGE_HEAD.unpack_from(data, 1)
        prefix, pos = self._string(data, 1 + _MESSAGE_HEAD.size)
        (length,) = _I32.unpack_from(data, pos)
        pos += 4
        if length < 0 or pos + length > len(data):
            raise DecodeError(f"content of {length} bytes does not fit in the message", offset=pos - 4)
        _end(data, pos + length)
        transactional = bool(flags & 1)
        into = self._require_open().messages if transactional else self.messages
        if self.keep_messages:
            into.append(LogicalMessage(transactional, lsn, prefix, data[pos:pos + length]))

    # -- building blocks ----------------------------------------------------------------------

    def _known_relation(self, data: bytes) -> Relation:
        (oid,) = _U32.unpack_from(data, 1)
        rel = self.relations.get(oid)
        if rel is None:
            raise DecodeError(f"change to relation {oid}, which no Relation message described: feed "
                              "every message of the session in order", offset=1)
        return rel

    def _string(self, data: bytes, pos: int) -> tuple[str, int]:
        """A NUL-terminated string at `pos`, and the position after its NUL."""
        try:
            end = data.index(b"\0", pos)
        except ValueError:
            raise DecodeError("string without its terminating NUL", offset=pos) from None
        try:
            return data[pos:end].decode(self.encoding), end + 1
        except UnicodeDecodeError as exc:
            raise DecodeError(f"string is not {self.encoding}: {exc.reason}",
                              offset=pos + exc.start) from None

    def _tuple(self, data: bytes, pos: int, rel: Relation,
               key_only: bool = False) -> tuple[dict[str, Value], int]:
        """TupleData at `pos`: the values by column name, and the position after it."""
        (ncols,) = _I16.unpack_from(data, pos)
        columns = rel.columns
        if ncols != len(columns):
            # PostgreSQL 15 sends every column, even in a 'K' tuple (non-key ones as 'n');
            # anything else means the table changed without a Relation message reaching us.
            raise DecodeError(f"tuple has {ncols} columns but relation {rel.qualified_name} has "
                              f"{len(columns)}", offset=pos)
        pos += 2
        size = len(data)
        encoding = self.encoding
        unpack_i32 = _I32.unpack_from
        values: dict[str, Value] = {}
        for col in columns:
            if pos >= size:
                _truncated(pos)
            kind = data[pos]
            if kind == _T:
                if pos + 5 > size:
                    _truncated(pos + 1)
                (length,) = unpack_i32(data, pos + 1)
                start = pos + 5
                pos = start + length
                if length < 0 or pos > size:
                    raise DecodeError(f"value of column {col.name!r} ({length} bytes) runs past the end "
                                      "of the message", offset=start - 4)
                try:
                    value: Value = data[start:pos].decode(encoding)
                except UnicodeDecodeError as exc:
                    raise DecodeError(f"value of column {col.name!r} is not {encoding}: {exc.reason}",
                                      offset=start + exc.start) from None
            elif kind == _N:
                value = None
                pos += 1
            elif kind == _U:
                value = UNCHANGED
                pos += 1
            elif kind == _B:
                raise DecodeError("binary tuple value: capture with text values (no 'binary' option)",
                                  offset=pos)
            else:
                raise DecodeError(f"unknown tuple value kind {chr(kind)!r}", offset=pos)
            if key_only and not col.key:
                continue
            values[col.name] = value
        return values, pos


def _end(data: bytes, pos: int) -> None:
    """Trailing bytes mean we misread the layout (e.g. a protocol version with extra fields)."""
    if pos != len(data):
        raise DecodeError(f"{len(data) - pos} unexpected bytes after the end of the message", offset=pos)


def _expect(data: bytes, pos: int, byte: int, what: str) -> None:
    if pos >= len(data):
        _truncated(pos)
    if data[pos] != byte:
        raise DecodeError(f"expected {what}, got {chr(data[pos])!r}", offset=pos)


def _truncated(pos: int) -> NoReturn:
    raise DecodeError("message is truncated", offset=pos)
