"""The `nginx` router: a rendered include file and a graceful reload.

The include (`render_include`) holds both upstreams and the maps that pick one per request; the
server block of `render_config` (or the user's own) uses the variables it defines:
`proxy_pass http://$deployctl_upstream;`, `if ($deployctl_maintenance) { return 503; }` and
`add_header Retry-After $deployctl_retry_after always;`. A change writes the whole include
atomically, runs `nginx -t`, puts the previous file back if that fails, and otherwise sends HUP
to the master and waits until every old worker is shutting down (their titles, in /proc), so
that once `apply()` returns no new request is routed by the old configuration.

The percentage is nginx's `split_clients` on the user id with green listed first: a user is on
green when MurmurHash2(id) falls in the first `percent`% of the hash range, so everyone on green
at 10% is still there at 50%. The include's first line records the routing it renders, so a
later deployctl knows what nginx runs.

`readings()` reads the access log written with `LOG_FORMAT` (log_format name `deployctl`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from deployctl.errors import BadInput, StepFailed
from deployctl.fleet.routers import BLUE, GREEN, Endpoint, Reading, Readings, Split
from deployctl.fleet.routers.files import check_split, last_lines, write_atomic
from deployctl.log import log

if TYPE_CHECKING:
    from deployctl.playbook import RouterConfig

# One access-log line per request; the upstream status is last because with retries it holds
# several values ("502, 200"), and is "-" when nginx answered itself (maintenance).
LOG_FORMAT = "deployctl1 $deployctl_color $status $request_time $upstream_status"
_STATE = "# deployctl-routing: "
_RECENT = 1024  # requests averaged into response_ms, as HAProxy's rtime does


@dataclass(frozen=True)
class Routing:
    """Everything the include says: the split and each color's servers."""

    split: Split = Split()
    blue: tuple[Endpoint, ...] = ()
    green: tuple[Endpoint, ...] = ()

    def to_json(self) -> str:
        return json.dumps({
            "allow": list(self.split.allow), "percent": self.split.percent,
            "maintenance": self.split.maintenance,
            "blue": [[e.host, e.port] for e in self.blue], "green": [[e.host, e.port] for e in self.green],
        })

    @classmethod
    def from_json(cls, text: str) -> Routing:
        data = json.loads(text)
        return cls(Split(tuple(data["allow"]), int(data["percent"]), bool(data["maintenance"])),
                   tuple(Endpoint(h, int(p)) for h, p in data["blue"]),
                   tuple(Endpoint(h, int(p)) for h, p in data["green"]))


