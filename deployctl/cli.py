"""The command line: parses, calls the engine, prints. The work is in engine.py and below.

Exit codes: 0 released (or done); 1 failed and rolled back cleanly; 2 bad input, nothing
touched; 3 rollback failed, a human is needed; 4 another release holds the lock.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import wraps
from pathlib import Path
from typing import Any

import click
import psycopg

from deployctl import delta as deltas
from deployctl import engine, playbook, preflight, progress
from deployctl import report as reports
from deployctl import status as status_view
from deployctl.db import capture, restore
from deployctl.errors import (
    EXIT_BAD_INPUT,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_ROLLBACK_FAILED,
    BadInput,
    DeployctlError,
)
from deployctl.journal import OPEN_STATUSES, Journal, frozen_text
from deployctl.log import configure, log
from deployctl.playbook import reference, starter
from deployctl.redact import redact


def _emit(data: Any, as_json: bool, text: Callable[[], str], *, one_line: bool = False) -> None:
    """`data` as JSON (indented; `one_line`: one object per line, for a stream), or `text()`."""
    if as_json:
        click.echo(redact(json.dumps(redact(data), indent=None if one_line else 2, default=str)))
    else:
        click.echo(redact(text()))


def _errors(func: Callable[..., int | None]) -> Callable[..., None]:
    """One line a user can act on, and the exit code of the contract."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        ctx = click.get_current_context()
        debug = bool(ctx.find_root().params.get("debug"))
        try:
            code = func(*args, **kwargs) or EXIT_OK
        except DeployctlError as exc:
            if debug:
                traceback.print_exc()
            for line in str(exc).splitlines():  # one line per problem (a playbook may have several)
                click.echo(redact(f"error: {line}"), err=True)
            code = exc.exit_code
        except Exception as exc:  # a bug or an outage: say so, then leave resume to a human
            if debug:
                traceback.print_exc()
            click.echo(redact(f"error: {type(exc).__name__}: {exc} (rerun with --debug for "
                              "the traceback; `deployctl status` shows where the release is)"),
                       err=True)
            code = EXIT_ROLLBACK_FAILED
        sys.exit(code)

    return wrapper


def _state_dsn(pb_path: str | None, state_dsn: str | None) -> str:
    if state_dsn:
        return state_dsn
    if pb_path:
        return engine.state_dsn(playbook.load(pb_path))
    raise BadInput("name the state database: --playbook FILE or --state-dsn DSN "
                   "(or DEPLOYCTL_STATE_DSN)")


def _app(pb_path: str | None, app: str | None) -> str | None:
    return app or (playbook.load(pb_path).app if pb_path else None)


state_options = [
    click.option("-p", "--playbook", "pb_path", type=click.Path(dir_okay=False),
                 envvar="DEPLOYCTL_PLAYBOOK", help="Playbook naming the app and its state DB."),
    click.option("--state-dsn", envvar="DEPLOYCTL_STATE_DSN",
                 help="State database DSN (default: from the playbook)."),
]
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")


