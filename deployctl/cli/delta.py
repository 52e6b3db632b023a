"""`deployctl delta show|export|replay`: the changes a release captured, after an incident."""

from __future__ import annotations

from pathlib import Path

import click

from deployctl import delta as deltas
from deployctl.cli.base import (
    emit,
    handled,
    json_option,
    main,
    playbook_if_readable,
    release_playbook,
    state_dsn_of,
    with_state,
)
from deployctl.errors import EXIT_OK
from deployctl.journal import Journal


@main.group()
def delta() -> None:
    """Inspect, export and replay the changes users made during a release."""






@delta.command("show")
@click.argument("release_id", type=int)
@with_state
@json_option
@handled
def delta_show(release_id: int, pb_path: str | None, state_dsn: str | None, as_json: bool) -> int:
    """Counts of the delta of RELEASE_ID per table and operation, and whether it is complete."""
    with Journal(state_dsn_of(pb_path, state_dsn)) as journal:
        shown = deltas.show(journal, release_id, playbook_if_readable(journal, release_id, pb_path))

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

    emit(shown, as_json, text)
    return EXIT_OK


@delta.command("export")
@click.argument("release_id", type=int)
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="File to write (.jsonl.gz; default: under the playbook's workdir).")
@with_state
@json_option
@handled
def delta_export(release_id: int, output: str | None, pb_path: str | None, state_dsn: str | None,
                 as_json: bool) -> int:
    """Write the delta as compressed JSON lines with a manifest (personal columns masked)."""
    with Journal(state_dsn_of(pb_path, state_dsn)) as journal:
        pb = release_playbook(journal, release_id, pb_path)
        path = Path(output) if output else pb.workdir / "deltas" / f"{pb.app}-{release_id}.jsonl.gz"
        manifest = deltas.export(journal, pb, release_id, path)
    emit(manifest, as_json, lambda: f"wrote {manifest['changes']} changes to {manifest['path']} "
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
@handled
def delta_replay(release_id: int, into: str | None, dry_run: bool, on_conflict: str | None,
                 allow_incomplete: bool, tables: tuple[str, ...], pb_path: str | None,
                 state_dsn: str | None, as_json: bool) -> int:
    """Replay the delta of RELEASE_ID, mapped to the target's schema; idempotent."""
    with Journal(state_dsn_of(pb_path, state_dsn)) as journal:
        pb = release_playbook(journal, release_id, pb_path)
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

    emit(data, as_json, text)
    return EXIT_OK