def render_include(routing: Routing, *, header: str | None = "X-User-Id", cookie: str | None = None,
                   retry_after: int = 5) -> str:
    """The include for the http{} block: upstreams, the cohort maps, maintenance."""
    check_split(routing.split)
    if header is None and cookie is None:
        raise BadInput("nginx router: the user id needs a header or a cookie")
    if header is not None and not re.fullmatch(r"[A-Za-z0-9-]+", header):
        raise BadInput(f"nginx router: header {header!r}: letters, digits and - only")
    if cookie is not None and not re.fullmatch(r"\w+", cookie):
        raise BadInput(f"nginx router: cookie {cookie!r}: nginx names cookies by letters, digits and _")
    for endpoint in (*routing.blue, *routing.green):
        if not re.fullmatch(r"[A-Za-z0-9.:-]+", endpoint.host) or not 0 < endpoint.port < 65536:
            raise BadInput(f"nginx router: {endpoint.host}:{endpoint.port} is not a host and port")
    split = routing.split
    lines = [_STATE + routing.to_json(), "# Written by deployctl's nginx router, replaced whole each time"]
    for color, endpoints in ((BLUE, routing.blue), (GREEN, routing.green)):
        servers = [f"    server {_hostport(e)};" for e in endpoints] or \
            ["    server 127.0.0.1:1 down;  # no servers yet: whoever is sent here gets 502"]
        lines += [f"upstream deployctl_{color} {{", *servers, "}"]
    sources = ([f"$http_{header.lower().replace('-', '_')}"] if header else []) + \
        ([f"$cookie_{cookie}"] if cookie else [])
    lines += ["map " + sources[0] + " $deployctl_uid {", f"    default {sources[0]};"]
    if len(sources) > 1:
        lines.append(f'    "" {sources[1]};  # no header: the cookie')
    lines.append("}")
    # Green first: it takes the low end of the hash range, which only grows with the percentage.
    # nginx reads a 0% part as "the rest", so 0 and 100 are a single catch-all.
    parts = [f"    {split.percent}% {GREEN};", f"    * {BLUE};"] if 0 < split.percent < 100 else \
        [f"    * {GREEN if split.percent == 100 else BLUE};"]
    lines += ['split_clients "${deployctl_uid}" $deployctl_hashed {', *parts, "}"]
    lines += ["map $deployctl_uid $deployctl_color {", "    default $deployctl_hashed;",
              f'    "" {GREEN if split.percent == 100 else BLUE};  # no user id']
    # A regex, because nginx compares a map's plain strings ignoring case: "Bob" would let "bob" in.
    lines += [f'    "~^{re.escape(uid)}$" {GREEN};' for uid in sorted(set(split.allow))] + ["}"]
    lines += ["map $deployctl_color $deployctl_upstream {", f"    default deployctl_{BLUE};",
              f"    {GREEN} deployctl_{GREEN};", "}"]
    lines += [f"map $host $deployctl_maintenance {{ default {int(split.maintenance)}; }}",
              f'map $host $deployctl_retry_after {{ default "{retry_after if split.maintenance else ""}"; }}']
    return "\n".join(lines) + "\n"


def render_config(*, listen: Endpoint, include: Path, workdir: Path, access_log: Path,
                  user: str | None = None, worker_processes: int = 2) -> str:
    """A whole nginx.conf around the include; every path it writes is inside `workdir`.

    The master's pid goes to `workdir/nginx.pid` (the router's `pid_file`), errors to
    `workdir/error.log`, temporary files under `workdir/tmp`, which must exist. `user` is for
    a master running as root (e.g. "root", so that workers can use temporary directories under
    a private tmp dir).
    """
    tmp = workdir / "tmp"
    return "\n".join([
        *([f"user {user};"] if user else []),
        f"worker_processes {worker_processes};",
        f"pid {workdir / 'nginx.pid'};",
        f"error_log {workdir / 'error.log'} notice;",
        "events { worker_connections 1024; }",
        "http {",
        *(f"    {kind}_temp_path {tmp / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                  "scgi")),
        f"    log_format deployctl '{LOG_FORMAT}';",
        f"    access_log {access_log} deployctl;",
        f"    include {include};",
        "    server {",
        f"        listen {_hostport(listen)};",
        '        if ($deployctl_maintenance) { return 503 "maintenance\\n"; }',
        # An empty value adds no header: Retry-After only comes with maintenance.
        "        add_header Retry-After $deployctl_retry_after always;",
        "        location / {",
        "            proxy_pass http://$deployctl_upstream;",
        "            proxy_set_header Host $host;",
        "        }",
        "    }",
        "}",
    ]) + "\n"


@dataclass
class _Counts:
    requests: int = 0
    errors: int = 0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=_RECENT))

    def reading(self) -> Reading:
        average = sum(self.recent) / len(self.recent) * 1000 if self.recent else None
        return Reading(self.requests, self.errors, average)


