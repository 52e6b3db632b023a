"""Commands that run or steer a release: release, plan, resume, rollback, and the requests
to a running one (pause, promote, abort)."""

from __future__ import annotations

import click

from deployctl import engine, playbook
from deployctl.cli.base import (
    app_of,
    confirm,
    emit,
    finish,
    handled,
    json_option,
    main,
    result_text,
    state_dsn_of,
    unattended,
    with_state,
)
from deployctl.errors import EXIT_OK, BadInput


@main.command()
@click.argument("playbook_path", metavar="PLAYBOOK", type=click.Path(dir_okay=False))
@json_option
@handled
def release(playbook_path: str, as_json: bool) -> int:
    """Release the version in PLAYBOOK; roll back on its own if any step fails."""
    return finish(engine.release(playbook.load(playbook_path), unattended=unattended()), as_json)


@main.command()
@click.argument("playbook_path", metavar="PLAYBOOK", type=click.Path(dir_okay=False))
@json_option
@handled
def plan(playbook_path: str, as_json: bool) -> int:
    """Print the steps PLAYBOOK would run, touching nothing."""
    pb = playbook.load(playbook_path)
    steps = engine.plan(pb)
    emit({"app": pb.app, "version": pb.version, "steps": steps}, as_json,
          lambda: f"{pb.app} {pb.version}:\n" + "\n".join(f"  {s}" for s in steps))
    return EXIT_OK


def _target(release_id: int | None, pb_path: str | None, state_dsn: str | None) -> tuple[str, int]:
    """The state DSN, and the release named or the app's unfinished one."""
    state = state_dsn_of(pb_path, state_dsn)
    return state, release_id or engine.find_open(state, app_of(pb_path, None))


def _request(command: str, release_id: int | None, pb_path: str | None, state_dsn: str | None,
             as_json: bool) -> int:
    state, rid = _target(release_id, pb_path, state_dsn)
    holder = engine.request(state, rid, command)
    emit({"release_id": rid, "requested": command, "holder": holder}, as_json,
          lambda: f"release #{rid}: {command} requested; {holder} carries it out at its next reading "
                  f"(watch with `deployctl status {rid}`)")
    return EXIT_OK


@main.command()
@click.argument("release_id", required=False, type=int)
@with_state
@json_option
@handled
def resume(release_id: int | None, pb_path: str | None, state_dsn: str | None,
           as_json: bool) -> int:
    """Continue a paused release, or an unfinished one whose process died (the latest if
    RELEASE_ID is not given)."""
    state, rid = _target(release_id, pb_path, state_dsn)
    if engine.running_elsewhere(state, rid):
        return _request("resume", rid, None, state, as_json)
    return finish(engine.resume(state, rid, unattended=unattended()), as_json)


@main.command()
@click.argument("release_id", required=False, type=int)
@click.option("--database", "database", type=click.Choice(["keep", "downgrade", "restore"]),
              help="How to roll the database back this time, instead of the playbook's "
                   "database.rollback (asks to confirm; --yes confirms): the way out when the "
                   "delta is incomplete and a restore would lose what it misses.")
@with_state
@json_option
@handled
def rollback(release_id: int | None, database: str | None, pb_path: str | None,
             state_dsn: str | None, as_json: bool) -> int:
    """Undo an unfinished release from whatever step it reached (a running one rolls itself
    back at its next gate reading)."""
    state, rid = _target(release_id, pb_path, state_dsn)
    if engine.running_elsewhere(state, rid):
        if database is not None:
            raise BadInput(f"release #{rid} is running: --database applies to a release no "
                           "process is working on (see `deployctl status`)")
        return _request("rollback", rid, None, state, as_json)
    if database is not None:
        confirm(f"roll release #{rid}'s database back with `{database}` instead of the "
                 "playbook's database.rollback?")
    result = engine.rollback(state, rid, database)
    emit(result.__dict__, as_json, lambda: result_text(result))
    return EXIT_OK if result.status == "rolled_back" else result.exit_code




def _control(command: str, summary: str) -> None:
    @main.command(name=command, help=summary)
    @click.argument("release_id", required=False, type=int)
    @with_state
    @json_option
    @handled
    def control(release_id: int | None, pb_path: str | None, state_dsn: str | None, as_json: bool) -> int:
        return _request(command, release_id, pb_path, state_dsn, as_json)


_control("promote", "End the running cohort step now and go on to the next (RELEASE_ID: default the "
                    "app's running release).")
_control("pause", "Hold the running cohort step (its clock stops) until `deployctl resume`.")
_control("abort", "Move every user back to blue now; green, the database and the capture stay "
                  "until `deployctl rollback`.")