def with_state(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(state_options):
        func = option(func)
    return func


def _result_text(result: engine.Result) -> str:
    lines = [f"release #{result.release_id}: {result.app} {result.version}"]
    for step in result.steps:
        seconds = step.get("duration_s")
        took = f"{seconds:8.2f}s" if isinstance(seconds, int | float) else " " * 9
        error = f"  {step['error']}" if step.get("error") else ""
        lines.append(f"  {step['step']:<20} {step['outcome']:<8}{took}{error}")
        if "pause_ms" in step:  # a side-by-side restore: what users felt, and what was kept
            lines.append(f"  {'':<20} {step.get('action', '')}: writes paused {step['pause_ms']} ms, "
                         f"{step.get('replayed', 0)} rows replayed, {step.get('conflicts', 0)} conflicts, "
                         f"{step.get('side_effect_rows', 0)} side-effect rows for reconciliation")
        if step.get("capture") == "discarded":
            lines.append(f"  {'':<20} the delta was discarded undecoded: the release succeeded "
                         "(capture.drain: lazy)")
        elif "changes_captured" in step:
            lines.append(f"  {'':<20} {step['changes_captured']} changes captured (`deployctl delta show "
                         f"{result.release_id}`)")
    lines.append(f"outcome: {result.status}" + (f" ({result.reason})" if result.reason else ""))
    if result.report:
        lines.append(f"report: {result.report}")
    return "\n".join(lines)


def _finish(result: engine.Result, as_json: bool) -> int:
    _emit(result.__dict__, as_json, lambda: _result_text(result))
    return result.exit_code


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option("--log-json/--log-text", default=None,
              help="Log format (default: text on a terminal, JSON lines otherwise).")
@click.option("--color/--no-color", "color", default=None,
              help="Colour the text logs (default: on a terminal, unless NO_COLOR is set).")
@click.option("-y", "--yes", is_flag=True, envvar="DEPLOYCTL_YES",
              help="Non-interactive, as when CI=true: never wait for an operator (a cohort step "
                   "whose gates could not judge rolls back instead of pausing).")
@click.version_option(package_name="deployctl", prog_name="deployctl")
def main(debug: bool, log_json: bool | None, color: bool | None, yes: bool) -> None:
    """Blue-green releases with rollbacks that lose no user action."""
    configure(json=log_json, debug=debug, color=color)
    if yes:
        os.environ["DEPLOYCTL_YES"] = "1"  # read by deployctl.cohorts.in_ci()


@main.command()
@click.argument("playbook_path", metavar="PLAYBOOK", type=click.Path(dir_okay=False))
@json_option
@_errors
def release(playbook_path: str, as_json: bool) -> int:
    """Release the version in PLAYBOOK; roll back on its own if any step fails."""
    return _finish(engine.release(playbook.load(playbook_path)), as_json)


@main.command()
@click.argument("playbook_path", metavar="PLAYBOOK", type=click.Path(dir_okay=False))
@json_option
@_errors
def plan(playbook_path: str, as_json: bool) -> int:
    """Print the steps PLAYBOOK would run, touching nothing."""
    pb = playbook.load(playbook_path)
    steps = engine.plan(pb)
    _emit({"app": pb.app, "version": pb.version, "steps": steps}, as_json,
          lambda: f"{pb.app} {pb.version}:\n" + "\n".join(f"  {s}" for s in steps))
    return EXIT_OK


def _target(release_id: int | None, pb_path: str | None, state_dsn: str | None) -> tuple[str, int]:
    """The state DSN, and the release named or the app's unfinished one."""
    state = _state_dsn(pb_path, state_dsn)
    return state, release_id or engine.find_open(state, _app(pb_path, None))


def _request(command: str, release_id: int | None, pb_path: str | None, state_dsn: str | None,
             as_json: bool) -> int:
    state, rid = _target(release_id, pb_path, state_dsn)
    holder = engine.request(state, rid, command)
    _emit({"release_id": rid, "requested": command, "holder": holder}, as_json,
          lambda: f"release #{rid}: {command} requested; {holder} carries it out at its next reading "
                  f"(watch with `deployctl status {rid}`)")
    return EXIT_OK


@main.command()
@click.argument("release_id", required=False, type=int)
@with_state
@json_option
@_errors
def resume(release_id: int | None, pb_path: str | None, state_dsn: str | None,
           as_json: bool) -> int:
    """Continue a paused release, or an unfinished one whose process died (the latest if
    RELEASE_ID is not given)."""
    state, rid = _target(release_id, pb_path, state_dsn)
    if engine.running_elsewhere(state, rid):
        return _request("resume", rid, None, state, as_json)
    return _finish(engine.resume(state, rid), as_json)


@main.command()
@click.argument("release_id", required=False, type=int)
@click.option("--database", "database", type=click.Choice(["keep", "downgrade", "restore"]),
              help="How to roll the database back this time, instead of the playbook's "
                   "database.rollback (asks to confirm; --yes confirms): the way out when the "
                   "delta is incomplete and a restore would lose what it misses.")
@with_state
@json_option
@_errors
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
        _confirm(f"roll release #{rid}'s database back with `{database}` instead of the "
                 "playbook's database.rollback?")
    result = engine.rollback(state, rid, database)
    _emit(result.__dict__, as_json, lambda: _result_text(result))
    return EXIT_OK if result.status == "rolled_back" else result.exit_code


def _confirm(question: str) -> None:
    """An operator's yes: `--yes`, or an answer on the terminal; nothing else."""
    if os.environ.get("DEPLOYCTL_YES") == "1":
        return
    if not sys.stdin.isatty():
        raise BadInput(f"{question} Confirm with `deployctl --yes …` (no terminal to ask on)")
    if not click.confirm(question, default=False, err=True):
        raise BadInput("not confirmed: nothing changed")


def _control(command: str, summary: str) -> None:
    @main.command(name=command, help=summary)
    @click.argument("release_id", required=False, type=int)
    @with_state
    @json_option
    @_errors
    def control(release_id: int | None, pb_path: str | None, state_dsn: str | None, as_json: bool) -> int:
        return _request(command, release_id, pb_path, state_dsn, as_json)


_control("promote", "End the running cohort step now and go on to the next (RELEASE_ID: default the "
                    "app's running release).")
_control("pause", "Hold the running cohort step (its clock stops) until `deployctl resume`.")
_control("abort", "Move every user back to blue now; green, the database and the capture stay "
                  "until `deployctl rollback`.")


@main.command()
@click.argument("release_id", required=False, type=int)
@click.option("--app", help="Application name (default: the playbook's).")
@click.option("-w", "--watch", "watch", is_flag=True,
              help="Show it again every --interval seconds until the release ends, then exit with "
                   "the release's exit code (with --json: one JSON object per line).")
@click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(min=0.2),
              help="Seconds between two looks with --watch.")
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="With --watch: stop after this many seconds; exit 4 if the release has not ended.")
@with_state
@json_option
@_errors
def status(release_id: int | None, app: str | None, watch: bool, interval: float, timeout: float | None,
           pb_path: str | None, state_dsn: str | None, as_json: bool) -> int:
    """Show a release's steps (the latest one if RELEASE_ID is not given); in a cohort step, the
    share of users on green, the time left in the hold and the latest gate readings."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        ended = _status_once(release_id, app, pb_path, state_dsn, as_json, watching=watch)
        if not watch:
            return EXIT_OK
        if ended is not None:
            return ended
        if deadline is not None and time.monotonic() + interval > deadline:
            return EXIT_LOCKED
        time.sleep(interval)


def _status_once(release_id: int | None, app: str | None, pb_path: str | None, state_dsn: str | None,
                 as_json: bool, watching: bool) -> int | None:
    """Print the status once; the release's exit code once there is nothing left to watch."""
    app = _app(pb_path, app)
    with Journal(_state_dsn(pb_path, state_dsn)) as journal:
        found = journal.get(release_id) if release_id else journal.latest(app)
        if found is None:
            _emit(None, as_json, lambda: "no releases yet", one_line=watching)
            return EXIT_OK
        result = engine.summarize(journal, found.id)
        live = journal.live(found.app)
        lock = journal.lock_holder(found.app)
        swap = None if lock["alive"] else engine.interrupted_swap(journal, found.id)
        captured = _capture_of(journal, found.id, pb_path)
        now = (status_view.cohort_now(journal.events(found.id), datetime.now(UTC))
               if found.open else None)
        freeze = journal.frozen(found.app)
    data = {**result.__dict__, "live_version": live["live_version"] if live else None,
            "lock": lock, "interrupted_swap": swap, "capture": captured, "now": now, "frozen": freeze}

    def text() -> str:
        out = _result_text(result)
        if now is not None:
            out += "\n" + status_view.text(now, result.release_id, result.version)
        if captured is not None:
            out += "\n" + _capture_text(captured)
        out += f"\nlive version: {data['live_version'] or 'none'}"
        if freeze:
            out += f"\nreleases of {result.app} are locked {frozen_text(freeze)} (`deployctl lock release`)"
        if lock["alive"] and "holder" in lock:
            out += f"\nlock: held by {lock['holder']} since {lock['since']:%Y-%m-%d %H:%M:%S}"
        elif result.status in OPEN_STATUSES and not lock["alive"]:
            out += (f"\nno deployctl process is working on it: run `deployctl resume "
                    f"{result.release_id}` or `deployctl rollback {result.release_id}`")
            if swap:
                out += f"\nthe application is down: {swap}; either command finishes the swap first"
        return out

    if watching and not as_json and sys.stdout.isatty():
        click.echo("\033[H\033[J", nl=False)  # redraw in place
    _emit(data, as_json, text, one_line=watching)
    return None if lock["alive"] and result.status in OPEN_STATUSES else result.exit_code


