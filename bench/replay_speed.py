"""How fast a delta replays, against the floor of loading as many rows with COPY.

The delta is built for real: a database seeded by bench/workload.py gets a logical capture
(`capture.start()`, `pg_current_snapshot()` just after), then 100,000 mixed changes (inserts,
updates, deletes over three tables) in transactions of 100, and `capture.drain()` moves them into
the journal exactly as a release would. Each round then replays the delta with `replay.apply()`
into a fresh copy of the seed (the pre-change state) and, interleaved, COPYs the same number of
rows per table (final images read from the source) into empty copies of those tables, indexes
included, each in one transaction. Only `replay.apply()` and the COPY are timed; the replay's
stages are printed apart (`replay_stage_*_s`).
"""

from __future__ import annotations

from collections import Counter

import psycopg
from psycopg import sql

from bench import workload
from bench.common import (
    Stopwatch,
    capture_info,
    create_database,
    drop_database,
    emit,
    finish_release,
    median,
    new_release,
    open_journal,
    progress,
    replay_options,
)
from deployctl.db import capture, replay
from deployctl.journal import Journal
from deployctl.journal import delta as delta_rows
from deployctl.localpg import LocalCluster

SEED_DB = "bench_seed"
CHANGES = 100_000
TABLES = ("users", "posts", "reactions")


def seed(cluster: LocalCluster) -> str:
    """The seeded template database (created once per cluster); returns its name."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (SEED_DB,)).fetchone():
            return SEED_DB
    progress("seeding the social schema")
    workload.create(create_database(cluster, SEED_DB))
    return SEED_DB


def _fingerprint(dsn: str) -> dict[str, str]:
    """An md5 of every table's rows, to check that a replay reproduced the source."""
    with psycopg.connect(dsn) as conn:
        return {t: conn.execute(sql.SQL("SELECT md5(string_agg(x::text, ',' ORDER BY id)) FROM {} x").format(
            sql.Identifier(t))).fetchone()[0] for t in TABLES}  # type: ignore[index]


def _copy_payload(dsn: str, per_table: Counter[str]) -> dict[str, bytes]:
    """COPY text of as many real rows per table as the delta changes there."""
    payload = {}
    with psycopg.connect(dsn) as conn:
        for table, n in per_table.items():
            query = sql.SQL("COPY (SELECT * FROM {} ORDER BY id LIMIT {}) TO STDOUT").format(
                sql.Identifier(table), sql.Literal(n))
            with conn.cursor().copy(query) as copy:
                payload[table] = b"".join(bytes(block) for block in copy)
    return payload


def _copy_once(cluster: LocalCluster, payload: dict[str, bytes]) -> float:
    dsn = create_database(cluster, "bench_copy_target", SEED_DB)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA empty")
        for table in payload:
            conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
                sql.Identifier("empty", table), sql.Identifier("public", table)))
    with Stopwatch() as timer, psycopg.connect(dsn) as conn:
        for table, data in payload.items():
            with conn.cursor().copy(sql.SQL("COPY {} FROM STDIN").format(
                    sql.Identifier("empty", table))) as copy:
                copy.write(data)
        conn.commit()
    drop_database(cluster, "bench_copy_target")
    return timer.seconds


def _replay_once(cluster: LocalCluster, journal: Journal, release_id: int,
                 expected: dict[str, str] | None, stages: dict[str, list[float]]) -> float:
    dsn = create_database(cluster, "bench_replay_target", SEED_DB)
    with Stopwatch() as timer:  # from the journal to the target, as a rollback does
        report = replay.apply(journal.conn, release_id, dsn, replay_options())
    for stage, seconds in report.stages.items():
        stages.setdefault(stage, []).append(seconds)
    if report.conflicts:
        raise RuntimeError(f"replay into the pre-change state found conflicts: {report.summary()}")
    if expected is not None and _fingerprint(dsn) != expected:
        raise RuntimeError("the replayed database differs from the source: the benchmark is not valid")
    drop_database(cluster, "bench_replay_target")
    return timer.seconds


def run(cluster: LocalCluster, rounds: int) -> None:
    seed(cluster)
    source = create_database(cluster, "bench_replay_source", SEED_DB)
    name = "deployctl_bench_replay"
    with open_journal(cluster) as journal:
        release_id = new_release(journal, name)
        capture.start(source, "logical", name, ["public"])
        with psycopg.connect(source, autocommit=True) as conn:
            snapshot = str(conn.execute("SELECT pg_current_snapshot()::text").fetchone()[0])  # type: ignore[index]
        info = capture_info(journal, release_id, "logical", name, snapshot)
        progress(f"writing {CHANGES} changes under logical capture")
        with Stopwatch() as writing:
            workload.Workload().run(source, CHANGES)
        with Stopwatch() as draining:
            capture.drain(source, journal.dsn, info)
        capture.stop(source, name)
        stored = journal.conn.execute("SELECT count(*) AS n FROM deployctl.changes WHERE release_id = %s",
                                      (release_id,)).fetchone()["n"]  # type: ignore[index]
        if stored != CHANGES:
            raise RuntimeError(f"the journal holds {stored} changes, expected {CHANGES}")
        progress(f"wrote in {writing.seconds:.1f}s, drained in {draining.seconds:.1f}s")
        expected = _fingerprint(source)
        per_table = Counter(r["table_name"] for r in delta_rows.changes(journal.conn, release_id))
        payload = _copy_payload(source, per_table)
        replay_s: list[float] = []
        copy_s: list[float] = []
        stages: dict[str, list[float]] = {}
        for round_no in range(rounds):
            replay_s.append(_replay_once(cluster, journal, release_id, expected if round_no == 0 else None,
                                         stages))
            copy_s.append(_copy_once(cluster, payload))
            progress(f"round {round_no + 1}/{rounds}: replay {replay_s[-1]:.2f}s, copy {copy_s[-1]:.2f}s")
        finish_release(journal, release_id)
    drop_database(cluster, "bench_replay_source")
    emit("replay_changes", CHANGES)
    emit("capture_drain_rows_per_s", CHANGES / draining.seconds)
    emit("replay_seconds", median(replay_s))
    emit("copy_seconds", median(copy_s))
    emit("replay_rows_per_s", CHANGES / median(replay_s))
    emit("replay_vs_copy_ratio", median(replay_s) / median(copy_s))
    # Where a replay's time goes: the journal's changes copied into the target, mapped from
    # their shapes, planned (folded per row, typed and classified against the target, in one
    # query per table), written, committed.
    for stage, seconds in stages.items():
        emit(f"replay_stage_{stage}_s", median(seconds))
