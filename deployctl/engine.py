"""The release as a state machine of idempotent steps, recorded in the journal.

Every step writes `started` before it acts and `done` (or `failed`) after, so the journal always
tells how far a release got. `release` starts one, `resume` continues one whose process died,
`rollback` undoes one from whatever step it reached. A failure anywhere forward rolls back on
its own: old version serving, green stopped, database back to what blue runs on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from deployctl import capture_keeper, delta, failpoints, report
from deployctl.cohorts import Aborted, GateBreach, Operator
from deployctl.db import capture, restore
from deployctl.errors import (
    EXIT_ROLLBACK_FAILED,
    STATUS_EXIT_CODES,
    BadInput,
    DeployctlError,
    LockHeld,
    LockLost,
    RollbackFailed,
)
from deployctl.fleet import routers, versions
from deployctl.journal import RECONNECT_S, Journal, default_state_dsn, frozen_text
from deployctl.log import log
from deployctl.notify import Notifier
from deployctl.playbook import Playbook, parse
from deployctl.redact import redact
from deployctl.steps import Outcome, Refused, Run, forward, traffic_to_blue
from deployctl.steps import rollback as rollback_steps


@dataclass
class Result:
    release_id: int
    app: str
    version: str
    status: str
    reason: str | None
    steps: list[dict[str, Any]] = field(default_factory=list)
    report: str | None = None    # the HTML report written as the release ended

    @property
    def exit_code(self) -> int:
        return STATUS_EXIT_CODES.get(self.status, EXIT_ROLLBACK_FAILED)


def state_dsn(pb: Playbook) -> str:
    return pb.database.state_dsn or default_state_dsn(pb.database.dsn)


def plan(pb: Playbook) -> list[str]:
    """The steps `release` would run for this playbook, and what rollback would do."""
    return [name for name, _ in forward(pb)] + [
        f"on failure: {name} (database: {pb.database.rollback})" if name == "rollback.database"
        else f"on failure: {name}" for name, _ in rollback_steps(pb)
    ]


def run_step(run: Run, name: str, action: Callable[[Run], Outcome]) -> None:
    """Run one step unless the journal says it is done; raise if it fails."""
    journal, rid = run.journal, run.release_id
    if journal.step_phase(rid, name) == "done":
        log.info("step already done", step=name, release=rid)
        return
    journal.event(rid, name, "started")
    log.info("step started", step=name, release=rid)
    failpoints.hit(name, "started")
    started = time.monotonic()
    try:
        outcome = action(run)
    except BaseException as exc:
        seconds = round(time.monotonic() - started, 3)
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
        journal.event(rid, name, "failed", {"error": redact(reason), "duration_s": seconds})
        log.error("step failed", step=name, release=rid, duration_s=seconds, error=reason)
        raise
    failpoints.hit(name, "acted")
    seconds = round(time.monotonic() - started, 3)
    with journal.transaction():
        if outcome.record is not None:
            outcome.record(journal)
        journal.event(rid, name, "done", {**redact(outcome.detail), "duration_s": seconds})
    log.info("step done", step=name, release=rid, duration_s=seconds, **outcome.detail)


class _CaptureWorker:
    """Drains the capture in the background between the snapshot and the end of the release."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.worker: capture.Worker | None = None

    def ensure(self) -> None:
        row = self.run.journal.capture(self.run.release_id)
        if self.worker is None and row and row["status"] == "active":
            cfg = self.run.pb.capture
            self.worker = capture.Worker(self.run.pb.database.dsn, self.run.journal.dsn,
                                         capture.CaptureInfo.from_row(row), cfg.interval,
                                         cfg.drain, cfg.max_retained_wal)
            self.worker.start()

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            if self.worker.lost:
                self.run.journal.set_capture(self.run.release_id, "incomplete", self.worker.lost)
            self.worker = None

    def ask_to_stop(self) -> None:
        """No new drain; the one in progress may take its time: users do not wait for it."""
        if self.worker is not None:
            self.worker.ask_to_stop()