def _capture_of(journal: Journal, release_id: int, pb_path: str | None) -> dict[str, Any] | None:
    pb = _playbook_if_readable(journal, release_id, pb_path)
    return deltas.capture_status(journal, pb, release_id) if pb else None


def _capture_text(c: dict[str, Any]) -> str:
    out = f"capture: {c['mode']}, {c['status']}, drain {c['drain']}; {c['changes']:,} changes decoded"
    if c["undecoded_batches"]:
        out += f", {c['undecoded_batches']} batches of WAL stored undecoded"
    if c["wal_held_bytes"] is not None:
        out += (f"; the slot holds {progress.amount(c['wal_held_bytes'])} of WAL, "
                f"{progress.amount(c['wal_pending_bytes'])} not yet stored "
                f"(budget {progress.amount(c['wal_budget_bytes'])})")
    elif c.get("problem"):
        out += f"; the slot could not be read: {c['problem']}"
    return out


@main.command()
@click.option("--app", help="Only this application (default: the playbook's, else all).")
@click.option("-n", "--limit", default=20, show_default=True, type=click.IntRange(min=1),
              help="How many releases.")
@with_state
@json_option
@_errors
def history(app: str | None, limit: int, pb_path: str | None, state_dsn: str | None,
            as_json: bool) -> int:
    """List past releases, newest first, with outcome and duration."""
    with Journal(_state_dsn(pb_path, state_dsn)) as journal:
        releases = [r.as_dict() for r in journal.history(_app(pb_path, app), limit)]

    def text() -> str:
        if not releases:
            return "no releases yet"
        rows = [f"{'#':>4}  {'app':<12} {'version':<10} {'from':<10} {'status':<16} "
                f"{'duration':>9}  started"]
        for r in releases:
            took = f"{r['duration_s']:.1f}s" if r["duration_s"] is not None else "-"
            rows.append(f"{r['id']:>4}  {r['app']:<12} {r['version']:<10} "
                        f"{r['from_version'] or '-':<10} {r['status']:<16} {took:>9}  "
                        f"{r['started_at'][:19]}")
        return "\n".join(rows)

    _emit(releases, as_json, text)
    return EXIT_OK


