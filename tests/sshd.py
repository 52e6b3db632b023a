"""A real, throwaway OpenSSH server on loopback for the ssh transport's tests.

Keys are made here (ed25519, with `cryptography`, which paramiko depends on), the server gets
its own sshd_config, host key and authorized_keys in a temporary folder, listens on
127.0.0.1 on a free port and logs to a file the tests read. As root it lets root log in with a
key; as another user it runs as that user, who is the only one it can log in.

A missing sshd fails the tests when the CI variable is set (never a silent skip there);
elsewhere they are skipped with the reason.

tests/conftest.py registers the fixtures (`ssh_keys_fixture`, `sshd_fixture`, `own_sshd_fixture`,
`known_hosts_fixture`) for every test module; tests ask for them as `ssh_keys`, `sshd`,
`own_sshd`, `known_hosts`.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.conftest import free_port, require


def make_key(path: Path, passphrase: bytes | None = None) -> str:
    """Write a new ed25519 private key (OpenSSH format, mode 0600); return its public line."""
    key = ed25519.Ed25519PrivateKey.generate()
    encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                  else serialization.NoEncryption())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                encryption)
    path.write_bytes(b"")
    path.chmod(0o600)  # sshd refuses host keys others can read
    path.write_bytes(private)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    path.with_suffix(".pub").write_text(public + "\n")
    return public


@dataclass(frozen=True)
class Keys:
    """The client's side: a key the server accepts, one it does not, one behind a passphrase."""

    dir: Path
    user: Path
    stranger: Path
    locked: Path
    passphrase: str
    authorized_keys: Path


class Sshd:
    """One sshd listening on 127.0.0.1:`port`, with its own host key."""

    def __init__(self, dir: Path, keys: Keys, port: int | None = None) -> None:
        self.dir, self.keys = dir, keys
        self.port = port or free_port()
        self.user = getpass.getuser()
        self.host_key = dir / "host_ed25519"
        self.host_public = make_key(self.host_key)
        self.log = dir / "sshd.log"
        self.config = dir / "sshd_config"
        self.config.write_text("\n".join([
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.host_key}",
            f"AuthorizedKeysFile {keys.authorized_keys}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "StrictModes no",
            "UsePAM no",
            f"PidFile {dir / 'sshd.pid'}",
            "Subsystem sftp internal-sftp",
            "LogLevel VERBOSE",
            # The tests open many connections at once (batches, retries).
            "MaxStartups 100",
            "MaxSessions 50",
            "",
        ]))
        self.proc: subprocess.Popen[bytes] | None = None

    def known_hosts_line(self, public: str | None = None) -> str:
        return f"[127.0.0.1]:{self.port} {public or self.host_public}\n"

    def start(self, timeout: float = 10) -> None:
        binary = require("sshd")
        if os.geteuid() == 0:
            # As root, sshd's privilege separation needs this empty directory to chroot into.
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        seen = self.connections() if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([binary, "-D", "-e", "-f", str(self.config)],
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.proc.returncode}: {self.log.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except OSError:
                time.sleep(0.02)
                continue
            # Wait for sshd to log this probe too, so that connections() counts only the tests'.
            while self.connections() == seen and time.monotonic() < deadline:
                time.sleep(0.01)
            return
        self.stop()
        raise RuntimeError(f"sshd did not listen on port {self.port}: {self.log.read_text()}")

    def stop(self) -> None:
        """Stop the listener; sessions already open go on (as with a real sshd restart)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def sessions(self) -> list[int]:
        """Pids of the sshd processes serving open connections (descendants of the listener)."""
        if self.proc is None:
            return []
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
        found, todo = [], list(children.get(self.proc.pid, []))
        while todo:
            pid = todo.pop()
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if comm.startswith("sshd"):  # `sshd`, or `sshd-session` in OpenSSH 9.8 and later
                found.append(pid)
                todo.extend(children.get(pid, []))
        return found

    def kill_sessions(self, pids: list[int] | None = None) -> int:
        """Cut open connections as a crash or a network failure would: SIGKILL, no goodbye."""
        pids = self.sessions() if pids is None else pids
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def connections(self) -> int:
        """How many TCP connections the server has accepted so far (from its log)."""
        return self.log.read_text(errors="replace").count("Connection from 127.0.0.1")


@pytest.fixture(scope="session", name="ssh_keys")
def ssh_keys_fixture(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    dir = tmp_path_factory.mktemp("ssh-keys")
    passphrase = "correct horse battery staple 42"
    user_public = make_key(dir / "user")
    make_key(dir / "stranger")
    locked_public = make_key(dir / "locked", passphrase.encode())
    authorized = dir / "authorized_keys"
    authorized.write_text(f"{user_public}\n{locked_public}\n")
    return Keys(dir, dir / "user", dir / "stranger", dir / "locked", passphrase, authorized)


@pytest.fixture(scope="session", name="sshd")
def sshd_fixture(tmp_path_factory: pytest.TempPathFactory, ssh_keys: Keys) -> Iterator[Sshd]:
    """A server shared by the tests that leave it as they found it."""
    server = Sshd(tmp_path_factory.mktemp("sshd"), ssh_keys)
    server.start()
    yield server
    server.kill_sessions()
    server.stop()


@pytest.fixture(name="own_sshd")
def own_sshd_fixture(tmp_path: Path, ssh_keys: Keys) -> Iterator[Sshd]:
    """A server of the test's own, to cut connections and restart it."""
    (tmp_path / "sshd").mkdir()
    server = Sshd(tmp_path / "sshd", ssh_keys)
    server.start()
    yield server
    server.kill_sessions()
    server.stop()


@pytest.fixture(name="known_hosts")
def known_hosts_fixture(tmp_path: Path, sshd: Sshd) -> Path:
    """A known_hosts file holding the shared server's real host key."""
    path = tmp_path / "known_hosts"
    path.write_text(sshd.known_hosts_line())
    return path
