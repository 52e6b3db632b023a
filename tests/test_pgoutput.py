"""The pgoutput decoder against real PostgreSQL output.

Unit tests decode tests/data/pgoutput_capture.json, messages captured from PostgreSQL 15 together
with the `col::text` values the server returned for each row (regenerate it with
tests/data/capture_pgoutput.py). The integration tests capture the same workload live, with
100 kB TOASTed values, and check it the same way.
"""

from __future__ import annotations

import copy
import json
import pickle
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from deployctl.db.pgoutput import (
    UNCHANGED,
    Change,
    DecodeError,
    Decoder,
    Transaction,
    Unchanged,
    Value,
    format_lsn,
    parse_lsn,
)
from tests.data.capture_pgoutput import NASTY, SESSION_SETTINGS, UNCHANGED_JSON, capture

FIXTURE = Path(__file__).parent / "data" / "pgoutput_capture.json"


@cache
def _fixture_text() -> str:
    return FIXTURE.read_text()


def fixture() -> dict[str, Any]:
    return json.loads(_fixture_text())  # a fresh copy: tests may not share mutations


def messages(rows: list[dict[str, Any]]) -> list[bytes]:
    return [bytes.fromhex(row["hex"]) for row in rows]


@cache
def decoded() -> tuple[Transaction, ...]:
    return tuple(Decoder().transactions(messages(fixture()["rows"])))


def _values(values: dict[str, Value] | None) -> dict[str, Any] | None:
    if values is None:
        return None
    return {k: UNCHANGED_JSON if v is UNCHANGED else v for k, v in values.items()}


def as_json(change: Change) -> dict[str, Any]:
    """A decoded change in the form capture_pgoutput.py writes the expected ones."""
    if change.op == "truncate":
        return {"op": "truncate", "relations": [r.qualified_name for r in change.truncated],
                "cascade": change.cascade, "restart_identity": change.restart_identity}
    assert change.relation is not None
    return {"op": change.op, "relation": change.relation.qualified_name, "new": _values(change.new),
            "old": _values(change.old), "old_is_key": change.old_is_key}


def check_capture(data: dict[str, Any]) -> list[Transaction]:
    """Every decoded transaction, change and value is what the server said it wrote."""
    decoder = Decoder()
    rows = data["rows"]
    txns: list[Transaction] = []
    first = 0
    for i, (row, message) in enumerate(zip(rows, messages(rows), strict=True)):
        txn = decoder.feed(message)
        if txn is None:
            continue
        # The SQL interface's own columns agree: one xid per transaction, and the Commit row's
        # lsn is the transaction's end LSN.
        assert {r["xid"] for r in rows[first:i + 1]} == {txn.xid}
        assert parse_lsn(row["lsn"]) == txn.end_lsn
        first = i + 1
        txns.append(txn)
    assert not decoder.in_transaction
    expected = data["transactions"]
    assert len(txns) == len(expected)
    for txn, want in zip(txns, expected, strict=True):
        assert txn.xid == want["xid"]
        assert txn.commit_lsn == txn.final_lsn < txn.end_lsn
        assert (txn.origin, txn.origin_lsn) == (want["origin"],
                                                 want["origin_lsn"] and parse_lsn(want["origin_lsn"]))
        assert txn.commit_time.tzinfo is not None and txn.commit_time.utcoffset() == timedelta(0)
        if want["time_max"] is None:
            assert txn.commit_time == datetime.fromisoformat(want["time_min"])
        else:
            assert datetime.fromisoformat(want["time_min"]) <= txn.commit_time
            assert txn.commit_time <= datetime.fromisoformat(want["time_max"])
        got = [as_json(c) for c in txn.changes]
        assert got == want["changes"], f"transaction {txn.xid}"
        for g, w in zip(got, want["changes"], strict=True):  # and the columns in table order
            assert [list(g.get("new") or ()), list(g.get("old") or ())] == [list(w.get("new") or ()),
                                                                             list(w.get("old") or ())]
    assert [t.commit_lsn for t in txns] == sorted(t.commit_lsn for t in txns)
    for name, want_rel in data["relations"].items():
        rel = decoder.relations[want_rel["oid"]]
        assert rel.qualified_name == name
        assert rel.replica_identity == want_rel["replica_identity"]
        assert [[c.name, c.type_oid, c.typmod, c.key] for c in rel.columns] == want_rel["columns"]
    for oid, (schema, name) in data["types"].items():
        assert (decoder.types[int(oid)].schema, decoder.types[int(oid)].name) == (schema, name)
    return txns


