"""What change capture costs the application: pgbench throughput with and without it.

pgbench's default TPC-B-like script runs on its own database; the variants are measured
interleaved (base, logical, continuous, trigger, decode, base, …). A captured run is set up as
during a release: `capture.start()` creates the slot and publication (or the triggers) for the
pgbench tables, the journal records the capture with `pg_current_snapshot()` taken just after,
and a capture `Worker` runs every second while pgbench runs, in the playbook's default drain
mode, `lazy` (`logical`, `trigger`: the slot holds its WAL within the default budget), or in
`continuous` mode (the slot's messages stored and decoded into the journal as they come). After
pgbench, the release finalizes: a lazy capture is discarded, a continuous one drained to its end;
that work is in the CPU figures too.

`decode` measures the floor of any logical capture on this machine: the same slot and
publication consumed by PostgreSQL alone (`pg_logical_slot_get_binary_changes()` counted in the
server, every second), with no client work and nothing stored.

Everything is measured twice: on the throwaway cluster (fsync and full_page_writes off) and on
one with a production server's durable settings (lines ending in `_durable`).
"""

from __future__ import annotations

import os
import re
import resource
import threading
import time
from dataclasses import dataclass

import psycopg

from bench.common import (
    DURABLE,
    capture_info,
    create_database,
    emit,
    finish_release,
    median,
    new_release,
    open_journal,
    pgbench,
    progress,
    throwaway_cluster,
)
from deployctl.db import capture
from deployctl.localpg import LocalCluster

DB = "pgbench"
SCALE = int(os.environ.get("BENCH_PGBENCH_SCALE", "10"))
# Many short runs rather than a few long ones: on a shared machine the load changes from one
# minute to the next, and interleaved short runs spread it over every variant.
SECONDS = int(os.environ.get("BENCH_PGBENCH_SECONDS", "6"))
ROUNDS = int(os.environ.get("BENCH_CAPTURE_ROUNDS", "5"))
CLIENTS, THREADS = 4, 2
MODES = ("base", "logical", "continuous", "trigger", "decode")
CHANGES_PER_TX = 4  # the TPC-B-like script: three UPDATEs and one INSERT


def _pgbench(cluster: LocalCluster, *args: str) -> str:
    return pgbench(cluster, DB, *args)


def _figure(output: str, pattern: str) -> float:
    found = re.search(pattern, output, re.MULTILINE)
    if not found:
        raise RuntimeError(f"no {pattern!r} in pgbench output:\n{output}")
    return float(found.group(1))


def _tps(output: str) -> float:
    return _figure(output, r"^tps = ([0-9.]+)")


def _transactions(output: str) -> float:
    return _figure(output, r"^number of transactions actually processed: ([0-9]+)")


def _bench(cluster: LocalCluster, seconds: int = SECONDS) -> str:
    return _pgbench(cluster, "-c", str(CLIENTS), "-j", str(THREADS), "-T", str(seconds))


@dataclass
class Run:
    tps: float
    cpu_ms_per_tx: float     # server, pgbench and capture worker together
    drained: float | None    # share of the run's changes the worker had drained when pgbench ended


def _cpu_seconds(cluster: LocalCluster) -> float:
    """CPU time used so far by the cluster (exited backends included), this process and pgbench.

    Throughput on a shared machine swings with other people's load; the CPU spent per
    transaction hardly does, so it tells what capture costs even when the tps figures are noisy.
    """
    def fields(pid: int | str) -> list[str]:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()

    postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
    own = fields(postmaster)
    ticks = sum(int(own[i]) for i in (11, 12, 13, 14))  # utime, stime, and of reaped children
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            child = fields(pid)
        except OSError:
            continue  # exited meanwhile: the postmaster has its time
        if int(child[1]) == postmaster:
            ticks += int(child[11]) + int(child[12])
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return (ticks / os.sysconf("SC_CLK_TCK") + me.ru_utime + me.ru_stime + kids.ru_utime
            + kids.ru_stime)


def _settled_cpu(cluster: LocalCluster) -> float:
    time.sleep(0.3)  # closed connections' backends exit and are reaped
    return _cpu_seconds(cluster)


