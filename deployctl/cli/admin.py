"""Commands that keep an application tidy: lock (a deliberate freeze) and cleanup."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import click
import psycopg

from deployctl import engine, playbook
from deployctl.cli.base import app_of, emit, handled, json_option, main, state_dsn_of, with_state
from deployctl.db import capture, restore
from deployctl.errors import EXIT_OK, BadInput
from deployctl.journal import Journal, frozen_text
from deployctl.log import log


@main.group()
def lock() -> None:
    """Freeze an application's releases on purpose (who and why shown to anyone refused)."""


def _lock_target(app: str | None, pb_path: str | None, state_dsn: str | None) -> tuple[str, str]:
    name = app_of(pb_path, app)
    if name is None:
        raise BadInput("name the application: --app NAME or --playbook FILE")
    return state_dsn_of(pb_path, state_dsn), name


def _freeze_text(name: str, freeze: dict[str, Any] | None) -> str:
    return f"{name}: locked {frozen_text(freeze)}" if freeze else f"{name}: not locked"


@lock.command("status")
@click.option("--app", help="Application name (default: the playbook's).")
@with_state
@json_option
@handled
def lock_status(app: str | None, pb_path: str | None, state_dsn: str | None, as_json: bool) -> int:
    """Whether the application is locked, by whom, since when and why."""
    state, name = _lock_target(app, pb_path, state_dsn)
    with Journal(state) as journal:
        freeze = journal.frozen(name)
    emit({"app": name, "locked": freeze is not None, "lock": freeze}, as_json,
          lambda: _freeze_text(name, freeze))
    return EXIT_OK


@lock.command("acquire")
@click.option("-m", "--message", required=True, help="Why: shown to whoever is refused.")
@click.option("--app", help="Application name (default: the playbook's).")
@with_state
@json_option
@handled
def lock_acquire(message: str, app: str | None, pb_path: str | None, state_dsn: str | None,
                 as_json: bool) -> int:
    """Lock the application: no release of it starts until `deployctl lock release` (one that
    runs goes on; `resume` and `rollback` still work). Exit 4 if it is locked already."""
    if not message.strip():
        raise BadInput("--message: say why the application is locked")
    state, name = _lock_target(app, pb_path, state_dsn)
    with Journal(state) as journal:
        freeze = journal.freeze(name, message.strip())
    emit({"app": name, "locked": True, "lock": freeze}, as_json, lambda: _freeze_text(name, freeze))
    return EXIT_OK


@lock.command("release")
@click.option("--app", help="Application name (default: the playbook's).")
@with_state
@json_option
@handled
def lock_release(app: str | None, pb_path: str | None, state_dsn: str | None, as_json: bool) -> int:
    """Lift the application's lock (nothing to do if it is not locked)."""
    state, name = _lock_target(app, pb_path, state_dsn)
    with Journal(state) as journal:
        lifted = journal.unfreeze(name)
    emit({"app": name, "locked": False, "lifted": lifted}, as_json,
          lambda: f"{name}: lock released ({frozen_text(lifted)})" if lifted else f"{name}: was not locked")
    return EXIT_OK


@main.command()
@click.option("-p", "--playbook", "pb_path", required=True, type=click.Path(dir_okay=False),
              envvar="DEPLOYCTL_PLAYBOOK", help="Playbook of the application to clean up.")
@click.option("--failed-databases", is_flag=True,
              help="Also drop the databases rollbacks kept (<db>_failed_N) or left (<db>_restore_N) "
                   "for releases that ended longer ago than --older-than.")
@click.option("--older-than", default="7d", show_default=True, metavar="DURATION",
              help="With --failed-databases: how long ago the release ended (30m, 12h, 7d).")
@json_option
@handled
def cleanup(pb_path: str, failed_databases: bool, older_than: str, as_json: bool) -> int:
    """Drop replication slots, publications and capture triggers left by finished releases."""
    try:
        age = timedelta(seconds=playbook.parse_duration(older_than, limit=None))
    except (ValueError, OverflowError) as exc:
        raise BadInput(f"--older-than: {exc}") from None
    pb = playbook.load(pb_path)
    with Journal(engine.state_dsn(pb)) as journal:
        unfinished = journal.open_release(pb.app)
        keep = {capture.object_name(pb.app, unfinished.id)} if unfinished else set()
        with psycopg.connect(pb.database.dsn, autocommit=True) as conn:
            dropped = capture.cleanup(conn, pb.app, keep)
        if failed_databases:
            dropped += _drop_old_copies(journal, pb, datetime.now(UTC) - age)
    emit({"dropped": dropped}, as_json,
          lambda: "\n".join(f"dropped {d}" for d in dropped) or "nothing to clean up")
    return EXIT_OK


def _drop_old_copies(journal: Journal, pb: playbook.Playbook, before: datetime) -> list[str]:
    """The kept copies of `pb`'s database whose release ended before `before`."""
    dropped = []
    for name, release_id in restore.kept_copies(pb.database.dsn):
        found = journal.find(release_id)
        if found is None or found.app != pb.app or found.open or (
                found.finished_at is None or found.finished_at > before):
            continue
        try:
            restore.drop_copy(pb.database.dsn, name)
        except psycopg.Error as exc:  # someone is looking at it: keep it, say so, go on
            log.warning("kept a database rollback left: it is in use", database=name,
                        problem=str(exc).strip().splitlines()[0])
            continue
        dropped.append(f"database {name} (release #{release_id}, ended "
                       f"{found.finished_at:%Y-%m-%d %H:%M})")
    return dropped