def _forward(run: Run) -> str:
    worker = _CaptureWorker(run)
    operator = Operator(run.journal, run.release_id)
    try:
        for name, action in forward(run.pb):
            # Requests from other terminals are heard between steps too, not only in cohorts.
            command = operator.take()
            if command == "pause":
                command = operator.hold(f"paused by an operator before {name}", run.pb.gates.max_pause)
            if command in ("abort", "rollback"):
                worker.ask_to_stop()
                reason = f"{command} requested by an operator before {name}"
                return _abort(run, reason, worker.stop) if command == "abort" and run.pb.router else (
                    _rollback(run, reason, worker.stop, "operator"))
            if name == "finalize":
                worker.stop()  # finalize keeps (or discards) the rest itself
            try:
                run_step(run, name, action)
            except Refused as exc:
                run.journal.set_status(run.release_id, "refused", f"preflight: {exc}")
                return "refused"
            except LockLost:
                raise
            except Aborted as exc:
                worker.ask_to_stop()
                return _abort(run, redact(str(exc)), worker.stop)
            except (Exception, KeyboardInterrupt) as exc:
                # Traffic first: blue and the router do not wait for a drain in progress.
                worker.ask_to_stop()
                reason = f"{name} failed: {'interrupted' if isinstance(exc, KeyboardInterrupt) else exc}"
                if isinstance(exc, GateBreach):
                    run.tell("breach", redact(reason), step=name)
                ended_by = getattr(exc, "ended_by", "step_failed")
                return _rollback(run, redact(reason), worker.stop, ended_by)
            if name != "finalize":
                worker.ensure()
    finally:
        worker.stop()
    delta.drop_discarded(run.journal, run.pb, run.release_id)
    return "released"


def _abort(run: Run, reason: str, capture_stopped: Callable[[], None] | None = None) -> str:
    """Users back on blue now; green, the migrated database and the capture stay for a look,
    until `deployctl rollback` finishes the job."""
    # The status first: killed before users are back on blue, `resume` must not go forward.
    run.journal.set_status(run.release_id, "aborted", reason, "operator")
    try:
        run_step(run, "rollback.traffic", traffic_to_blue)
    except LockLost:
        raise
    except Exception as exc:
        return _rollback(run, f"{reason}; then moving traffic to blue failed: {exc}", capture_stopped,
                         "operator")
    run.tell("rollback", f"aborted, every user back on blue: {reason}")
    found = run.journal.capture(run.release_id)
    keeper = (capture_keeper.spawn(run.pb, run.journal.dsn, run.release_id)
              if found and found["status"] == "active" and found["mode"] == "logical" else None)
    log.warning("release aborted: users are on blue; green and the capture are kept",
                release=run.release_id, next=f"deployctl rollback {run.release_id}",
                **({"capture_keeper_pid": keeper} if keeper else {}))
    return "aborted"


def _rollback(run: Run, reason: str, capture_stopped: Callable[[], None] | None = None,
              ended_by: str = "step_failed") -> str:
    """The rollback steps; `capture_stopped` waits for the capture worker, before the database
    step (the restore drains the capture itself), not before users are back on blue."""
    run.journal.set_status(run.release_id, "rolling_back", reason, ended_by)
    log.warning("rolling back", release=run.release_id, reason=reason)
    run.tell("rollback", f"rolling back: {reason}")
    for name, action in rollback_steps(run.pb):
        if name == "rollback.database" and capture_stopped is not None:
            capture_stopped()
        try:
            run_step(run, name, action)
        except LockLost:
            raise
        except Exception as exc:
            run.journal.set_status(run.release_id, "rollback_failed",
                                   redact(f"{reason}; then {name} failed: {exc}"))
            log.error("rollback failed: a human is needed", release=run.release_id,
                      step=name, next=f"fix the cause, then `deployctl rollback {run.release_id}`")
            return "rollback_failed"
    run.journal.set_status(run.release_id, "rolled_back")
    return "rolled_back"


# What a step's summary line carries from its journal detail (the rest is in `deployctl status`).
SUMMARY_FIELDS = ("duration_s", "error", "action", "pause_ms", "replayed", "conflicts",
                  "side_effect_rows", "changes_captured", "capture")


