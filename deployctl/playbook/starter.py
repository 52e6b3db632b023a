"""`deployctl init`: a commented starter playbook for the Alembic project found in a folder, with
the application started locally or on ssh hosts, and users moved at once or in cohorts by a
router. What is written validates as it is (every value a user must change is said so)."""

from __future__ import annotations

import re
from pathlib import Path

from deployctl.errors import BadInput

SKIP = {".git", ".venv", "venv", "node_modules", "__pycache__", ".tox", ".nox", "build", "dist"}
DEPTH = 3

_HEAD = """\
# deployctl playbook for {app}, written by `deployctl init`: read it through and change what it
# says. Every setting, its default and meaning: `deployctl schema --format markdown` (the same as
# docs/playbook.md). `${{VAR}}` and `${{VAR:-default}}` come from the environment; relative paths
# are relative to this file. Try it: `deployctl check {name}`; then `deployctl release {name}`.
app: {app}
version: "1"                       # the version this playbook releases: set it for each release
workdir: {workdir}                 # snapshots and process files
database:
  dsn: ${{DATABASE_URL}}             # postgresql:// URL of the application's database
  rollback: restore                # restore the snapshot and replay users' changes | downgrade | keep
migrations:
  alembic_ini: {alembic_ini}
  target: head                     # or the revision this version needs
  url_env: DATABASE_URL            # how the database URL reaches your Alembic env.py
deploy:
"""

_LOCAL = """\
  transport: local                 # a process on this machine
  command: {command}   # how this version starts
  env:
    DATABASE_URL: ${{DATABASE_URL}}
  health:
    url: {health}   # answers 2xx once the version is up
    timeout: 30s
"""

_SSH = """\
  transport: ssh                   # the same command on each host, in releases/<version>/
  ssh:
    known_hosts: ./known_hosts     # the hosts' keys (ssh-keyscan, checked by you): never added
    hosts:
      - {{name: web1, address: 10.0.0.11, user: deploy}}   # no key: the ssh-agent's keys
    root: /srv/{app}                # releases/<version>/, the `current` link, run/
    artifact: ./build              # uploaded into releases/<version>/ (a file or a folder)
  command: {command}
  env:
    DATABASE_URL: ${{DATABASE_URL}}
  health:
    url: {health}   # `{{host}}`: each host's address
    timeout: 30s
"""

_ENDPOINTS = """\
  endpoints: ["{endpoint}"]   # where this version answers, for the router
"""

_SMOKE = """\
smoke:                             # checks green must pass before any user reaches it
  - name: health answers
    http: {{url: "{health}", status: 200}}
    retries: 8
    interval: 0.5s
"""

_ROUTERS = {
    "haproxy": """\
router:
  type: haproxy                    # through its runtime API, never a reload
  haproxy:
    socket: /run/haproxy/admin.sock   # `stats socket … level admin`
    maps: /etc/haproxy/deployctl      # deployctl's map files
  user_id: {header: X-User-Id}     # or {cookie: uid}: keeps each user on one version
""",
    "nginx": """\
router:
  type: nginx                      # a rendered include, `nginx -t`, a graceful reload
  nginx:
    config: /etc/nginx/nginx.conf
    include: /etc/nginx/deployctl/app.conf   # the file deployctl writes; nginx includes it
    access_log: /var/log/nginx/deployctl.log # in deployctl's log format, for the gates
  user_id: {cookie: uid}           # or {header: X-User-Id}
""",
    "command": """\
router:
  type: command                    # your command moves users (cloud load balancer, Kubernetes)
  command:
    argv: [./move-users.sh]        # gets DEPLOYCTL_ACTION, DEPLOYCTL_ALLOW, DEPLOYCTL_PERCENT, …
  user_id: {header: X-User-Id}
""",
}

_COHORTS = """\
cohorts:                           # sticky: a user on green stays on green
  - {name: staff, allow: [alice, bob], hold: 10m}
  - {name: beta, percent: 10, hold: 30m}
  - {name: everyone, percent: 100, hold: 10m}
"""

_GATES = """\
gates:                             # read every interval during each cohort step
  interval: 30s
  error_rate: {max: 0.02, max_vs_blue: 2}
"""

# The command router cannot measure errors: its default error-rate gate is always inconclusive.
_COMMAND_GATES = """\
gates:                             # read every interval during each cohort step
  interval: 30s
  error_rate: {max: null, max_vs_blue: null}   # the command router cannot measure errors
  http:                            # so probe green, and gate on business metrics (`sql`)
    - name: green answers
      http: {url: "%s", status: 200}
"""


def find_alembic_ini(folder: Path) -> Path:
    """The one alembic.ini in `folder` or below (DEPTH levels, tools' folders skipped)."""
    found: list[Path] = []

    def walk(where: Path, depth: int) -> None:
        if (where / "alembic.ini").is_file():
            found.append(where / "alembic.ini")
        if depth < DEPTH:
            for child in sorted(where.iterdir()):
                if child.is_dir() and child.name not in SKIP and not child.is_symlink():
                    walk(child, depth + 1)

    walk(folder, 0)
    if not found:
        raise BadInput(f"no alembic.ini in {folder} or its subfolders: run `deployctl init` in your "
                       "project, or name it with --alembic-ini")
    if len(found) > 1:
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        shown = ", ".join(str(p) for p in found[:3]) + more
        raise BadInput(f"{len(found)} alembic.ini found ({shown}): name the application's with "
                       "--alembic-ini")
    return found[0]


def app_name(folder: Path) -> str:
    """A valid app name from the project's folder name."""
    name = re.sub(r"[^a-z0-9_-]+", "-", folder.resolve().name.lower()).strip("-_")
    name = re.sub(r"^[^a-z]+", "", name)[:63]
    return name or "app"


def render(*, app: str, output: Path, alembic_ini: Path, transport: str, router: str | None,
           command: list[str], health: str) -> str:
    """The starter playbook's text."""
    base = output.resolve().parent

    def relative(path: Path) -> str:
        try:
            return str(path.resolve().relative_to(base))
        except ValueError:
            return str(path.resolve())

    flow = "[" + ", ".join(_yaml_word(word) for word in command) + "]"
    text = _HEAD.format(app=app, name=output.name, workdir=_yaml_word(relative(base / ".deployctl")),
                        alembic_ini=_yaml_word(relative(alembic_ini)))
    text += (_SSH if transport == "ssh" else _LOCAL).format(app=app, command=flow, health=health)
    if router:
        endpoint = re.sub(r"^https?://([^/]+).*$", r"\1", health)
        text += _ENDPOINTS.format(endpoint=endpoint)
    # Smoke checks ask one place: with ssh, the first host.
    text += _SMOKE.format(health=health.replace("{host}", "10.0.0.11"))
    if router:
        text += _ROUTERS[router]
        probe = health.replace("{host}", "10.0.0.11")
        text += _COHORTS + (_COMMAND_GATES % probe if router == "command" else _GATES)
    return text


def _yaml_word(word: str) -> str:
    """`word` as a YAML flow scalar: quoted where YAML would read it otherwise."""
    if re.fullmatch(r"[A-Za-z0-9_./-][A-Za-z0-9_./:=-]*", word) and not re.fullmatch(
            r"(?i)(true|false|yes|no|on|off|null|~|[-+]?[0-9.]+(e[-+]?[0-9]+)?)", word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
