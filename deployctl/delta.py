"""A release's delta: the changes users made while it ran, and what can be done with them.

The release steps start, drain and stop the capture through this module; the side-by-side
restore replays the delta here; `deployctl delta show|export|replay` reads it after an incident.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import psycopg

from deployctl import failpoints
from deployctl.db import capture, replay, restore
from deployctl.db.capture import CaptureInfo, CaptureLost
from deployctl.db.shapes import History
from deployctl.errors import BadInput, StepFailed
from deployctl.files import write_private
from deployctl.journal import Journal, captured, holder_name, with_dbname
from deployctl.journal import delta as delta_rows
from deployctl.log import log
from deployctl.playbook import Playbook
from deployctl.redact import mask_personal, redact, safe_dsn


def options(pb: Playbook, found: dict[str, Any] | None, *, on_conflict: str | None = None,
            dry_run: bool = False, reconciliation: Path | None = None,
            only: frozenset[str] = frozenset()) -> replay.Options:
    """Replay options from the playbook's `replay` and `personal` sections and the capture
    (`found`: its journal row)."""
    tables = {
        source: replay.TableMap(
            target=cfg.to,
            columns={col: ({"from": m.from_} if m.from_ is not None else {"expr": m.expr or ""})
                     for col, m in cfg.columns.items()})
        for source, cfg in pb.replay.tables.items()
    }
    return replay.Options(
        on_conflict=on_conflict or pb.replay.on_conflict,  # type: ignore[arg-type]
        side_effects=frozenset(pb.replay.side_effects), tables=tables,
        personal=frozenset(pb.personal), dry_run=dry_run, reconciliation=reconciliation,
        json_as_text=found is None or found["mode"] == "logical",
        history=History.from_capture(found), only=only)


def reconciliation_file(pb: Playbook, release_id: int) -> Path:
    return pb.workdir / "deltas" / f"{pb.app}-{release_id}-side-effects.jsonl.gz"


def info(journal: Journal, release_id: int) -> CaptureInfo | None:
    row = journal.capture(release_id)
    return CaptureInfo.from_row(row) if row else None


def require_complete(journal: Journal, release_id: int, way_out: str = "") -> None:
    row = journal.capture(release_id)
    if row is None:
        raise BadInput(f"release #{release_id} captured no delta")
    if row["status"] == "discarded":
        raise BadInput(f"the delta of release #{release_id} was discarded when the release "
                       "succeeded (capture.drain: lazy); set capture.drain: continuous to keep it")
    if row["status"] == "incomplete":
        raise StepFailed(
            f"the delta of release #{release_id} is incomplete ({row['problem']}): changes are "
            "missing, so it is not replayed silently; inspect it with `deployctl delta show`"
            + (f"; {way_out}" if way_out else ""))


def drain(journal: Journal, pb: Playbook, release_id: int, conn: psycopg.Connection[Any] | None = None,
          upto_lsn: str | None = None) -> captured.Drained | None:
    """Drain what the capture holds into the journal; a lost slot marks the delta incomplete.
    A capture no longer active may still hold collected batches to decode (a crash between)."""
    row = journal.capture(release_id)
    if row is None or row["status"] == "discarded":
        return None
    found = CaptureInfo.from_row(row)
    if row["status"] != "active":
        decode_collected(journal, release_id)
        return None
    try:
        if conn is not None:
            return capture.drain_with(conn, journal.dsn, found, upto_lsn)
        return capture.drain(pb.database.dsn, journal.dsn, found)
    except CaptureLost as exc:
        journal.set_capture(release_id, "incomplete", str(exc))
        log.error("the delta is incomplete", release=release_id, problem=str(exc))
        return None


def decode_collected(journal: Journal, release_id: int) -> None:
    """Decode what the capture collected into the journal and left undecoded; its slot is not
    read."""
    if (found := info(journal, release_id)) is not None:
        with psycopg.connect(journal.dsn, autocommit=True) as state:
            capture.decode(state, release_id, found.snapshot)


def _drain_apart(pb: Playbook, state_dsn: str, release_id: int) -> None:
    """`drain` with a journal connection of its own, for a thread beside the caller's."""
    with Journal(state_dsn) as own:
        drain(own, pb, release_id)


def discarded(journal: Journal, release_id: int) -> dict[str, Any]:
    """What `discard` will do, for the finalize step's detail."""
    row = journal.capture(release_id)
    return {"capture": "discarded", "changes_captured": 0} if row and row["status"] == "active" else {}


