"""The `haproxy` router: moves users between blue and green through HAProxy's runtime API.

A split change never reloads HAProxy. The frontend `render_config` writes reads the split from
two map files in the router's state directory: `allow.map` (user id -> 1) and `control.map`
(`percent`, `maintenance`, `retry_after`). `apply()` replaces each map over the admin socket in
one atomic `prepare map` / `add map @<version>` / `commit map`, and rewrites the same files on
disk first, so that a reload or a restart starts from the current split. `point()` re-addresses
a backend's fixed server slots with `set server`, and saves `show servers state` to the
server-state file HAProxy loads at start, for the same reason.

A user's bucket is `crc32(user id) mod 100`: HAProxy's `crc32` converter without avalanche is
the CRC-32 of `zlib.crc32`, so `bucket()` tells in Python where HAProxy sends a user. A user is
on green when the bucket is below `percent`, hence everyone on green at 10% is still there at 50%.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import math
import re
import socket
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from deployctl.errors import BadInput, StepFailed
from deployctl.fleet.routers import BLUE, GREEN, Endpoint, Reading, Readings, Split
from deployctl.fleet.routers.files import check_split, write_atomic
from deployctl.log import log

if TYPE_CHECKING:
    from deployctl.playbook import RouterConfig

ALLOW_MAP, CONTROL_MAP, SERVER_STATE = "allow.map", "control.map", "servers.state"
_NEW_VERSION = re.compile(r"New version created: (\d+)")
# srv_admin_state bits of maintenance: forced, inherited, failed resolution (SRV_ADMF_MAINT).
# Not 0x04, "disabled in the configuration", which `set server ... state ready` leaves set.
_MAINT = 0x01 | 0x02 | 0x20


def bucket(user_id: str) -> int:
    """The user's bucket (0-99), as the frontend of `render_config` computes it."""
    return zlib.crc32(user_id.encode()) % 100


def color_of(split: Split, user_id: str | None) -> str:
    """Where `render_config`'s frontend sends a request carrying `user_id` (None: no id)."""
    if user_id and user_id in split.allow:
        return GREEN
    if split.percent >= 100 or (user_id and bucket(user_id) < split.percent):
        return GREEN
    return BLUE


class RuntimeApi:
    """HAProxy's runtime API on its admin socket: one command per connection."""

    def __init__(self, socket_path: Path, timeout: float = 5.0) -> None:
        self.socket_path, self.timeout = socket_path, timeout

    def run(self, command: str) -> str:
        """Send `command`; return HAProxy's answer without its trailing blank line."""
        where = f"HAProxy admin socket {self.socket_path}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            try:
                sock.connect(str(self.socket_path))
                sock.sendall(command.encode() + b"\n")
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise StepFailed(
                    f"{where}: {exc.strerror}; is HAProxy running, with "
                    f"`stats socket {self.socket_path} level admin` in its global section?"
                ) from exc
            except TimeoutError as exc:
                raise StepFailed(f"{where}: no answer to `{command}` within {self.timeout:g}s") from exc
            except OSError as exc:
                raise StepFailed(f"{where}: {exc}") from exc
        answer = b"".join(chunks).decode(errors="replace").rstrip("\n")
        if answer.startswith("Permission denied"):
            raise StepFailed(f"{where} refused `{command}`: the socket needs `level admin`")
        return answer

    def run_quiet(self, command: str) -> None:
        """Run a command that answers nothing when it works."""
        answer = self.run(command)
        if answer:
            raise StepFailed(f"HAProxy refused `{command}`: {answer}")


@dataclass(frozen=True)
class Slot:
    """One server line of a backend, as `show servers state` reports it."""

    name: str
    addr: str
    port: int
    serving: bool  # out of maintenance (health checks, if the user added any, may still fail it)


def write_map_files(state_dir: Path, split: Split, retry_after: int = 5) -> None:
    """Write the two map files for `split` (before HAProxy's first start, and at every change)."""
    check_split(split)
    state_dir.mkdir(parents=True, exist_ok=True)
    header = "# Written by deployctl; HAProxy loads it at start and deployctl updates it live.\n"
    write_atomic(state_dir / ALLOW_MAP, header + "".join(f"{uid} 1\n" for uid in sorted(set(split.allow))))
    control = _control(split, retry_after)
    write_atomic(state_dir / CONTROL_MAP, header + "".join(f"{k} {v}\n" for k, v in control.items()))


def _control(split: Split, retry_after: int) -> dict[str, str]:
    return {"percent": str(split.percent), "maintenance": str(int(split.maintenance)),
            "retry_after": str(retry_after)}