def summarize(journal: Journal, release_id: int) -> Result:
    release = journal.get(release_id)
    steps: dict[str, dict[str, Any]] = {}
    for event in journal.events(release_id):
        if event["phase"] == "info":
            continue
        entry = steps.setdefault(event["step"], {"step": event["step"]})
        entry["outcome"] = event["phase"]
        entry.update({k: v for k, v in event["detail"].items() if k in SUMMARY_FIELDS})
    return Result(release.id, release.app, release.version, release.status, release.reason,
                  list(steps.values()))


def release(pb: Playbook, *, unattended: bool = False) -> Result:
    """Release `pb.version` of `pb.app`: run every step, roll back on any failure.
    `unattended`: nobody answers a pause (`--yes`; CI=true is read by the cohort steps)."""
    with Journal(state_dsn(pb)) as journal:
        journal.acquire(pb.app, pb.version)
        try:
            if freeze := journal.frozen(pb.app):  # checked under the release lock: no race
                raise LockHeld(f"{pb.app} is locked {frozen_text(freeze)}; `deployctl lock release "
                               f"-p {pb.source_path}` lifts it")
            live = journal.live(pb.app)
            if live and live["live_version"] == pb.version:
                raise BadInput(f"{pb.source_path}: version: {pb.version} is already live; "
                               "set the version you want to release")
            rid = journal.create_release(
                app=pb.app, version=pb.version, from_version=live["live_version"] if live else None,
                playbook_path=str(pb.source_path.resolve()), playbook_text=pb.source_text,
                playbook_sha256=pb.sha256,
            )
            journal.attach_lock(pb.app, rid)
            log.info("release started", release=rid, app=pb.app, version=pb.version,
                     from_version=live["live_version"] if live else None)
            with _notifying(pb, rid) as notifier, _blue_if_the_journal_is_lost(pb, rid):
                notifier.send("start", f"release started (from version "
                                       f"{live['live_version'] if live else 'none'})")
                _forward(Run(pb, journal, rid, notifier, unattended))
                return _ended(journal, rid, notifier)
        finally:
            journal.release_lock(pb.app)


@contextmanager
def _blue_if_the_journal_is_lost(pb: Playbook, release_id: int) -> Iterator[None]:
    """The state database stayed away longer than the journal waits (steps fail on their own
    databases inside _forward and _rollback; what reaches here is the journal): nothing can be
    recorded, so users go to blue and green stops without it, and a human finishes the job."""
    try:
        yield
    except psycopg.OperationalError as exc:
        done = []
        try:
            if pb.router is not None:
                routers.get(pb.router, pb.app).apply(routers.Split())
                done.append("every user is on blue")
            versions.stop(pb, pb.workdir)
            done.append("green is stopped")
        except Exception as again:  # noqa: BLE001 - said in the one line below
            done.append(f"then {again}")
        raise RollbackFailed(redact(
            f"the state database stayed away for {RECONNECT_S:g} s ({str(exc).strip().splitlines()[0]}): "
            f"{'; '.join(done)}; once it answers, `deployctl rollback {release_id}` finishes the "
            "rollback")) from None


@contextmanager
def _notifying(pb: Playbook, release_id: int) -> Iterator[Notifier]:
    notifier = Notifier(pb, release_id)
    try:
        yield notifier
    finally:
        notifier.close()


def _ended(journal: Journal, release_id: int, notifier: Notifier) -> Result:
    result = summarize(journal, release_id)
    saved = report.save(journal, release_id, notifier.pb.workdir)
    result.report = str(saved) if saved else None
    notifier.send("end", result.status.replace("_", " ") + (f": {result.reason}" if result.reason else "")
                  + (f" (report: {saved})" if saved else ""),
                  status=result.status, exit_code=result.exit_code, report=result.report)
    return result