class NginxRouter:
    """Drives an nginx whose http{} block includes the file this router renders."""

    def __init__(self, conf: Path, include: Path, *, pid_file: Path | None = None,
                 access_log: Path | None = None,
                 header: str | None = "X-User-Id", cookie: str | None = None, retry_after: int = 5,
                 blue: list[Endpoint] | None = None, green: list[Endpoint] | None = None,
                 nginx: str | None = None, reload_timeout: float = 10.0) -> None:
        """`blue`/`green`: the servers to start from when `include` does not say (not written yet).

        `pid_file`: the master's; by default the `pid` of `conf`, else the one nginx was built with.
        """
        self.conf, self.include, self.pid_file, self.access_log = conf, include, pid_file, access_log
        self.header, self.cookie, self.retry_after = header, cookie, retry_after
        binary = nginx or "nginx"
        # nginx lives in sbin, which a non-root PATH often lacks.
        self.nginx = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/usr/local/sbin") or binary
        self.reload_timeout = reload_timeout
        self.routing = _read_routing(include) or Routing(blue=tuple(blue or ()), green=tuple(green or ()))
        self._counts = {BLUE: _Counts(), GREEN: _Counts()}
        # Counters start with the router, like HAProxy's start with HAProxy: skip what is logged.
        self._log_at = (access_log.stat().st_ino, access_log.stat().st_size) \
            if access_log is not None and access_log.exists() else (0, 0)

    @classmethod
    def from_config(cls, config: RouterConfig, app: str) -> NginxRouter:
        """The router a playbook's `router:` section (type `nginx`) describes."""
        if config.nginx is None:
            raise BadInput(f"{app}: router type nginx needs its settings under `nginx:`")
        settings = config.nginx
        return cls(settings.config, settings.include, access_log=settings.access_log,
                   header=config.user_id.header, cookie=config.user_id.cookie,
                   retry_after=math.ceil(config.retry_after), nginx=settings.binary)

    def apply(self, split: Split) -> None:
        self._install(replace(self.routing, split=split))
        log.info("router.applied", router="nginx", percent=split.percent, allow=len(split.allow),
                 maintenance=split.maintenance)

    def point(self, color: str, endpoints: list[Endpoint]) -> None:
        if color not in (BLUE, GREEN):
            raise BadInput(f"nginx router: color must be {BLUE} or {GREEN}, got {color!r}")
        routing = replace(self.routing, blue=tuple(endpoints)) if color == BLUE else \
            replace(self.routing, green=tuple(endpoints))
        self._install(routing)
        log.info("router.pointed", router="nginx", color=color,
                 servers=[f"{e.host}:{e.port}" for e in endpoints])

    def _install(self, routing: Routing) -> None:
        """Write and test the include (a rejected one is replaced by the previous), then reload.

        An include that passed `nginx -t` stays even if the reload fails (nginx stopped, say):
        it is the latest routing asked for, which an nginx started later should begin with.
        """
        text = render_include(routing, header=self.header, cookie=self.cookie, retry_after=self.retry_after)
        previous = self.include.read_text() if self.include.exists() else None
        write_atomic(self.include, text)
        try:
            test = subprocess.run([self.nginx, "-t", "-q", "-c", str(self.conf)], capture_output=True,
                                  text=True, timeout=60, check=False)
            problem = None if test.returncode == 0 else last_lines(test.stderr + test.stdout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            problem = f"cannot run `{self.nginx} -t -c {self.conf}`: {exc}"
        if problem is not None:
            if previous is None:
                self.include.unlink(missing_ok=True)
            else:
                write_atomic(self.include, previous)
            raise StepFailed(f"nginx -t rejected the new {self.include}, the previous one is back: {problem}")
        self.routing = routing
        self._reload()

    def _reload(self) -> None:
        """HUP the master, then wait until no old worker accepts connections any more."""
        master = self._master()
        old = {pid for pid, leaving in _workers(master).items() if not leaving}
        os.kill(master, signal.SIGHUP)
        deadline = time.monotonic() + self.reload_timeout
        while time.monotonic() < deadline:
            now = _workers(master)
            # A worker that shuts down has closed its listening sockets: it serves only the
            # requests it already had.
            if set(now) - old and all(now.get(pid, True) for pid in old):
                return
            time.sleep(0.02)
        raise StepFailed(f"nginx (master pid {master}) did not take the new configuration within "
                         f"{self.reload_timeout:g}s; see its error log")

    def _master(self) -> int:
        pid_file = self.pid_file or _pid_file(self.conf, self.nginx)
        try:
            pid = int(pid_file.read_text().strip())
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError) as exc:
            raise StepFailed(f"nginx is not running: no master behind pid file {pid_file} ({exc})") from exc
        if not title.startswith(b"nginx: master process"):
            raise StepFailed(f"nginx is not running: pid file {pid_file} names pid {pid}, "
                             "which is not an nginx master")
        return pid

    def readings(self) -> Readings:
        """Counters since the router started, from the access log; None without one."""
        if self.access_log is None:
            return Readings()
        self._read_log(self.access_log)
        return Readings(blue=self._counts[BLUE].reading(), green=self._counts[GREEN].reading())

    def _read_log(self, path: Path) -> None:
        try:
            stat = path.stat()
        except FileNotFoundError:
            return
        inode, offset = self._log_at
        if stat.st_ino != inode or stat.st_size < offset:
            offset = 0  # rotated or truncated: the new file is all new lines
        with path.open("rb") as log_file:
            log_file.seek(offset)
            data = log_file.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line nginx is still writing waits for next time
        self._log_at = (stat.st_ino, offset + len(complete))
        for line in complete.decode(errors="replace").splitlines():
            fields = line.split(" ", 4)
            if len(fields) != 5 or fields[0] != "deployctl1" or fields[1] not in self._counts:
                continue
            if fields[4] == "-":
                continue  # nginx answered itself (maintenance): nothing about a backend
            counts = self._counts[fields[1]]
            counts.requests += 1
            counts.errors += fields[2].startswith("5")
            with contextlib.suppress(ValueError):
                counts.recent.append(float(fields[3]))