@main.group()
def lock() -> None:
    """Freeze an application's releases on purpose (who and why shown to anyone refused)."""


def _lock_target(app: str | None, pb_path: str | None, state_dsn: str | None) -> tuple[str, str]:
    name = _app(pb_path, app)
    if name is None:
        raise BadInput("name the application: --app NAME or --playbook FILE")
    return _state_dsn(pb_path, state_dsn), name


def _freeze_text(name: str, freeze: dict[str, Any] | None) -> str:
    return f"{name}: locked {frozen_text(freeze)}" if freeze else f"{name}: not locked"


@lock.command("status")
@click.option("--app", help="Application name (default: the playbook's).")
@with_state
@json_option
@_errors
def lock_status(app: str | None, pb_path: str | None, state_dsn: str | None, as_json: bool) -> int:
    """Whether the application is locked, by whom, since when and why."""
    state, name = _lock_target(app, pb_path, state_dsn)
    with Journal(state) as journal:
        freeze = journal.frozen(name)
    _emit({"app": name, "locked": freeze is not None, "lock": freeze}, as_json,
          lambda: _freeze_text(name, freeze))
    return EXIT_OK


@lock.command("acquire")
@click.option("-m", "--message", required=True, help="Why: shown to whoever is refused.")
@click.option("--app", help="Application name (default: the playbook's).")
@with_state
@json_option
@_errors
def lock_acquire(message: str, app: str | None, pb_path: str | None, state_dsn: str | None,
                 as_json: bool) -> int:
    """Lock the application: no release of it starts until `deployctl lock release` (one that
    runs goes on; `resume` and `rollback` still work). Exit 4 if it is locked already."""
    if not message.strip():
        raise BadInput("--message: say why the application is locked")
    state, name = _lock_target(app, pb_path, state_dsn)
    with Journal(state) as journal:
        freeze = journal.freeze(name, message.strip())
    _emit({"app": name, "locked": True, "lock": freeze}, as_json, lambda: _freeze_text(name, freeze))
    return EXIT_OK