def _one(cluster: LocalCluster, mode: str, round_no: int) -> Run:
    dsn = cluster.dsn(DB)
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Every run starts from the same place: no dead rows, no pending checkpoint.
        conn.execute("VACUUM")
        conn.execute("CHECKPOINT")
    if mode == "base":
        cpu = _settled_cpu(cluster)
        output = _bench(cluster)
        cpu = _settled_cpu(cluster) - cpu
        return Run(_tps(output), cpu * 1000 / _transactions(output), None)
    name = f"deployctl_bench_{mode}_{round_no}"
    if mode == "decode":
        return _decode_only(cluster, name)
    kind = "trigger" if mode == "trigger" else "logical"
    drain = "continuous" if mode == "continuous" else "lazy"
    with open_journal(cluster) as journal:
        release_id = new_release(journal, name)
        capture.start(dsn, kind, name, ["public"])
        with psycopg.connect(dsn, autocommit=True) as conn:
            snapshot = str(conn.execute("SELECT pg_current_snapshot()::text").fetchone()[0])  # type: ignore[index]
        info = capture_info(journal, release_id, kind, name, snapshot)
        worker = capture.Worker(dsn, journal.dsn, info, interval=1.0, mode=drain)
        cpu = _settled_cpu(cluster)
        worker.start()
        try:
            output = _bench(cluster)
        finally:
            worker.stop()
        count = "SELECT count(*) AS n FROM deployctl.changes WHERE release_id = %s"
        drained = journal.conn.execute(count, (release_id,)).fetchone()["n"]  # type: ignore[index]
        if drain == "continuous":
            capture.drain(dsn, journal.dsn, info)  # what the run left behind costs CPU too
        capture.stop(dsn, name)
        cpu = _settled_cpu(cluster) - cpu
        finish_release(journal, release_id)
    transactions = _transactions(output)
    share = drained / (transactions * CHANGES_PER_TX) if drain == "continuous" else None
    return Run(_tps(output), cpu * 1000 / transactions, share)


def _decode_only(cluster: LocalCluster, name: str) -> Run:
    """pgbench while PostgreSQL decodes the slot every second and throws the output away."""
    dsn = cluster.dsn(DB)
    capture.start(dsn, "logical", name, ["public"])
    stop = threading.Event()

    def consume() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop.wait(1.0):
                while conn.execute(
                        "SELECT count(*) FROM pg_logical_slot_get_binary_changes(%s, NULL, %s, "
                        "'proto_version', '1', 'publication_names', %s)",
                        (name, capture.BATCH, name)).fetchone()[0] >= capture.BATCH:  # type: ignore[index]
                    pass

    consumer = threading.Thread(target=consume, name="decode-only")
    cpu = _settled_cpu(cluster)
    consumer.start()
    try:
        output = _bench(cluster)
    finally:
        stop.set()
        consumer.join()
    cpu = _settled_cpu(cluster) - cpu
    capture.stop(dsn, name)
    return Run(_tps(output), cpu * 1000 / _transactions(output), None)


def _measure(cluster: LocalCluster, rounds: int, suffix: str) -> None:
    create_database(cluster, DB)
    progress(f"pgbench -i -s {SCALE}{suffix}")
    _pgbench(cluster, "-i", "-q", "-s", str(SCALE))
    progress("warm-up run (not counted)")
    _bench(cluster, 5)
    runs: dict[str, list[Run]] = {m: [] for m in MODES}
    for round_no in range(rounds):
        # Each round starts with another variant, so none always runs right after a given one.
        for mode in MODES[round_no % len(MODES):] + MODES[:round_no % len(MODES)]:
            started = time.monotonic()
            r = _one(cluster, mode, round_no)
            runs[mode].append(r)
            note = f", worker had drained {r.drained:.0%} when pgbench ended" if r.drained is not None else ""
            progress(f"round {round_no + 1}/{rounds}{suffix} {mode}: {r.tps:.0f} tps, {r.cpu_ms_per_tx:.2f} "
                     f"CPU ms per transaction{note} ({time.monotonic() - started:.0f}s)")
    tps = {m: median([r.tps for r in runs[m]]) for m in MODES}
    cpu = {m: median([r.cpu_ms_per_tx for r in runs[m]]) for m in MODES}
    for mode in MODES:
        emit(f"pgbench_tps_{mode}{suffix}", tps[mode])
    for mode in MODES:
        emit(f"pgbench_cpu_ms_per_tx_{mode}{suffix}", cpu[mode])
    for mode in MODES[1:]:
        emit(f"capture_cpu_per_tx_ratio_{mode}{suffix}", cpu[mode] / cpu["base"])
    for mode in MODES[1:]:
        emit(f"capture_tps_ratio_{mode}{suffix}", tps[mode] / tps["base"])
    # Continuous capture against PostgreSQL's own decoding of the same slot: our share of it.
    emit(f"capture_continuous_vs_decode{suffix}", tps["continuous"] / tps["decode"])


def run(cluster: LocalCluster, rounds: int) -> None:
    rounds = max(rounds, ROUNDS)
    _measure(cluster, rounds, "")
    with throwaway_cluster(DURABLE) as durable:
        _measure(durable, rounds, "_durable")