def discard(journal: Journal, release_id: int) -> None:
    """A release that succeeded under lazy capture: its delta is never decoded. In the journal
    transaction that records it released; `drop_discarded` drops the slot after."""
    with journal.transaction():
        if (row := journal.capture(release_id)) is None or row["status"] != "active":
            return
        delta_rows.drop_undecoded(journal, release_id)
        journal.set_capture(release_id, "discarded", "the release succeeded: with capture.drain "
                            "lazy its delta is never decoded")


def drop_discarded(journal: Journal, pb: Playbook, release_id: int) -> None:
    """The slot, publication or triggers of a discarded capture. A failure leaves them to
    `deployctl cleanup` (preflight names them)."""
    row = journal.capture(release_id)
    if row is None or row["status"] != "discarded":
        return
    try:
        capture.stop(pb.database.dsn, row["slot"])
    except psycopg.Error as exc:
        log.warning("could not drop the capture of the released version: `deployctl cleanup` "
                    "drops it", release=release_id, error=redact(str(exc).strip()))


def finish(journal: Journal, pb: Playbook, release_id: int) -> dict[str, Any]:
    """Last drain, then drop the slot, publication or triggers (wherever the database went)."""
    row = journal.capture(release_id)
    if row is None:
        started = journal.capture_objects(release_id)
        if started is None:
            return {}
        # The release ended inside its snapshot step: the capture has no starting point, the
        # database was never migrated, there is no delta to keep. Only the objects go.
        capture.stop(pb.database.dsn, started["slot"])
        journal.set_capture(release_id, "stopped", "the release ended before its snapshot")
        return {"capture": "stopped", "changes_captured": 0}
    # After a restore the capture lives on in the kept failed database.
    swapped = restore.swap_started(pb.database.dsn, release_id)
    failed = restore.names_for(pb.database.dsn, release_id).failed
    where = with_dbname(pb.database.dsn, failed) if swapped else pb.database.dsn
    if row["status"] == "active" and not swapped:
        drain(journal, pb, release_id)
    capture.stop(where, row["slot"])
    journal.set_capture(release_id, "stopped")
    return {"capture": journal.capture(release_id)["status"],  # type: ignore[index]
            "changes_captured": delta_rows.held(journal, release_id)[0]}


def restore_with_replay(journal: Journal, pb: Playbook, release_id: int, snapshot_path: Path,
                        base: str | None, pausing: AbstractContextManager[Any] | None = None
                        ) -> dict[str, Any]:
    """Rollback mode `restore`: restore beside the live database, replay, pause (inside
    `pausing`), tail, swap."""
    dsn = pb.database.dsn
    # The delta is decoded while the snapshot loads (the slot is read once more after the load,
    # past its WAL, or sooner if that goes over the budget): the pause has only the tail left.
    found = journal.capture(release_id)
    decoding = (capture.Worker(dsn, journal.dsn, CaptureInfo.from_row(found), pb.capture.interval,
                               "restore", pb.capture.max_retained_wal)
                if found and found["status"] == "active" else None)
    if decoding is not None:
        decoding.start()
    try:
        names = restore.load(dsn, snapshot_path, release_id, jobs=pb.snapshot.jobs)
    finally:
        if decoding is not None:
            decoding.stop()
            if decoding.lost:
                journal.set_capture(release_id, "incomplete", decoding.lost)
    failpoints.hit("rollback.database", "loaded")
    restored_dsn = with_dbname(dsn, names.restored)

    def opts() -> replay.Options:
        # Read after each drain: a drain can bring the migration that changed the shapes.
        return options(pb, journal.capture(release_id),
                       reconciliation=reconciliation_file(pb, release_id))

    action = f"restored the snapshot at {base or 'base'} and replayed the delta"
    if restore.swap_started(dsn, release_id):
        # Killed mid-swap: the tail was replayed before the first rename.
        return {"action": action, **restore.swap(dsn, names, pausing=pausing)}
    restore.reopen(dsn)  # killed while the live database refused connections, before the swap
    way_out = (f"to roll back without it, keep the database as it is or downgrade it: "
               f"`deployctl rollback {release_id} --database keep|downgrade`")
    decode_collected(journal, release_id)
    require_complete(journal, release_id, way_out)
    replayed_upto = delta_rows.last_stored(journal, release_id)
    # The slot is read past the load's WAL (a database's worth) while the first replay runs;
    # what that brings (users' writes on blue during the load) is replayed before the pause.
    with ThreadPoolExecutor(1, thread_name_prefix="deployctl-drain") as beside:
        catching_up = beside.submit(_drain_apart, pb, journal.dsn, release_id)
        replays = [("", replay.apply(journal.conn, release_id, restored_dsn, opts(),
                                     stored_upto=replayed_upto))]
        catching_up.result()
    if (stored := delta_rows.last_stored(journal, release_id)) > replayed_upto:
        require_complete(journal, release_id, way_out)
        replays.append(("caught up: ", replay.apply(journal.conn, release_id, restored_dsn, opts(),
                                                    stored_after=replayed_upto)))
        replayed_upto = stored

    def tail(live: psycopg.Connection[Any]) -> dict[str, Any]:
        # Every other session has exited (restore waits for them): nothing commits after this.
        upto = live.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]  # type: ignore[index]
        drain(journal, pb, release_id, conn=live, upto_lsn=upto)
        require_complete(journal, release_id, way_out)
        last = replay.apply(journal.conn, release_id, restored_dsn, opts(), stored_after=replayed_upto)
        return {"tail_changes": sum(t.changes for t in last.tables.values()), "tail": last}

    swapped = restore.swap(dsn, names, tail, pausing)
    if (last := swapped.pop("tail", None)) is not None:
        replays.append(("tail: ", last))
    reports = [r for _, r in replays]
    return {
        "action": action,
        **swapped,
        "replayed": sum(r.applied for r in reports),
        "conflicts": sum(len(r.conflicts) for r in reports),
        "side_effect_rows": sum(r.side_effect_rows for r in reports),
        "reconciliation": next((r.reconciliation for r in reports if r.reconciliation), None),
        "summary": "; ".join(label + r.summary() for label, r in replays),
        "conflict_list": conflict_list(reports),
    }