def changes_of(table: str, op: str) -> list[Change]:
    return [c for t in decoded() for c in t.changes
            if c.op == op and c.relation is not None and c.relation.name == table]


# -- small pieces ------------------------------------------------------------------------------

def test_lsn_text_round_trips_through_integers() -> None:
    assert parse_lsn("0/16B3748") == 0x16B3748
    assert parse_lsn("1/0") == 1 << 32
    assert parse_lsn("FFFFFFFF/FFFFFFFF") == (1 << 64) - 1
    for value in (0, 0x16B3748, (7 << 32) | 0xABC, (1 << 64) - 1):
        assert parse_lsn(format_lsn(value)) == value
    assert format_lsn(0x16B3748) == "0/16B3748"
    for bad in ("", "16B3748", "0/", "/1", "x/1", "0/1/2", "123456789/0"):
        with pytest.raises(ValueError):
            parse_lsn(bad)
    with pytest.raises(ValueError):
        format_lsn(-1)


def test_unchanged_is_one_marker_that_refuses_a_truth_value() -> None:
    assert Unchanged() is UNCHANGED
    assert repr(UNCHANGED) == "UNCHANGED"
    assert pickle.loads(pickle.dumps(UNCHANGED)) is UNCHANGED
    assert copy.deepcopy({"body": UNCHANGED})["body"] is UNCHANGED
    assert UNCHANGED != "" and UNCHANGED is not None
    with pytest.raises(TypeError, match="is UNCHANGED"):
        bool(UNCHANGED)


# -- the captured workload -----------------------------------------------------------------------

def test_fixture_is_real_postgresql_15_output() -> None:
    data = fixture()
    assert data["server_version"].startswith("15.")
    assert data["session_settings"] == SESSION_SETTINGS


def test_every_captured_value_decodes_to_what_postgresql_returned_as_text() -> None:
    check_capture(fixture())


def test_several_transactions_in_one_call_come_out_one_by_one_in_commit_order() -> None:
    txns = decoded()
    assert len(txns) == len(fixture()["transactions"]) > 10
    assert len({t.xid for t in txns}) == len(txns)


def test_nulls_empty_strings_and_nasty_text_are_kept_exactly() -> None:
    rows = {c.new["id"]: c.new for c in changes_of("kitchen", "insert") if c.new}
    assert rows["1"] == {"id": "1", **{k: None for k in rows["1"] if k != "id"}}
    assert rows["2"]["t"] == NASTY  # quotes, backslashes, \n \t \r, emoji, CJK, combining marks
    assert rows["3"]["t"] == "" and rows["3"]["b"] == "\\x" and rows["3"]["ta"] == "{}"
    assert rows["3"]["m"] == "sad" and rows["3"]["e"] is None


def test_values_keep_postgresql_text_form_for_every_type() -> None:
    row = next(c.new for c in changes_of("kitchen", "insert") if c.new and c.new["id"] == "2")
    assert row["b"] == "\\x" + bytes(range(256)).hex()
    assert row["ia"] == "{1,NULL,-3}"
    assert row["ta"] == '{plain,NULL,"with \\"quote\\"","back\\\\slash","comma,brace}","NULL","","sp ace",😀}'
    assert row["n"] == "123456789012345678901234567890.123456789012345678901234567890"
    assert row["ts"] == "2024-03-10 09:30:00+00"  # written at -08, decoded in the reader's UTC
    assert row["m"] == 'it\'s "complicated"' and row["moods"] == "{sad,NULL,ok}"
    assert isinstance(row["j"], str) and json.loads(row["j"])["q"] == '"x" \\ \n'
    others = {c.new["id"]: c.new for c in changes_of("kitchen", "insert") if c.new}
    assert (others["3"]["n"], others["4"]["n"], others["5"]["n"]) == ("NaN", "-0.000000000000000000001",
                                                                      "Infinity")
    assert (others["3"]["ts"], others["4"]["ts"]) == ("2024-06-01 06:30:00.123456+00", "infinity")


