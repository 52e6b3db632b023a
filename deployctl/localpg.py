"""A throwaway PostgreSQL cluster in a folder: the embedded default for the demo and the tests.

PostgreSQL refuses to run as root, so when we are root the server binaries run as the
unprivileged `postgres` user (the data folder is handed to it); any other user runs them as
themselves. The cluster listens on 127.0.0.1 only, with `trust` authentication: it is for a
laptop or a CI machine, never for production.

    python -m deployctl.localpg start .demo/pg     # prints the DSN of the `postgres` database
    python -m deployctl.localpg stop .demo/pg
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

# Logical decoding needs wal_level=logical; fsync off because the cluster is throwaway.
SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
    "wal_level": "logical",
    "max_replication_slots": "10",
    "max_wal_senders": "10",
    "fsync": "off",
    "full_page_writes": "off",
    "max_connections": "100",
}


class LocalPgError(RuntimeError):
    """The throwaway cluster could not be created or started."""


def server_bindir() -> Path:
    """Where initdb and pg_ctl are: PATH first, then Debian's versioned folders."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    if candidates:
        return candidates[0].parent
    raise LocalPgError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install them "
        "(Debian: apt-get install postgresql) or put them on PATH"
    )


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


def _free_port(wanted: int = 0) -> int:
    """`wanted` if nothing listens on it, else any free port."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
        try:
            s.bind(("127.0.0.1", wanted))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reachable_by_server_user(path: Path) -> bool:
    if os.geteuid() != 0:
        return True
    probe = subprocess.run(
        _as_server_user(["test", "-x", str(path)]), capture_output=True, check=False
    )
    return probe.returncode == 0


class LocalCluster:
    """A cluster under `root` (data in root/data, log in root/postgres.log)."""

    def __init__(self, root: str | os.PathLike[str], settings: dict[str, str] | None = None) -> None:
        self.requested = Path(root).resolve()
        self.root = self.requested
        self.bindir = server_bindir()
        self.settings = {**SERVER_SETTINGS, **(settings or {})}

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def port(self) -> int:
        return int((self.root / "port").read_text())

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _locate(self) -> None:
        # A root-owned checkout under /root is not traversable by `postgres`: keep the data in
        # a temp folder then, and leave a pointer in the requested folder.
        self.requested.mkdir(parents=True, exist_ok=True)
        pointer = self.requested / "location"
        if pointer.exists():
            self.root = Path(pointer.read_text().strip())
        elif not _reachable_by_server_user(self.requested):
            digest = hashlib.sha256(str(self.requested).encode()).hexdigest()[:12]
            self.root = Path(tempfile.gettempdir()) / f"deployctl-pg-{digest}"
            pointer.write_text(str(self.root))
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, user="postgres")

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        argv = _as_server_user([str(self.bindir / tool), *args])
        return subprocess.run(argv, capture_output=True, text=True, check=False)

    def running(self) -> bool:
        self._locate()
        if not (self.data / "PG_VERSION").exists():
            return False
        return self._run("pg_ctl", "-D", str(self.data), "status").returncode == 0

    def start(self) -> str:
        """Create the cluster if needed and start it; return the DSN of `postgres`."""
        self._locate()
        if not (self.data / "PG_VERSION").exists():
            init = self._run(
                "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                "-E", "UTF8", "--locale=C", "--no-sync",
            )
            if init.returncode != 0:
                raise LocalPgError(f"initdb failed: {init.stderr.strip()}")
        if self.running():
            return self.dsn()
        # Started again, the cluster keeps its port when it can: its clients' DSNs stay right.
        known = self.root / "port"
        port = _free_port(int(known.read_text()) if known.exists() else 0)
        known.write_text(str(port))
        options = " ".join(f"-c {k}={v!r}" if v == "" else f"-c {k}={v}"
                           for k, v in self.settings.items())
        started = self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "postgres.log"),
            "-w", "-t", "60", "-o", f"-p {port} {options}", "start",
        )
        if started.returncode != 0:
            log = (self.root / "postgres.log")
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise LocalPgError(f"pg_ctl start failed: {started.stderr.strip()}\n{tail}")
        return self.dsn()

    def restart(self) -> None:
        """Stop (fast: every session ends) and start again on the same port: what clients see
        of a server restart or a failover."""
        done = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "postgres.log"),
                         "-m", "fast", "-w", "-t", "60", "restart")
        if done.returncode != 0:
            raise LocalPgError(f"pg_ctl restart failed: {done.stderr.strip()}")

    def stop(self) -> None:
        if self.running():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.requested, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in {"start", "stop", "destroy", "dsn"}:
        print("usage: python -m deployctl.localpg start|stop|destroy|dsn FOLDER", file=sys.stderr)
        return 2
    cluster = LocalCluster(args[1])
    try:
        if args[0] == "start":
            print(cluster.start())
        elif args[0] == "stop":
            cluster.stop()
        elif args[0] == "destroy":
            cluster.destroy()
        else:
            cluster._locate()
            print(cluster.dsn())
    except LocalPgError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
