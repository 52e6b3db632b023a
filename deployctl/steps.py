"""The release's steps, forward and back. Each is idempotent: safe to run again after a crash.

A step returns what the journal should remember of it (its `done` detail) and, where it has a
journal-side effect, a function the engine runs in the same transaction as the `done` event.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from deployctl import cohorts, delta, failpoints, files
from deployctl.db import capture, restore, snapshot
from deployctl.db.migrate import Alembic
from deployctl.errors import BadInput, StepFailed
from deployctl.fleet import routers, versions
from deployctl.gates import smoke as smoke_checks
from deployctl.gates.watch import Watch, baselines
from deployctl.journal import Journal
from deployctl.log import log
from deployctl.notify import Notifier
from deployctl.playbook import Playbook, parse
from deployctl.preflight import Check
from deployctl.preflight import run as preflight_checks
from deployctl.redact import redact


class Refused(BadInput):
    """Preflight found a reason not to start; nothing was touched."""


@dataclass
class Run:
    """Everything a step needs: the playbook, the journal and the release."""

    pb: Playbook
    journal: Journal
    release_id: int
    notifier: Notifier | None = None
    unattended: bool = False  # nobody answers a pause (`deployctl --yes`)

    def tell(self, event: str, text: str, **fields: Any) -> None:
        """Let the playbook's webhooks know (never fails the release)."""
        if self.notifier is not None:
            self.notifier.send(event, text, **fields)

    @property
    def alembic(self) -> Alembic:
        db = self.pb.database
        return Alembic(self.pb.migrations.alembic_ini, db.dsn, self.pb.migrations.url_env,
                       db.lock_timeout, db.statement_timeout)

    @property
    def snapshot_dir(self) -> Path:
        # The start time keeps two state databases' release #1 from sharing a folder.
        started = self.journal.get(self.release_id).started_at
        return self.pb.workdir / "snapshots" / f"{self.pb.app}-{self.release_id}-{started:%Y%m%dT%H%M%S}"

    @property
    def router(self) -> routers.Router:
        assert self.pb.router is not None
        return routers.get(self.pb.router, self.pb.app)

    def live_playbook(self) -> Playbook | None:
        """The playbook of the version users are on now (blue), if deployctl released it."""
        live = self.journal.live(self.pb.app)
        if live is None or live["release_id"] is None:
            return None
        release = self.journal.get(live["release_id"])
        return parse(release.playbook_text, Path(release.playbook_path), stored=True)


@dataclass
class Outcome:
    detail: dict[str, Any] = field(default_factory=dict)
    record: Callable[[Journal], None] | None = None


# -- forward -------------------------------------------------------------------------------

def preflight(run: Run) -> Outcome:
    checks = preflight_checks(run.pb, run.alembic, run.release_id)
    blue = run.live_playbook()
    if run.pb.router is not None and blue is not None and not blue.deploy.endpoints:
        # Rollback must be able to point blue's backend at the live version again.
        checks.append(Check("router", "fail", f"the live version {blue.version} was released without "
                            "deploy.endpoints: deployctl could not send users back to it; release it "
                            "again with deploy.endpoints and the router first"))
    failed = [c for c in checks if c.status == "fail"]
    detail = {"checks": [c.as_dict() for c in checks]}
    if failed:
        raise Refused("; ".join(f"{c.name}: {c.message}" for c in failed))
    return Outcome(detail)


def take_snapshot(run: Run) -> Outcome:
    """Start the capture (slot first), then dump on an exported snapshot: one exact point."""
    dsn, name = run.pb.database.dsn, capture.object_name(run.pb.app, run.release_id)
    files.private_dir(run.pb.workdir)  # snapshots, deltas, pidfiles: user data and command lines
    with psycopg.connect(dsn) as conn:
        mode = capture.capture_mode(conn, run.pb.capture.mode)
    run.journal.record_capture_objects(run.release_id, mode, name)
    capture.start(dsn, mode, name, run.pb.capture.schemas)
    failpoints.hit("snapshot", "capturing")
    manifest = snapshot.take(dsn, run.snapshot_dir, jobs=run.pb.snapshot.jobs)
    path = str(run.snapshot_dir)

    def record(journal: Journal) -> None:
        journal.record_snapshot(run.release_id, path, manifest)
        journal.record_capture(run.release_id, mode, name, manifest["snapshot"],
                               manifest["alembic_revision"])

    return Outcome(
        {"path": path, "bytes": manifest["bytes"], "files": len(manifest["files"]),
         "revision": manifest["alembic_revision"], "lsn": manifest["lsn"], "capture": mode},
        record,
    )