def test_unchanged_toast_value_arrives_as_the_marker_and_a_changed_one_in_full() -> None:
    insert, = changes_of("docs", "insert")
    rename, rewrite = changes_of("docs", "update")
    assert insert.new and isinstance(insert.new["body"], str) and len(insert.new["body"]) >= 4096
    assert rename.new == {"id": "1", "title": "renamed", "body": UNCHANGED}
    assert rename.old is None  # the key did not change
    assert rewrite.new and isinstance(rewrite.new["body"], str) and rewrite.new["body"] != insert.new["body"]


def test_replica_identity_full_sends_the_whole_old_row_even_the_unsent_toast_value() -> None:
    update = changes_of("audit", "update")[0]
    assert update.relation and update.relation.replica_identity == "f"
    assert all(c.key for c in update.relation.columns)  # FULL marks every column as key
    assert not update.old_is_key and update.old and update.new
    assert update.new["big"] is UNCHANGED and isinstance(update.old["big"], str)
    assert (update.old["note"], update.new["note"]) == ("n1", "n2")
    delete = changes_of("audit", "delete")[0]
    assert not delete.old_is_key and delete.old == update.old | {"note": "n2"}


def test_old_key_of_a_composite_key_holds_only_the_key_columns() -> None:
    key_change = next(c for c in changes_of("pairs", "update") if c.old is not None)
    assert key_change.old_is_key and key_change.old == {"a": "1", "b": "a"}
    assert key_change.new == {"a": "1", "b": "c", "v": "v1"}
    delete, = changes_of("pairs", "delete")
    assert delete.old_is_key and delete.old == {"a": "1", "b": "b"} and delete.new is None


def test_multi_statement_transaction_keeps_its_order() -> None:
    txn = next(t for t in decoded() if len(t.changes) == 8)
    assert [(c.op, c.relation and c.relation.name) for c in txn.changes] == [
        ("insert", "kitchen"), ("update", "pairs"), ("delete", "kitchen"), ("insert", "audit"),
        ("update", "kitchen"), ("update", "kitchen"), ("delete", "kitchen"), ("update", "audit")]
    assert [c.old for c in txn.changes[4:7]] == [None, {"id": "6"}, {"id": "60"}]


def test_truncate_names_every_relation_and_its_options() -> None:
    truncates = [c for t in decoded() for c in t.changes if c.op == "truncate"]
    assert [([r.name for r in c.truncated], c.cascade, c.restart_identity) for c in truncates] == [
        (["scratch_child"], False, False), (["scratch", "scratch_child"], True, True)]
    assert all(c.relation is None and c.new is None and c.old is None for c in truncates)


def test_user_types_come_in_type_messages_a_domain_under_its_base_type_name() -> None:
    decoder = Decoder()
    list(decoder.transactions(messages(fixture()["rows"])))
    names = {(t.schema, t.name) for t in decoder.types.values()}
    assert names == {("public", "mood"), ("public", "_mood"), ("", "text")}  # "" is pg_catalog
    kitchen = next(r for r in decoder.relations.values() if r.name == "kitchen")
    email = next(c for c in kitchen.columns if c.name == "e")
    assert decoder.types[email.type_oid].name == "text"


def test_generated_columns_are_not_sent_and_alter_table_brings_a_new_relation() -> None:
    kitchen = changes_of("kitchen", "insert")[0].relation
    assert kitchen and "t_len" not in [c.name for c in kitchen.columns]
    before, after = changes_of("pairs", "insert")[0], changes_of("pairs", "insert")[-1]
    assert before.relation and after.relation and before.relation.oid == after.relation.oid
    assert [c.name for c in before.relation.columns] == ["a", "b", "v"]
    assert after.new == {"a": "2", "b": "x", "note": "n/a"}  # ADD note DEFAULT, DROP v


def test_replication_origin_names_the_transaction_and_sets_its_commit_time() -> None:
    with_origin = [t for t in decoded() if t.origin is not None]
    assert len(with_origin) == 2 and with_origin[0].origin == with_origin[1].origin
    assert with_origin[0].origin_lsn == parse_lsn("0/ABCDEF")
    # Without pg_replication_origin_xact_setup() the origin's LSN and timestamp are zero, and
    # the decoded commit time is the PostgreSQL epoch: order by LSN, never by commit time.
    assert with_origin[1].origin_lsn == 0
    assert with_origin[1].commit_time == datetime.fromisoformat("2000-01-01T00:00:00+00:00")
    assert all(t.origin is None and t.origin_lsn is None for t in decoded() if t not in with_origin)