def _read_routing(include: Path) -> Routing | None:
    try:
        first = include.read_text().split("\n", 1)[0]
    except FileNotFoundError:
        return None
    if not first.startswith(_STATE):
        return None
    try:
        return Routing.from_json(first[len(_STATE):])
    except (ValueError, KeyError, TypeError) as exc:
        raise StepFailed(f"the first line of {include} is not the routing deployctl wrote ({exc}); "
                         "remove the file to start from the playbook's servers") from exc


def _pid_file(conf: Path, nginx: str) -> Path:
    """Where the master of `conf` writes its pid: its `pid` directive, else nginx's default."""
    try:
        text = re.sub(r"#[^\n]*", "", conf.read_text())
    except OSError as exc:
        raise StepFailed(f"cannot read nginx configuration {conf}: {exc}") from exc
    named = re.search(r"(?:^|[;{}\s])pid\s+([^;\s]+)\s*;", text)
    if named:
        return Path(named[1]) if Path(named[1]).is_absolute() else conf.parent / named[1]
    try:
        built = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=30, check=False).stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StepFailed(f"cannot run `{nginx} -V` to find its pid file: {exc}") from exc
    default = re.search(r"--pid-path=(\S+)", built)
    return Path(default[1]) if default else Path("/run/nginx.pid")


def _workers(master: int) -> dict[int, bool]:
    """The master's worker processes, each with whether it is shutting down."""
    workers = {}
    for folder in Path("/proc").iterdir():
        entry = folder.name
        if not entry.isdigit():
            continue
        try:
            stat = (folder / "stat").read_text()
            title = (folder / "cmdline").read_bytes()
        except OSError:
            continue  # exited meanwhile
        if int(stat.rsplit(")", 1)[1].split()[1]) == master and b"worker process" in title:
            workers[int(entry)] = b"shutting down" in title
    return workers


def _hostport(endpoint: Endpoint) -> str:
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host  # IPv6
    return f"{host}:{endpoint.port}"