@lock.command("release")
@click.option("--app", help="Application name (default: the playbook's).")
@with_state
@json_option
@_errors
def lock_release(app: str | None, pb_path: str | None, state_dsn: str | None, as_json: bool) -> int:
    """Lift the application's lock (nothing to do if it is not locked)."""
    state, name = _lock_target(app, pb_path, state_dsn)
    with Journal(state) as journal:
        lifted = journal.unfreeze(name)
    _emit({"app": name, "locked": False, "lifted": lifted}, as_json,
          lambda: f"{name}: lock released ({frozen_text(lifted)})" if lifted else f"{name}: was not locked")
    return EXIT_OK


@main.group()
def delta() -> None:
    """Inspect, export and replay the changes users made during a release."""


def _release_playbook(journal: Journal, release_id: int, pb_path: str | None) -> playbook.Playbook:
    """The playbook given, else the one the release ran with (from the journal)."""
    if pb_path:
        return playbook.load(pb_path)
    found = journal.get(release_id)
    return playbook.parse(found.playbook_text, Path(found.playbook_path), stored=True)


def _playbook_if_readable(journal: Journal, release_id: int, pb_path: str | None
                          ) -> playbook.Playbook | None:
    """For what can be shown without it (a status, a delta's counts): a playbook that no longer
    reads (an unset variable it refers to) leaves the journal's part."""
    try:
        return _release_playbook(journal, release_id, pb_path)
    except DeployctlError as exc:
        log.warning("the release's playbook cannot be read: showing the journal's part only",
                    error=str(exc))
        return None


@delta.command("show")
@click.argument("release_id", type=int)
@with_state
@json_option
@_errors
def delta_show(release_id: int, pb_path: str | None, state_dsn: str | None, as_json: bool) -> int:
    """Counts of the delta of RELEASE_ID per table and operation, and whether it is complete."""
    with Journal(_state_dsn(pb_path, state_dsn)) as journal:
        shown = deltas.show(journal, release_id, _playbook_if_readable(journal, release_id, pb_path))

    def text() -> str:
        lines = [f"delta of release #{release_id}: {shown['changes']} changes in "
                 f"{shown['transactions']} transactions ({shown['mode']} capture, {shown['status']})"]
        if shown["problem"]:
            lines.append(f"  problem: {shown['problem']}")
        for table, ops in shown["tables"].items():
            lines.append(f"  {table:<32} " + ", ".join(f"{op} {n}" for op, n in sorted(ops.items())))
        excluded = shown["excluded"]
        lines.append(f"  left out: {excluded['in_snapshot']} transactions already in the snapshot, "
                     f"{excluded['migrations']} migrations, {excluded['own_replays']} deployctl replays")
        return "\n".join(lines)

    _emit(shown, as_json, text)
    return EXIT_OK