def migrate(run: Run) -> Outcome:
    alembic = run.alembic
    target = alembic.resolve(run.pb.migrations.target)
    before = alembic.current()
    if before != target:
        alembic.upgrade(target or "base", retries=run.pb.database.lock_retries)
    found = run.journal.capture(run.release_id)
    cared = capture.after_migration(run.pb.database.dsn, found["mode"], run.pb.capture.schemas) if (
        found) else []
    return Outcome({"from_revision": before, "to_revision": alembic.current(),
                    **({"capture_added": cared} if cared else {})})


def deploy(run: Run) -> Outcome:
    return Outcome(versions.start(run.pb, run.pb.workdir))


def smoke(run: Run) -> Outcome:
    results = [smoke_checks.run(check, run.pb.database.dsn) for check in run.pb.smoke]
    detail = {"checks": [r.__dict__ for r in results]}
    failed = [r for r in results if not r.ok]
    if failed:
        raise StepFailed("; ".join(f"{r.name}: {r.detail}" for r in failed))
    return Outcome(detail)


def route(run: Run) -> Outcome:
    """The router sends green's backend to the new version; no user is on it yet."""
    router = run.router
    blue = run.live_playbook()
    if blue is not None and blue.deploy.endpoints:
        router.point(routers.BLUE, routers.endpoints(blue))
    router.point(routers.GREEN, routers.endpoints(run.pb))
    router.apply(routers.Split())
    started = run.journal.get(run.release_id).started_at
    return Outcome({"green": [f"{e.host}:{e.port}" for e in routers.endpoints(run.pb)],
                    "baselines": baselines(run.pb.gates, run.pb.database.dsn, started)})


def cohort(index: int) -> Callable[[Run], Outcome]:
    """The step that holds cohort `index` (see deployctl/cohorts.py)."""
    def step(run: Run) -> Outcome:
        name = f"cohort.{run.pb.cohorts[index].name}"
        router = run.router
        split = cohorts.split_for(run.pb, index)
        router.apply(split)
        run.journal.event(run.release_id, name, "info", {"split": {"allow": len(split.allow),
                                                                    "percent": split.percent},
                                                          "hold_s": run.pb.cohorts[index].hold})
        run.tell("cohort", f"{name}: {split.percent}% of users and {len(split.allow)} allow-listed on "
                           f"version {run.pb.version}", step=name, percent=split.percent,
                 allow=len(split.allow))
        started = run.journal.get(run.release_id).started_at
        live = run.journal.live(run.pb.app)
        watch = Watch(run.pb.gates, router, run.pb.database.dsn, started,
                      run.journal.step_detail(run.release_id, "route").get("baselines", {}),
                      (run.pb.version, live["live_version"] if live else None))

        def record(reading: dict[str, Any]) -> None:
            run.journal.event(run.release_id, name, "info", redact(reading))
            for check in reading["checks"]:  # as it is taken: value, threshold, against blue
                log.info("gate reading", cohort=reading["cohort"], gate=check["name"],
                         verdict=check["status"], detail=redact(check["detail"]), value=check["value"])

        operator = cohorts.Operator(run.journal, run.release_id, name, run.tell)
        detail = cohorts.run_step(run.pb, index, watch, operator, record, run.unattended)
        return Outcome({**detail, "percent": split.percent, "allow": len(split.allow)})
    return step


def finalize(run: Run) -> Outcome:
    blue = run.live_playbook()
    stopped = None
    if run.pb.router is not None:
        # Blue's backend takes the new version before the split goes back to nobody on green:
        # no request reaches the old version after this.
        router = run.router
        router.point(routers.BLUE, routers.endpoints(run.pb))
        router.apply(routers.Split())
    live = versions.make_live(run.pb)
    if blue is not None and blue.version != run.pb.version and versions.stop(blue, run.pb.workdir):
        stopped = blue.version

    # Lazy capture: the delta of a release that succeeds is never needed. It is discarded with
    # the release's `done` (until then a rollback still has it whole); the slot goes after.
    lazy = run.pb.capture.drain == "lazy"
    captured = delta.discarded(run.journal, run.release_id) if lazy else delta.finish(
        run.journal, run.pb, run.release_id)

    def record(journal: Journal) -> None:
        journal.set_live(run.pb.app, run.pb.version, run.release_id)
        journal.set_status(run.release_id, "released")
        if lazy:
            delta.discard(journal, run.release_id)

    return Outcome({"live_version": run.pb.version, "stopped_version": stopped, **live, **captured}, record)