def _continue(state: str, release_id: int, action: str, database: str | None = None,
              unattended: bool = False) -> Result:
    with Journal(state) as journal:
        found = journal.get(release_id)
        if not found.open:
            raise BadInput(f"release #{release_id} is already {found.status}: nothing to {action}")
        pb = parse(found.playbook_text, Path(found.playbook_path), stored=True)
        if database is not None:
            # The operator's choice for this rollback, instead of the playbook's database.rollback.
            pb = pb.model_copy(update={"database": pb.database.model_copy(update={"rollback": database})})
        journal.acquire(pb.app, pb.version, release_id)
        try:
            notifier = Notifier(pb, release_id)
            with _blue_if_the_journal_is_lost(pb, release_id):
                run = Run(pb, journal, release_id, notifier, unattended)
                found = journal.get(release_id)  # it may have moved on while we waited
                if not found.open:
                    raise BadInput(f"release #{release_id} is already {found.status}")
                if found.status in ("rolling_back", "rollback_failed"):
                    fixed = restore.finish_interrupted_swap(pb.database.dsn, release_id)
                    if fixed:
                        log.warning("finished a swap a killed rollback left halfway", found=fixed,
                                    release=release_id)
                        if pb.router is not None:  # the swap ran in maintenance mode: end it
                            routers.get(pb.router, pb.app).apply(routers.Split())
                if action == "resume" and found.status == "aborted":
                    raise BadInput(f"release #{release_id} was aborted: finish it with "
                                   f"`deployctl rollback {release_id}`")
                if action == "resume" and found.status == "running":
                    log.info("resuming release", release=release_id)
                    _forward(run)
                else:
                    if database is not None:
                        journal.event(release_id, "rollback.database", "info",
                                      {"mode": database, "chosen_by": "operator"})
                    _rollback(run, found.reason if found.status != "running" and found.reason
                              else _process_gone(journal, release_id) + "; rolled back by operator",
                              ended_by=found.ended_by or "operator")
                return _ended(journal, release_id, notifier)
        finally:
            notifier.close()
            journal.release_lock(pb.app)


def interrupted_swap(journal: Journal, release_id: int) -> str | None:
    """What a rollback killed in the middle of its swap left, for `status` (None when nothing,
    or when the application database cannot be asked)."""
    found = journal.get(release_id)
    if found.status not in ("rolling_back", "rollback_failed"):
        return None
    try:
        pb = parse(found.playbook_text, Path(found.playbook_path), stored=True)
        return restore.interrupted_swap(pb.database.dsn, release_id)
    except (DeployctlError, psycopg.Error):
        return None


def _process_gone(journal: Journal, release_id: int) -> str:
    """How a release left `running` with no process behind it ended."""
    steps = [e["step"] for e in journal.events(release_id) if e["phase"] != "info"]
    return f"the deployctl process running it died during {steps[-1]}" if steps else (
        "the deployctl process running it died before its first step")


def running_elsewhere(state: str, release_id: int) -> bool:
    """Whether a live deployctl process is running this release forward (it takes requests)."""
    with Journal(state) as journal:
        found = journal.get(release_id)
        if found.status != "running":
            return False
        lock = journal.lock_holder(found.app)
        return bool(lock["alive"] and lock.get("release_id") == release_id)


def request(state: str, release_id: int, command: str) -> str:
    """Leave `command` for the process running the release; returns who holds it."""
    with Journal(state) as journal:
        found = journal.get(release_id)
        lock = journal.lock_holder(found.app)
        if found.status != "running" or not lock["alive"] or lock.get("release_id") != release_id:
            raise BadInput(f"no deployctl process is running release #{release_id} ({found.status}): "
                           f"nothing to {command}; see `deployctl status {release_id}`")
        journal.request(release_id, command)
        return str(lock["holder"])


def resume(state: str, release_id: int, *, unattended: bool = False) -> Result:
    """Continue a release whose process died: forward if it was going forward, else back."""
    return _continue(state, release_id, "resume", unattended=unattended)


def rollback(state: str, release_id: int, database: str | None = None) -> Result:
    """Undo a release from whatever step it reached; `database` (keep, downgrade or restore)
    instead of the playbook's `database.rollback`."""
    return _continue(state, release_id, "rollback", database)


def find_open(state: str, app: str | None) -> int:
    """The unfinished release to resume or roll back when none is named."""
    with Journal(state) as journal:
        latest = journal.latest(app)
        if latest is None or not latest.open:
            raise BadInput("no unfinished release" + (f" of {app}" if app else "") +
                           ": name one (see `deployctl history`)")
        return latest.id