@delta.command("export")
@click.argument("release_id", type=int)
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="File to write (.jsonl.gz; default: under the playbook's workdir).")
@with_state
@json_option
@_errors
def delta_export(release_id: int, output: str | None, pb_path: str | None, state_dsn: str | None,
                 as_json: bool) -> int:
    """Write the delta as compressed JSON lines with a manifest (personal columns masked)."""
    with Journal(_state_dsn(pb_path, state_dsn)) as journal:
        pb = _release_playbook(journal, release_id, pb_path)
        path = Path(output) if output else pb.workdir / "deltas" / f"{pb.app}-{release_id}.jsonl.gz"
        manifest = deltas.export(journal, pb, release_id, path)
    _emit(manifest, as_json, lambda: f"wrote {manifest['changes']} changes to {manifest['path']} "
          f"(sha256 {manifest['sha256']}), manifest {manifest['manifest']}")
    return EXIT_OK


@delta.command("replay")
@click.argument("release_id", type=int)
@click.option("--into", "into", help="Database to replay into (default: the playbook's database).")
@click.option("--dry-run", is_flag=True, help="Show exactly what would happen; change nothing.")
@click.option("--on-conflict", type=click.Choice(["fail", "skip", "overwrite"]),
              help="What to do with a conflicting row (default: the playbook's replay.on_conflict).")
@click.option("--allow-incomplete", is_flag=True,
              help="Replay a delta that is known to miss changes (a lost slot).")
@click.option("--table", "tables", multiple=True,
              help="Replay only this table's changes (repeatable), e.g. a table only the new "
                   "version has, once it is released again; refused a second time.")
