"""Commands about playbooks: init (a starter), schema (its JSON Schema and reference), check
(the preflight alone)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import click

from deployctl import playbook, preflight
from deployctl.cli.base import emit, handled, json_option, main
from deployctl.errors import EXIT_BAD_INPUT, EXIT_OK, BadInput
from deployctl.playbook import reference, starter


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
@handled
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
@handled
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
@handled
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

    emit({"app": pb.app, "version": pb.version, "ok": not failed, "checks": checks}, as_json, text)
    return EXIT_BAD_INPUT if failed else EXIT_OK
