"""The command line's common parts: the `deployctl` group and its global options, the
decorator that turns errors into one line and an exit code, the options naming the state
database, and how results print (text, or JSON with `--json`)."""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click

from deployctl import engine, playbook
from deployctl.errors import EXIT_OK, EXIT_ROLLBACK_FAILED, BadInput, DeployctlError
from deployctl.journal import Journal
from deployctl.log import configure, log
from deployctl.redact import redact


def emit(data: Any, as_json: bool, text: Callable[[], str], *, one_line: bool = False) -> None:
    """`data` as JSON (indented; `one_line`: one object per line, for a stream), or `text()`."""
    if as_json:
        click.echo(redact(json.dumps(redact(data), indent=None if one_line else 2, default=str)))
    else:
        click.echo(redact(text()))


def handled(func: Callable[..., int | None]) -> Callable[..., None]:
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


def state_dsn_of(pb_path: str | None, state_dsn: str | None) -> str:
    if state_dsn:
        return state_dsn
    if pb_path:
        return engine.state_dsn(playbook.load(pb_path))
    raise BadInput("name the state database: --playbook FILE or --state-dsn DSN "
                   "(or DEPLOYCTL_STATE_DSN)")


def app_of(pb_path: str | None, app: str | None) -> str | None:
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


def result_text(result: engine.Result) -> str:
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


def finish(result: engine.Result, as_json: bool) -> int:
    emit(result.__dict__, as_json, lambda: result_text(result))
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
    click.get_current_context().obj = {"yes": yes}


def unattended() -> bool:
    """Whether `--yes` (or DEPLOYCTL_YES) was given: nobody is there to answer."""
    obj = click.get_current_context().find_root().obj
    return bool(obj and obj.get("yes"))


def confirm(question: str) -> None:
    """An operator's yes: `--yes`, or an answer on the terminal; nothing else."""
    if unattended():
        return
    if not sys.stdin.isatty():
        raise BadInput(f"{question} Confirm with `deployctl --yes …` (no terminal to ask on)")
    if not click.confirm(question, default=False, err=True):
        raise BadInput("not confirmed: nothing changed")


def release_playbook(journal: Journal, release_id: int, pb_path: str | None) -> playbook.Playbook:
    """The playbook given, else the one the release ran with (from the journal)."""
    if pb_path:
        return playbook.load(pb_path)
    found = journal.get(release_id)
    return playbook.parse(found.playbook_text, Path(found.playbook_path), stored=True)


def playbook_if_readable(journal: Journal, release_id: int, pb_path: str | None
                          ) -> playbook.Playbook | None:
    """For what can be shown without it (a status, a delta's counts): a playbook that no longer
    reads (an unset variable it refers to) leaves the journal's part."""
    try:
        return release_playbook(journal, release_id, pb_path)
    except DeployctlError as exc:
        log.warning("the release's playbook cannot be read: showing the journal's part only",
                    error=str(exc))
        return None
