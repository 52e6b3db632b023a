"""Commands that look: status (with --watch), history, report."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from deployctl import delta as deltas
from deployctl import engine, playbook, progress
from deployctl import report as reports
from deployctl import status as status_view
from deployctl.cli.base import (
    app_of,
    emit,
    handled,
    json_option,
    main,
    playbook_if_readable,
    result_text,
    state_dsn_of,
    with_state,
)
from deployctl.errors import EXIT_LOCKED, EXIT_OK
from deployctl.journal import OPEN_STATUSES, Journal, frozen_text


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
@handled
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
    app = app_of(pb_path, app)
    with Journal(state_dsn_of(pb_path, state_dsn)) as journal:
        found = journal.get(release_id) if release_id else journal.latest(app)
        if found is None:
            emit(None, as_json, lambda: "no releases yet", one_line=watching)
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
        out = result_text(result)
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
    emit(data, as_json, text, one_line=watching)
    return None if lock["alive"] and result.status in OPEN_STATUSES else result.exit_code


def _capture_of(journal: Journal, release_id: int, pb_path: str | None) -> dict[str, Any] | None:
    pb = playbook_if_readable(journal, release_id, pb_path)
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
@handled
def history(app: str | None, limit: int, pb_path: str | None, state_dsn: str | None,
            as_json: bool) -> int:
    """List past releases, newest first, with outcome and duration."""
    with Journal(state_dsn_of(pb_path, state_dsn)) as journal:
        releases = [r.as_dict() for r in journal.history(app_of(pb_path, app), limit)]

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

    emit(releases, as_json, text)
    return EXIT_OK


@main.command()
@click.argument("release_id", type=int)
@click.option("--format", "fmt", type=click.Choice(["md", "json", "html"]), default="md", show_default=True,
              help="Markdown for people, JSON for machines, or a self-contained HTML page with a chart.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write the report to FILE, mode 0600 (it can hold user data), instead of stdout.")
@with_state
@json_option
@handled
def report(release_id: int, fmt: str, output: str | None, pb_path: str | None,
           state_dsn: str | None, as_json: bool) -> int:
    """The timeline report of RELEASE_ID from the journal: steps, gate readings, the decision and
    its reason, the delta, what users saw (personal columns masked). `--json` = `--format json`."""
    fmt = "json" if as_json else fmt
    extra = playbook.load(pb_path).personal if pb_path else []
    with Journal(state_dsn_of(pb_path, state_dsn)) as journal:
        text = reports.render(reports.build(journal, release_id, extra), fmt)
    if output:
        reports.write(Path(output), text)
        click.echo(f"wrote the {fmt} report of release #{release_id} to {output}")
    else:
        click.echo(text)
    return EXIT_OK