# How many conflicts the journal keeps per replay (personal columns masked): enough to act on.
CONFLICTS_KEPT = 50


def conflict_list(reports: list[replay.Report]) -> list[dict[str, Any]]:
    """The first conflicts of these replays, as the journal keeps them."""
    return [c.__dict__ for r in reports for c in r.conflicts][:CONFLICTS_KEPT]


# -- after an incident: deployctl delta show | export | replay -----------------------------------

def up_to_date(journal: Journal, pb: Playbook, release_id: int) -> None:
    """Before the delta is read: what the capture still holds, decoded into the journal. An
    unreachable database leaves the journal's part, with a warning."""
    try:
        drain(journal, pb, release_id)
    except psycopg.OperationalError as exc:
        log.warning("could not reach the database to bring the delta up to date: only what the "
                    "journal holds", release=release_id, error=redact(str(exc).strip()))


def capture_status(journal: Journal, pb: Playbook, release_id: int) -> dict[str, Any] | None:
    """The capture of a release as `deployctl status` shows it: its mode, how it drains, what
    the journal holds, and the WAL its slot holds on the server (None where unreadable)."""
    row = journal.capture(release_id)
    if row is None:
        return None
    changes, batches = delta_rows.held(journal, release_id)
    out: dict[str, Any] = {
        "mode": row["mode"], "drain": pb.capture.drain, "status": row["status"],
        "changes": changes, "undecoded_batches": batches,
        "wal_held_bytes": None, "wal_pending_bytes": None, "wal_budget_bytes": None}
    if row["status"] == "active" and row["mode"] == "logical":
        try:
            with psycopg.connect(pb.database.dsn, autocommit=True, connect_timeout=5) as app:
                wal = capture.slot_wal(app, row["slot"])
                budget = capture.wal_budget(app, pb.capture.max_retained_wal)
            out.update(wal_held_bytes=wal.held, wal_pending_bytes=wal.pending, wal_budget_bytes=budget)
        except (psycopg.Error, CaptureLost) as exc:
            out["problem"] = redact(str(exc).strip())
    return out


def show(journal: Journal, release_id: int, pb: Playbook | None = None) -> dict[str, Any]:
    journal.get(release_id)
    if pb is not None:
        up_to_date(journal, pb, release_id)
    row = journal.capture(release_id)
    if row is None:
        raise BadInput(f"release #{release_id} captured no delta (it stopped before its snapshot)")
    span = delta_rows.span(journal, release_id)
    return {
        "release_id": release_id, "mode": row["mode"], "status": row["status"],
        "problem": row["problem"], "snapshot": row["snapshot"],
        "changes": span["changes"], "transactions": span["transactions"],
        "first_change_at": span["first"], "last_change_at": span["last"],
        "excluded": {"in_snapshot": row["in_snapshot"], "migrations": row["migrations"],
                     "own_replays": row["own_writes"]},
        "tables": delta_rows.per_table(journal, release_id),
    }