Steps = list[tuple[str, Callable[[Run], Outcome]]]


def forward(pb: Playbook) -> Steps:
    """The release's steps for this playbook: with a router, users move in cohorts."""
    traffic: Steps = [("route", route)] + [
        (f"cohort.{step.name}", cohort(i)) for i, step in enumerate(pb.cohorts)] if pb.router else []
    return [("preflight", preflight), ("snapshot", take_snapshot), ("migrate", migrate),
            ("deploy", deploy), ("smoke", smoke), *traffic, ("finalize", finalize)]


# -- rollback ------------------------------------------------------------------------------

def blue_serving(run: Run) -> Outcome:
    """Make sure the old version serves (finalize may have stopped it before a crash)."""
    blue = run.live_playbook()
    if blue is None or blue.version == run.pb.version:
        return Outcome({"blue": None})
    running = versions.ensure_running(blue, run.pb.workdir)
    # Finalize may have switched `current` to green before it failed: back to blue's release.
    return Outcome({"blue": blue.version, **running, **versions.make_live(blue)})


def traffic_to_blue(run: Run) -> Outcome:
    """Every user back on the old version: its servers behind blue, nobody on green."""
    started = time.monotonic()
    router = run.router
    blue = run.live_playbook()
    if blue is not None and blue.deploy.endpoints:
        router.point(routers.BLUE, routers.endpoints(blue))
    router.apply(routers.Split())
    return Outcome({"switched_s": round(time.monotonic() - started, 3)})


def stop_green(run: Run) -> Outcome:
    return Outcome({"stopped": versions.stop(run.pb, run.pb.workdir)})


def database(run: Run) -> Outcome:
    mode = run.pb.database.rollback
    if run.journal.step_phase(run.release_id, "migrate") is None:
        return Outcome({"mode": mode, "action": "none: the migration never started"})
    recorded = run.journal.snapshot(run.release_id)
    if recorded is None:
        raise StepFailed("the release migrated but has no snapshot in the journal")
    base = recorded["manifest"]["alembic_revision"]
    dsn = run.pb.database.dsn
    if mode == "restore" and restore.in_progress(dsn, run.release_id):
        # A crash mid-swap can leave no database under the live name: finish the swap first.
        return _restore(run, Path(recorded["path"]), base)
    if mode != "restore":
        restore.drop_unswapped(dsn, run.release_id)  # loaded for a restore the operator overrode
    alembic = run.alembic
    current = alembic.current()
    if current == base:
        return Outcome({"mode": mode, "action": f"none: the database is still at {base or 'base'}"})
    if mode == "keep":
        return Outcome({"mode": mode, "action": f"kept at {current}: the migration is expand-only"})
    if mode == "downgrade":
        alembic.downgrade(base, retries=run.pb.database.lock_retries)
        return Outcome({"mode": mode, "action": f"downgraded {current} → {base or 'base'}"})
    return _restore(run, Path(recorded["path"]), base)


def _restore(run: Run, snapshot_path: Path, base: str | None) -> Outcome:
    return Outcome({"mode": "restore", **delta.restore_with_replay(
        run.journal, run.pb, run.release_id, snapshot_path, base,
        _maintenance(run.router) if run.pb.router else None)})


@contextmanager
def _maintenance(router: routers.Router) -> Iterator[None]:
    """Users get 503 with Retry-After while the databases swap, then everyone is on blue."""
    router.apply(routers.Split(maintenance=True))
    try:
        yield
    finally:
        router.apply(routers.Split())


def stop_capture(run: Run) -> Outcome:
    """The last drain, then the slot, publication or triggers go; the delta stays."""
    return Outcome(delta.finish(run.journal, run.pb, run.release_id))


def rollback(pb: Playbook) -> Steps:
    """Undoing a release: blue serving, users on it, green stopped, database and capture."""
    traffic: Steps = [("rollback.traffic", traffic_to_blue)] if pb.router else []
    return [("rollback.blue", blue_serving), *traffic, ("rollback.green", stop_green),
            ("rollback.database", database), ("rollback.capture", stop_capture)]