def test_logical_messages_are_skipped_unless_asked_for() -> None:
    part = fixture()["with_messages"]
    rows = messages(part["rows"])
    assert sum(m[0] == ord("M") for m in rows) == 2
    plain = Decoder()
    txns = list(plain.transactions(rows))
    assert [[as_json(c) for c in t.changes] for t in txns] == [t["changes"] for t in part["transactions"]]
    assert plain.messages == [] and all(t.messages == [] for t in txns)

    keeping = Decoder(keep_messages=True)
    txns = list(keeping.transactions(rows))
    kept = [*txns[0].messages, *keeping.messages]
    assert [{"transactional": m.transactional, "prefix": m.prefix, "content_hex": m.content.hex()}
            for m in kept] == part["messages"]
    assert kept[0].lsn < txns[0].commit_lsn


# -- malformed input -------------------------------------------------------------------------------

def _cuts(length: int) -> list[int]:
    if length <= 300:
        return list(range(length))
    return sorted({*range(64), *range(length - 64, length), *range(64, length, 97)})


def test_every_truncated_message_raises_decode_error_and_leaves_the_decoder_usable() -> None:
    decoder = Decoder()
    txns = []
    for message in messages(fixture()["rows"]):
        for cut in _cuts(len(message)):
            with pytest.raises(DecodeError) as caught:
                decoder.feed(message[:cut])
            if cut:
                assert caught.value.message_type == chr(message[0])
            assert caught.value.offset is not None and 0 <= caught.value.offset <= cut
        txn = decoder.feed(message)
        if txn is not None:
            txns.append(txn)
    assert [[as_json(c) for c in t.changes] for t in txns] == [
        t["changes"] for t in fixture()["transactions"]]


def _begun() -> tuple[Decoder, bytes]:
    """A decoder inside the fixture's first transaction, and that transaction's first insert."""
    decoder = Decoder()
    rows = messages(fixture()["rows"])
    insert_at = next(i for i, m in enumerate(rows) if m[:1] == b"I")
    for message in rows[:insert_at]:
        decoder.feed(message)
    return decoder, rows[insert_at]


@pytest.mark.parametrize(("message", "problem"), [
    (b"", "empty message"),
    (b"Z\x00\x00", "unknown message type"),
    (b"S\x00\x00\x00\x01\x01", "unknown message type"),  # Stream Start: protocol version 2
    (b"C" + bytes(25), "outside a transaction"),
    (b"I\x00\x00\x00\x01N\x00\x00", "outside a transaction"),
])
def test_malformed_messages_raise_decode_error(message: bytes, problem: str) -> None:
    with pytest.raises(DecodeError, match=problem) as caught:
        Decoder().feed(message)
    assert isinstance(caught.value, ValueError)
    if message:
        assert caught.value.message_type == chr(message[0]) and caught.value.offset is not None
        assert f"message {chr(message[0])!r}" in str(caught.value)


def test_bad_changes_inside_a_transaction_raise_decode_error() -> None:
    decoder, insert = _begun()
    relid = insert[1:5]  # then 'N', the column count, and the first value at offset 8
    assert insert[8:9] == b"t"
    first_len = int.from_bytes(insert[9:13])
    bad = {
        insert + b"\x00": "unexpected bytes",
        b"I\x7f\xff\xff\xf0N\x00\x00": "no Relation message",
        insert[:5] + b"X" + insert[6:]: "expected 'N'",
        b"I" + relid + b"N\x00\x01t\x00\x00\x00\x01x": "tuple has 1 columns",
        insert[:8] + b"b" + insert[9:]: "binary tuple value",
        insert[:8] + b"q" + insert[9:]: "unknown tuple value kind",
        insert[:8] + b"t\x00\x00\x00\x02\xff\xfe" + insert[13 + first_len:]: "not utf-8",
        insert[:8] + b"t\xff\xff\xff\xff" + insert[13:]: "runs past the end",
        b"D" + relid + b"N": "expected 'K' or 'O'",
        b"T\x00\x00\x00\x01\x00\x7f\xff\xff\xf0": "no Relation message",
        b"B" + bytes(20): "Begin inside transaction",
    }
    for message, problem in bad.items():
        with pytest.raises(DecodeError, match=problem):
            decoder.feed(message)
    assert decoder.in_transaction  # none of them changed the decoder's state