def export(journal: Journal, pb: Playbook, release_id: int, path: Path) -> dict[str, Any]:
    """Write the delta as compressed JSON lines plus a manifest (both 0600)."""
    personal = frozenset(pb.personal)
    journal.get(release_id)
    up_to_date(journal, pb, release_id)
    shown = show(journal, release_id)
    rows = delta_rows.changes(journal.conn, release_id)
    masked = [_masked(r, personal) for r in rows]
    replay.write_jsonl(path, masked)
    snapshot = journal.snapshot(release_id)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest = {
        "release_id": release_id, "file": path.name, "sha256": digest,
        "changes": len(rows), "tables": shown["tables"], "capture": shown["mode"],
        "complete": shown["status"] in ("active", "stopped"), "snapshot": shown["snapshot"],
        "snapshot_lsn": snapshot["manifest"]["lsn"] if snapshot else None,
        "schema_revision": snapshot["manifest"]["alembic_revision"] if snapshot else None,
        "first_position": rows[0]["pos"] if rows else None,
        "last_position": rows[-1]["pos"] if rows else None,
        "masked_columns": sorted(personal),
    }
    manifest_path = path.with_name(path.name.removesuffix(".jsonl.gz") + ".manifest.json")
    write_private(manifest_path, json.dumps(manifest, indent=2, default=str).encode())
    return {**manifest, "manifest": str(manifest_path), "path": str(path)}


def _masked(row: dict[str, Any], personal: frozenset[str]) -> dict[str, Any]:
    out = dict(row)
    for part in ("key", "new", "old"):
        if out.get(part):
            out[part] = mask_personal(row["table_name"], out[part], personal)
    return out


def replay_into(journal: Journal, pb: Playbook, release_id: int, target_dsn: str, *,
                on_conflict: str | None, dry_run: bool, allow_incomplete: bool,
                tables: frozenset[str] = frozenset()) -> replay.Report:
    """`deployctl delta replay`: the delta (or the changes of `tables`) into `target_dsn`."""
    journal.get(release_id)
    up_to_date(journal, pb, release_id)
    if not allow_incomplete:
        require_complete(journal, release_id)
    if tables:
        _refuse_replaying_again(journal, release_id, target_dsn, tables)
    opts = options(pb, journal.capture(release_id), on_conflict=on_conflict, dry_run=dry_run,
                   reconciliation=reconciliation_file(pb, release_id), only=tables)
    try:
        report = replay.apply(journal.conn, release_id, target_dsn, opts)
    except replay.ReplayConflict as exc:
        if not dry_run:
            _record_replay(journal, release_id, target_dsn, opts, exc.report, str(exc))
        raise
    if not dry_run:
        _record_replay(journal, release_id, target_dsn, opts, report, None)
    return report


def _refuse_replaying_again(journal: Journal, release_id: int, target_dsn: str,
                            tables: frozenset[str]) -> None:
    """A table replayed on its own once must not be replayed again into the same database:
    rows its users deleted since would come back."""
    into = safe_dsn(target_dsn)
    for event in journal.events(release_id):
        detail = event["detail"]
        if event["step"] != "delta.replay" or detail.get("into") != into or detail.get("error"):
            continue
        again = tables & set(detail.get("tables") or ())
        if again:
            raise BadInput(
                f"{', '.join(sorted(again))} was replayed into {into} at {event['at']:%Y-%m-%d %H:%M:%S %Z}: "
                "replaying it again could bring back rows deleted since; nothing was done "
                "(`deployctl report` lists what that replay wrote)")


def _record_replay(journal: Journal, release_id: int, target_dsn: str, opts: replay.Options,
                   report: replay.Report, error: str | None) -> None:
    """A replay after the release is part of its story: the journal keeps it for the report."""
    journal.event(release_id, "delta.replay", "info", redact({
        "by": holder_name(), "into": safe_dsn(target_dsn), "on_conflict": opts.on_conflict,
        "tables": sorted(opts.only) or None,
        "applied": report.applied, "conflicts": len(report.conflicts),
        "side_effect_rows": report.side_effect_rows, "reconciliation": report.reconciliation,
        "summary": report.summary(), "conflict_list": conflict_list([report]),
        **({"error": error} if error else {})}))