@with_state
@json_option
@_errors
def delta_replay(release_id: int, into: str | None, dry_run: bool, on_conflict: str | None,
                 allow_incomplete: bool, tables: tuple[str, ...], pb_path: str | None,
                 state_dsn: str | None, as_json: bool) -> int:
    """Replay the delta of RELEASE_ID, mapped to the target's schema; idempotent."""
    with Journal(_state_dsn(pb_path, state_dsn)) as journal:
        pb = _release_playbook(journal, release_id, pb_path)
        report = deltas.replay_into(journal, pb, release_id, into or pb.database.dsn,
                                    on_conflict=on_conflict, dry_run=dry_run,
                                    allow_incomplete=allow_incomplete, tables=frozenset(tables))
    data = report.as_dict()

    def text() -> str:
        lines = [("dry run: " if dry_run else "") + report.summary()]
        for name, t in data["tables"].items():
            lines.append(f"  {name:<24} inserted {t['inserted']}, updated {t['updated']}, deleted "
                         f"{t['deleted']}, already there {t['already']}, skipped {t['skipped']}"
                         + (", table missing" if t["missing"] else "")
                         + (", no primary key: not replayed" if t["no_key"] else "")
                         + (", side effect: not replayed" if t["side_effect"] else ""))
        for c in data["conflicts"]:
            lines.append(f"  conflict {c['kind']} in {c['table']} at {c['key']}: delta {c['ours']}, "
                         f"database {c['theirs']} ({c['resolution']})")
        return "\n".join(lines)

    _emit(data, as_json, text)
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
@_errors
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
    _emit({"dropped": dropped}, as_json,
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


@main.command()
@click.argument("release_id", type=int)
@click.option("--format", "fmt", type=click.Choice(["md", "json", "html"]), default="md", show_default=True,
              help="Markdown for people, JSON for machines, or a self-contained HTML page with a chart.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write the report to FILE, mode 0600 (it can hold user data), instead of stdout.")
@with_state
@json_option
@_errors
def report(release_id: int, fmt: str, output: str | None, pb_path: str | None,
           state_dsn: str | None, as_json: bool) -> int:
    """The timeline report of RELEASE_ID from the journal: steps, gate readings, the decision and
    its reason, the delta, what users saw (personal columns masked). `--json` = `--format json`."""
    fmt = "json" if as_json else fmt
    extra = playbook.load(pb_path).personal if pb_path else []
    with Journal(_state_dsn(pb_path, state_dsn)) as journal:
        text = reports.render(reports.build(journal, release_id, extra), fmt)
    if output:
        reports.write(Path(output), text)
        click.echo(f"wrote the {fmt} report of release #{release_id} to {output}")
    else:
        click.echo(text)
    return EXIT_OK


@main.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Where to write the playbook (default: playbooks/APP.yaml).")
@click.option("--app", help="The application's name (default: from the project's folder).")
@click.option("--alembic-ini", type=click.Path(dir_okay=False, exists=True),
              help="The project's alembic.ini (default: the one found here or below).")
@click.option("--transport", type=click.Choice(["local", "ssh"]), default="local", show_default=True,
              help="Start versions as local processes, or on ssh hosts.")
@click.option("--router", type=click.Choice(["none", "haproxy", "nginx", "command"]), default="none",
              show_default=True, help="Move users in cohorts through this router (none: all at once).")
@click.option("--command", "command", default="./start-app --port 8000", show_default=True,
              help="The command that starts a version (split like a shell would).")
@click.option("--health-url", help="The URL that answers 2xx once a version is up "
                                   "(default: http://127.0.0.1:8000/health; with ssh, {host}).")
@click.option("--force", is_flag=True, help="Overwrite the file if it exists.")
@_errors
def init(output: str | None, app: str | None, alembic_ini: str | None, transport: str, router: str,
         command: str, health_url: str | None, force: bool) -> int:
    """Write a commented starter playbook for the Alembic project in this folder."""
    here = Path.cwd()
    ini = Path(alembic_ini) if alembic_ini else starter.find_alembic_ini(here)
    name = app or starter.app_name(here)
    target = Path(output) if output else here / "playbooks" / f"{name}.yaml"
    if target.exists() and not force:
        raise BadInput(f"{target} exists: choose another --output, or --force to overwrite it")
    host = "{host}" if transport == "ssh" else "127.0.0.1"
    text = starter.render(app=name, output=target, alembic_ini=ini, transport=transport,
                          router=None if router == "none" else router, command=shlex.split(command),
                          health=health_url or f"http://{host}:8000/health")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    click.echo(f"wrote {target}: read it through, then `deployctl check {target}`")
    return EXIT_OK


@main.command()
@click.option("--format", "fmt", type=click.Choice(["json", "markdown"]), default="json", show_default=True,
              help="The JSON Schema (for editors: yaml-language-server, VS Code, PyCharm) or the "
                   "reference as Markdown (docs/playbook.md).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to FILE instead of stdout.")
@_errors
def schema(fmt: str, output: str | None) -> int:
    """Print the playbook's JSON Schema, or its reference as Markdown: every setting, its type,
    default and meaning."""
    text = (reference.markdown() if fmt == "markdown"
            else json.dumps(reference.schema(), indent=2) + "\n")
    if output:
        Path(output).write_text(text)
    else:
        click.echo(text, nl=False)
    return EXIT_OK


@main.command()
@click.argument("playbook_path", metavar="PLAYBOOK", type=click.Path(dir_okay=False))
@json_option
@_errors
def check(playbook_path: str, as_json: bool) -> int:
    """Run the release's preflight checks for PLAYBOOK, touching nothing: one line per check;
    exit 2 if any fails (warnings allowed)."""
    pb = playbook.load(playbook_path)
    checks = [c.as_dict() for c in preflight.check(pb)]
    failed = sum(c["status"] == "fail" for c in checks)
    warned = sum(c["status"] == "warn" for c in checks)

    def text() -> str:
        lines = [f"{c['status']:<4}  {c['name']:<14} {c['message']}" for c in checks]
        verdict = f"not ready: {failed} failed" if failed else "ready"
        lines.append(f"{pb.app} {pb.version}: {verdict}, {warned} warning(s)")
        return "\n".join(lines)

    _emit({"app": pb.app, "version": pb.version, "ok": not failed, "checks": checks}, as_json, text)
    return EXIT_BAD_INPUT if failed else EXIT_OK