class HaproxyRouter:
    """Drives a HAProxy whose configuration came from `render_config` (or does the same)."""

    def __init__(self, socket_path: Path, state_dir: Path, *, blue_backend: str = "blue",
                 green_backend: str = "green", retry_after: int = 5, timeout: float = 5.0) -> None:
        if any(ch.isspace() for ch in str(state_dir)):
            # The runtime API splits its commands on blanks; map names are file paths.
            raise BadInput(f"haproxy router: state directory {state_dir} must not contain blanks")
        self.api = RuntimeApi(socket_path, timeout)
        self.state_dir, self.retry_after = state_dir, retry_after
        self.backends = {BLUE: blue_backend, GREEN: green_backend}

    @classmethod
    def from_config(cls, config: RouterConfig, app: str) -> HaproxyRouter:
        """The router a playbook's `router:` section (type `haproxy`) describes."""
        if config.haproxy is None:
            raise BadInput(f"{app}: router type haproxy needs its settings under `haproxy:`")
        settings = config.haproxy
        return cls(settings.socket, settings.maps, blue_backend=settings.blue_backend,
                   green_backend=settings.green_backend, retry_after=math.ceil(config.retry_after))

    def apply(self, split: Split) -> None:
        """Replace both maps, each at once; no reload, so no connection is touched.

        The files on disk are written first, even when HAProxy does not answer: a HAProxy
        started later begins from the latest split asked for.
        """
        write_map_files(self.state_dir, split, self.retry_after)
        allow = {uid: "1" for uid in split.allow}
        control = _control(split, self.retry_after)
        # Entering maintenance, stop traffic before the split moves; leaving it, have the split
        # ready before anyone comes back.
        order = [(CONTROL_MAP, control), (ALLOW_MAP, allow)] if split.maintenance else \
            [(ALLOW_MAP, allow), (CONTROL_MAP, control)]
        for name, entries in order:
            self._replace_map(self.state_dir / name, entries)
        log.info("router.applied", router="haproxy", percent=split.percent, allow=len(split.allow),
                 maintenance=split.maintenance)

    def _replace_map(self, path: Path, entries: dict[str, str]) -> None:
        answer = self.api.run(f"prepare map {path}")
        version = _NEW_VERSION.search(answer)
        if version is None:
            raise StepFailed(f"HAProxy cannot update map {path}: {answer} (its configuration must "
                             "name the map by exactly this path; see render_config)")
        for key, value in entries.items():
            self.api.run_quiet(f"add map @{version[1]} {path} {key} {value}")
        self.api.run_quiet(f"commit map @{version[1]} {path}")

    def point(self, color: str, endpoints: list[Endpoint]) -> None:
        """Put `endpoints` in `color`'s server slots: new ones first, then the old ones in maint."""
        if color not in self.backends:
            raise BadInput(f"haproxy router: color must be {BLUE} or {GREEN}, got {color!r}")
        backend = self.backends[color]
        slots = self.slots(backend)
        wanted = list(dict.fromkeys((_ip(e.host), e.port) for e in endpoints))
        keep = [s for s in slots if s.serving and (s.addr, s.port) in wanted]
        to_add = [w for w in wanted if w not in {(s.addr, s.port) for s in keep}]
        # Idle slots first, so that the servers now taking traffic keep it until the new ones
        # are ready; a backend with too few slots re-addresses busy ones in place.
        free = sorted((s for s in slots if s not in keep), key=lambda s: s.serving)
        if len(to_add) > len(free):
            raise StepFailed(f"HAProxy backend {backend} has {len(slots)} server slots, "
                             f"{len(wanted)} servers asked for; render the config with more slots")
        used = {s.name for s in keep}
        for (addr, port), slot in zip(to_add, free, strict=False):
            self._set_addr(backend, slot.name, addr, port)
            self.api.run_quiet(f"set server {backend}/{slot.name} state ready")
            used.add(slot.name)
        for slot in slots:
            if slot.name not in used:
                self.api.run_quiet(f"set server {backend}/{slot.name} state maint")
        serving = {(s.addr, s.port) for s in self.slots(backend) if s.serving}
        if serving != set(wanted):
            raise StepFailed(f"HAProxy backend {backend} serves {sorted(serving)} after point(), "
                             f"expected {sorted(wanted)}")
        write_atomic(self.state_dir / SERVER_STATE, self.api.run("show servers state") + "\n")
        log.info("router.pointed", router="haproxy", color=color,
                 servers=[f"{e.host}:{e.port}" for e in endpoints])

    def _set_addr(self, backend: str, server: str, addr: str, port: int) -> None:
        command = f"set server {backend}/{server} addr {addr} port {port}"
        answer = self.api.run(command)
        if answer and "changed from" not in answer and "no need to change" not in answer:
            raise StepFailed(f"HAProxy refused `{command}`: {answer}")

    def slots(self, backend: str) -> list[Slot]:
        """The backend's server slots and whether each is out of maintenance."""
        answer = self.api.run(f"show servers state {backend}")
        lines = answer.splitlines()
        header = next((line[2:].split() for line in lines if line.startswith("# ")), None)
        if header is None:
            raise StepFailed(f"HAProxy has no backend {backend}: {answer}")
        slots = []
        for line in lines:
            if not line or line.startswith("#") or line.strip() == "1":
                continue
            row = dict(zip(header, line.split(), strict=False))
            serving = not int(row["srv_admin_state"]) & _MAINT
            slots.append(Slot(row["srv_name"], row["srv_addr"], int(row["srv_port"]), serving))
        return slots

    def readings(self) -> Readings:
        """Each backend's counters from `show stat`; 5xx include HAProxy's own 502/503/504."""
        table = self.api.run("show stat").removeprefix("# ")
        found: dict[str, Reading] = {}
        names = {name: color for color, name in self.backends.items()}
        for row in csv.DictReader(io.StringIO(table)):
            color = names.get(row.get("pxname") or "")
            if color is None or row.get("svname") != "BACKEND":
                continue
            requests = int(row.get("req_tot") or row.get("stot") or 0)
            found[color] = Reading(
                requests=requests,
                errors=int(row.get("hrsp_5xx") or 0),
                # rtime averages the last 1024 requests; with none it says 0, which is no data.
                response_ms=float(row["rtime"]) if requests and row.get("rtime") else None,
            )
        return Readings(blue=found.get(BLUE), green=found.get(GREEN))