def test_commit_of_another_transaction_raises_decode_error() -> None:
    decoder, _ = _begun()
    commit = next(m for m in messages(fixture()["rows"]) if m[:1] == b"C")
    wrong = commit[:2] + (int.from_bytes(commit[2:10]) + 1).to_bytes(8) + commit[10:]
    with pytest.raises(DecodeError, match="not the final LSN"):
        decoder.feed(wrong)
    assert decoder.feed(commit) is not None


# -- live ------------------------------------------------------------------------------------------

@pytest.mark.integration
def test_live_capture_decodes_every_value_to_select_text(pg_server: str) -> None:
    data = capture(pg_server, big_bytes=50_000)  # TOASTed values of 100 kB
    txns = check_capture(data)
    bodies = [c.new.get("body") for t in txns for c in t.changes if c.new and c.new.get("body") is not None]
    assert UNCHANGED in bodies and all(len(b) == 100_000 for b in bodies if isinstance(b, str))
    part = data["with_messages"]
    kept = Decoder(keep_messages=True)
    assert [[as_json(c) for c in t.changes] for t in kept.transactions(messages(part["rows"]))] == [
        t["changes"] for t in part["transactions"]]
    created = data["created"]
    with psycopg.connect(pg_server) as conn:  # capture() dropped what it created
        assert conn.execute(
            "SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s),"
            " (SELECT count(*) FROM pg_replication_origin WHERE roname = %s),"
            " (SELECT count(*) FROM pg_database WHERE datname = %s)",
            (created["slot"], created["origin"], created["database"])).fetchone() == (0, 0, 0)


@pytest.mark.integration
def test_reading_session_settings_decide_the_text_and_each_call_resends_relations(env: Any) -> None:
    """pgoutput formats values in the session that reads the slot, not the one that wrote."""
    slot, pub = f"tz_{env.dbname}", "tz_pub"
    with env.connect() as conn:
        conn.execute("SET synchronous_commit = on")  # the SQL interface decodes flushed WAL only
        conn.execute("CREATE TABLE events (id int PRIMARY KEY, at timestamptz)")
        conn.execute(sql.SQL("CREATE PUBLICATION {} FOR TABLES IN SCHEMA public").format(sql.Identifier(pub)))
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
        try:
            conn.execute("INSERT INTO events VALUES (1, '2024-01-01 12:00:00+00')")
            read = sql.SQL("SELECT data FROM {}(%s, NULL, NULL, 'proto_version', '1', "
                           "'publication_names', %s)")
            seen = {}
            for zone in ("UTC", "Asia/Tokyo"):
                conn.execute("SELECT set_config('TimeZone', %s, false)", (zone,))
                rows = conn.execute(read.format(sql.Identifier("pg_logical_slot_peek_binary_changes")),
                                    (slot, pub)).fetchall()
                (txn,) = Decoder().transactions(bytes(r[0]) for r in rows)
                assert txn.changes[0].new
                at = txn.changes[0].new["at"]
                assert conn.execute("SELECT at::text FROM events").fetchone() == (at,)
                seen[zone] = at
            assert seen == {"UTC": "2024-01-01 12:00:00+00", "Asia/Tokyo": "2024-01-01 21:00:00+09"}

            decoder = Decoder()
            first = conn.execute(read.format(sql.Identifier("pg_logical_slot_get_binary_changes")),
                                 (slot, pub)).fetchall()
            assert len(list(decoder.transactions(bytes(r[0]) for r in first))) == 1
            conn.execute("INSERT INTO events VALUES (2, NULL)")
            second = [bytes(r[0]) for r in conn.execute(
                read.format(sql.Identifier("pg_logical_slot_get_binary_changes")), (slot, pub)).fetchall()]
            assert [m[:1] for m in second] == [b"B", b"R", b"I", b"C"]  # a new call sends Relation again
            (txn,) = decoder.transactions(second)
            assert txn.changes[0].new == {"id": "2", "at": None}
        finally:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