def _ip(host: str) -> str:
    """`set server addr` takes an address: resolve a name here, once."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        return str(socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0])
    except OSError as exc:
        raise StepFailed(f"haproxy router: cannot resolve {host}: {exc}") from exc


def render_config(*, listen: Endpoint, socket_path: Path, state_dir: Path, blue: list[Endpoint],
                  green: list[Endpoint], slots: int = 4, header: str | None = "X-User-Id",
                  cookie: str | None = None, blue_backend: str = "blue",
                  green_backend: str = "green") -> str:
    """A haproxy.cfg to start from: the cohort rules, two backends of `slots` servers each.

    The user id is the `header`, or when a request has none, the `cookie`. Unused slots start in
    maintenance; `point()` uses them so that a switch adds the new servers before it retires the
    old ones, hence two slots per server a color runs on. Call `write_map_files` before the first
    start: HAProxy refuses to start without its maps.
    """
    if header is None and cookie is None:
        raise BadInput("haproxy router: the user id needs a header or a cookie")
    allow, control = state_dir / ALLOW_MAP, state_dir / CONTROL_MAP
    uid = []
    if header:
        # fhdr: the whole header, where hdr would cut a value at its commas.
        uid.append(f"    http-request set-var(txn.uid) req.fhdr({header})")
    if cookie:
        cond = " if !{ var(txn.uid) -m len gt 0 }" if header else ""
        uid.append(f"    http-request set-var(txn.uid) req.cook({cookie}){cond}")
    lines = [
        "global",
        f"    stats socket {socket_path} mode 600 level admin expose-fd listeners",
        f"    server-state-file {state_dir / SERVER_STATE}",
        "",
        "defaults",
        "    mode http",
        "    timeout connect 5s",
        "    timeout client 60s",
        "    timeout server 60s",
        "",
        "frontend deployctl",
        f"    bind {_hostport(listen)}",
        *uid,
        f"    http-request set-var(txn.pct) str(percent),map_str_int({control},0)",
        "    http-request return status 503 content-type text/plain string \"maintenance\\n\""
        f" hdr Retry-After \"%[str(retry_after),map({control},5)]\""
        f" if {{ str(maintenance),map_str_int({control},0) -m int eq 1 }}",
        "    acl has_uid var(txn.uid) -m len gt 0",
        f"    use_backend {green_backend} if has_uid {{ var(txn.uid),map_str_int({allow},0) -m int eq 1 }}",
        f"    use_backend {green_backend} if {{ var(txn.pct) -m int ge 100 }}",
        # bucket - percent < 0, i.e. crc32(uid) mod 100 < percent
        f"    use_backend {green_backend} if has_uid"
        " { var(txn.uid),crc32,mod(100),sub(txn.pct) -m int lt 0 }",
        f"    default_backend {blue_backend}",
    ]
    for name, endpoints in ((blue_backend, blue), (green_backend, green)):
        if len(endpoints) > slots:
            raise BadInput(f"haproxy router: {len(endpoints)} servers for {name}, only {slots} slots")
        lines += ["", f"backend {name}", "    load-server-state-from-file global"]
        for n in range(slots):
            if n < len(endpoints):
                lines.append(f"    server s{n + 1} {_hostport(endpoints[n])}")
            else:
                lines.append(f"    server s{n + 1} 127.0.0.1:1 disabled")
    return "\n".join(lines) + "\n"


def _hostport(endpoint: Endpoint) -> str:
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host  # IPv6
    return f"{host}:{endpoint.port}"
