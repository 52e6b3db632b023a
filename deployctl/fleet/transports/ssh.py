"""The `ssh` transport: deploys to a fleet of hosts over SSH (paramiko).

Host keys are checked strictly against a known_hosts file given explicitly: an unknown or a
changed key is an error, never accepted. Connecting is retried with backoff when the network or
the server fails (refused, reset, timeout), never when a host key or our key is refused. Hosts
are worked on in consecutive batches, at most `parallel` at a time; a failure stops before the
next batch.

What runs on a host is built as data (argv lists, quoted for the remote shell with shlex.join);
`Remote` runs it. A release is uploaded by SFTP under a temporary name and renamed into place,
then made live by renaming a new `current` symlink over the old one (rename(2) is atomic), so a
half-finished deploy never serves. The application's process is started detached, with a
pidfile holding its pid and command line, as the `local` transport does.
"""

from __future__ import annotations

import contextlib
import contextvars
import getpass
import json
import os
import posixpath
import re
import secrets
import shlex
import socket
import stat
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import paramiko
from paramiko.pkey import UnknownKeyType
from paramiko.ssh_exception import IncompatiblePeer
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from deployctl.errors import BadInput, StepFailed
from deployctl.fleet.process import ProcessSpec
from deployctl.log import log
from deployctl.redact import register_secret

T = TypeVar("T")
OutputSink = Callable[[str, str], None]
"""Receives each line a remote command prints: (host name, line)."""

TAIL = 5                  # lines of output an error quotes
KEEP_OUTPUT = 1000        # lines a CommandResult keeps (all of them went to the sink)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_VERSION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*\Z")


def log_output(host: str, line: str) -> None:
    """The default sink: one log line per output line, prefixed with the host's name."""
    log.info(f"{host}: {line}", host=host)


@dataclass(frozen=True)
class Host:
    """One machine of the fleet. `key` None: authenticate with the ssh-agent's keys."""

    name: str
    address: str
    port: int = 22
    user: str = field(default_factory=getpass.getuser)
    key: Path | None = None
    passphrase_env: str | None = None  # names the environment variable holding `key`'s passphrase


@dataclass(frozen=True)
class CommandResult:
    host: str
    status: int
    output: list[str]  # the last KEEP_OUTPUT lines, stdout and stderr merged


class SshError(StepFailed):
    """Something failed on one host, named by `host`."""

    def __init__(self, host: str, problem: str) -> None:
        self.host = host
        super().__init__(f"{host}: {problem}")


class HostKeyUnknown(SshError):
    """The host's key is not in known_hosts; nothing was sent to the host."""


class HostKeyChanged(SshError):
    """known_hosts holds another key for the host: possibly a man in the middle."""


class AuthFailed(SshError):
    """The host refused our key(s)."""


class Unreachable(SshError):
    """No connection after every attempt."""


class ConnectionLost(SshError):
    """The connection dropped while a command ran, and the command could not be run again."""


class CommandFailed(SshError):
    """A remote command ended with a non-zero status."""

    def __init__(self, host: str, command: str, status: int, output: list[str],
                 how: str | None = None) -> None:
        self.status, self.output = status, output
        how = how or (f"exited with status {status}" if status >= 0
                      else "ended without an exit status (killed by a signal?)")
        super().__init__(host, f"`{command}` {how}; last output: {' | '.join(output[-TAIL:]) or 'none'}")


class HostsFailed(StepFailed):
    """Some hosts failed; the hosts of later batches were not touched."""

    def __init__(self, failures: dict[str, Exception], done: dict[str, Any], skipped: list[str]) -> None:
        self.failures, self.done, self.skipped = failures, done, skipped
        problems = "; ".join(str(e) if isinstance(e, SshError) else f"{name}: {e}"
                             for name, e in failures.items())
        total = len(failures) + len(done) + len(skipped)
        message = f"{len(failures)} of {total} hosts failed: {problems}"
        if skipped:
            message += f" (not started: {', '.join(skipped)})"
        super().__init__(message)


class _Lost(Exception):
    """The connection dropped; `started` says whether the command may have run."""

    def __init__(self, started: bool) -> None:
        self.started = started


# Commands, built as data ---------------------------------------------------------------------

def remote_command(argv: Sequence[str], env: Mapping[str, str] | None = None,
                   cwd: str | None = None) -> str:
    """The line the remote shell runs: `cd DIR && env K=V argv...`, every word quoted."""
    if not argv:
        raise BadInput("a remote command needs at least a program name")
    words = list(argv)
    if env:
        bad = [name for name in env if not _ENV_NAME.match(name)]
        if bad:
            raise BadInput(f"environment variable names must be letters, digits and _, got {bad}")
        # Not paramiko's set_environment_variable: sshd refuses names outside its AcceptEnv.
        words = ["env", *(f"{name}={value}" for name, value in env.items()), *words]
    line = shlex.join(words)
    return f"cd {shlex.quote(cwd)} && {line}" if cwd else line


def shown_command(argv: Sequence[str], env: Mapping[str, str] | None = None,
                  cwd: str | None = None) -> str:
    """`remote_command` with the variables' values masked, for logs and errors."""
    return remote_command(argv, dict.fromkeys(env, "***") if env else None, cwd)


def switch_argv(root: str, version: str, tag: str, prune: Sequence[str] = ()) -> list[str]:
    """Make releases/VERSION live, then remove the releases in `prune`.

    A new `current.tmp-TAG` link is renamed over `current`: one rename(2), so `current` always
    resolves. Each pruned release is first renamed to a hidden name, so none is seen half gone;
    leftovers of interrupted uploads and prunes older than an hour go too.
    """
    script = """set -e
root=$1 version=$2 tag=$3; shift 3
ln -sfn -- "releases/$version" "$root/current.tmp-$tag"
mv -fT -- "$root/current.tmp-$tag" "$root/current"
cd -- "$root/releases"
for v; do mv -T -- "$v" ".$v.pruned-$tag"; done
rm -rf -- .*.pruned-"$tag"
find . -maxdepth 1 \\( -name '.*.tmp-*' -o -name '.*.pruned-*' \\) -mmin +60 -exec rm -rf -- {} +
"""
    return ["sh", "-c", script, "deployctl-switch", root, version, tag, *prune]


def releases_to_prune(releases: Mapping[str, float], live: str | None, keep: int) -> list[str]:
    """The releases beyond the `keep` most recent (by modification time), never the live one."""
    newest = sorted(releases, key=lambda name: (releases[name], name), reverse=True)
    return sorted(name for name in newest[keep:] if name != live)


# A wrapper shell records the exit status: the process is no child of anything we can ask later.
_WRAP = 'status=$1; shift; "$@"; echo "$?" >"$status"'
_START = """set -e
log=$1 pidfile=$2 status=$3 cwd=$4 argv=$5; shift 5
(umask 077; mkdir -p -- "$(dirname -- "$pidfile")")
cd -- "$cwd"
rm -f -- "$status"
setsid nohup "$@" </dev/null >>"$log" 2>&1 &
printf '{"pid": %s, "argv": %s}\\n' "$!" "$argv" >"$pidfile.tmp"
mv -f -- "$pidfile.tmp" "$pidfile"
echo "$!"
"""


def start_argv(spec: ProcessSpec, stem: str) -> list[str]:
    """What starts `spec` detached: its own session, output appended to `stem`.log, and
    `stem`.pid holding its pid and command line (the wrapper's) once it runs.

    `stem` is absolute: the process runs in `spec.cwd`.
    """
    wrapped = ["sh", "-c", _WRAP, "deployctl-app", f"{stem}.status", *spec.argv]
    return ["sh", "-c", _START, "deployctl-start", f"{stem}.log", f"{stem}.pid", f"{stem}.status",
            str(spec.cwd), json.dumps(wrapped), *wrapped]


def check_release(version: str, keep: int) -> None:
    """A version label that is a plain folder name, and at least the live release kept."""
    if not _VERSION.match(version):
        raise BadInput(f"release version {version!r}: use letters, digits and . _ + - only")
    if keep < 1:
        raise BadInput(f"keep: at least the live release is kept, got {keep}")


def batch_size(count: int, batch: int | str | None) -> int:
    """Hosts per batch: `2`, `"25%"` of `count` (rounded down, at least one), or all (None)."""
    if batch is None:
        return max(count, 1)
    if isinstance(batch, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%\s*", batch)
        if not match or not 0 < float(match[1]) <= 100:
            raise BadInput(f"batch: expected a number of hosts or a percentage such as '25%', got {batch!r}")
        return max(1, int(count * float(match[1]) / 100))
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise BadInput(f"batch: expected a number of hosts (1 or more) or a percentage, got {batch!r}")
    return batch


def plan_batches(hosts: Sequence[Host], batch: int | str | None) -> list[list[Host]]:
    """The consecutive batches `hosts` are worked on in."""
    size = batch_size(len(hosts), batch)
    return [list(hosts[i:i + size]) for i in range(0, len(hosts), size)]


# Keys ------------------------------------------------------------------------------------------

def load_key(host: Host) -> paramiko.PKey | None:
    """`host`'s private key (None: use the agent). Errors never quote the key or passphrase."""
    if host.key is None:
        return None
    passphrase = None
    if host.passphrase_env:
        passphrase = os.environ.get(host.passphrase_env)
        if passphrase is None:
            raise BadInput(f"hosts.{host.name}.passphrase_env: {host.passphrase_env} is not set "
                           f"(it should hold the passphrase of {host.key})")
        register_secret(passphrase)
    where = f"hosts.{host.name}.key: {host.key}"
    try:
        # paramiko hands the passphrase to `cryptography`, which wants bytes.
        return paramiko.PKey.from_path(host.key, passphrase.encode() if passphrase else None)  # type: ignore[arg-type]
    except OSError as exc:
        raise BadInput(f"{where}: cannot read it ({exc.strerror})") from None
    except TypeError:
        if passphrase is None:
            raise BadInput(f"{where}: the key is encrypted; name the environment variable holding "
                           "its passphrase in passphrase_env") from None
        raise BadInput(f"{where}: the key is not encrypted; remove passphrase_env") from None
    except (ValueError, paramiko.SSHException, UnknownKeyType):
        raise BadInput(f"{where}: not an ed25519, ECDSA or RSA private key in OpenSSH or PEM format, "
                       "or the passphrase is wrong") from None


def _makedirs(sftp: paramiko.SFTPClient, path: str) -> None:
    """`mkdir -p` by SFTP."""
    missing = []
    while path not in ("", "/"):
        try:
            sftp.stat(path)
            break
        except FileNotFoundError:
            missing.append(path)
            path = posixpath.dirname(path)
    for folder in reversed(missing):
        sftp.mkdir(folder)


def _transient(exc: BaseException) -> bool:
    """Worth another attempt: the network or the server's state, not a key (ours or theirs)."""
    if isinstance(exc, SshError | paramiko.BadHostKeyException | paramiko.AuthenticationException
                  | IncompatiblePeer | socket.gaierror):
        return False
    return isinstance(exc, OSError | EOFError | paramiko.SSHException)


def _describe(exc: BaseException | None) -> str:
    return (str(exc) or type(exc).__name__) if exc is not None else "unknown error"


def _gone(transport: paramiko.Transport) -> bool:
    """Whether the connection is dead, after a channel or SFTP call failed on it."""
    if transport.is_active():
        # The transport closes its channels just before it marks itself inactive.
        transport.join(0.2)
    return not transport.is_active()


class _RejectUnknown(paramiko.RejectPolicy):
    """RejectPolicy, with an error that says how to add the host once its key is verified."""

    def __init__(self, host: Host, known_hosts: Path) -> None:
        self.host, self.known_hosts = host, known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> NoReturn:
        port = f"-p {self.host.port} " if self.host.port != 22 else ""
        raise HostKeyUnknown(
            self.host.name,
            f"{hostname} is not in known_hosts {self.known_hosts} (it offered {key.get_name()} "
            f"{key.fingerprint}); no command was sent. Verify that fingerprint with the host's "
            f"administrator, then add the key: ssh-keyscan {port}{shlex.quote(self.host.address)} >> "
            f"{shlex.quote(str(self.known_hosts))}")


@dataclass(frozen=True)
class SshOptions:
    known_hosts: Path
    output: OutputSink = log_output
    rundir: str = ".deployctl/run"  # pidfiles and logs; relative: to the login directory
    connect_attempts: int = 5
    connect_timeout: float = 10.0
    backoff: float = 0.5            # first wait between attempts, doubled each time, at most 10 s
    reruns: int = 2                 # runs of an idempotent command after a lost connection


# One host ------------------------------------------------------------------------------------

class Remote:
    """One host's connection: commands, files, releases and the application's process.

    Not thread-safe: SshTransport gives each host to one thread at a time.
    """

    def __init__(self, host: Host, options: SshOptions, key: paramiko.PKey | None) -> None:
        self.host, self.options, self.key = host, options, key
        self._ssh: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._home: str | None = None

    @property
    def where(self) -> str:
        return f"{self.host.user}@{self.host.address}:{self.host.port}"

    # Connection -------------------------------------------------------------------------------

    def close(self) -> None:
        if self._ssh is not None:
            self._ssh.close()
        self._ssh = self._sftp = self._home = None

    def _client(self) -> paramiko.SSHClient:
        if self._ssh is not None:
            transport = self._ssh.get_transport()
            if transport is not None and transport.is_active():
                return self._ssh
            self.close()
        retrying = Retrying(
            stop=stop_after_attempt(self.options.connect_attempts),
            wait=wait_exponential(multiplier=self.options.backoff, max=10),
            retry=retry_if_exception(_transient), before_sleep=self._log_retry, reraise=True)
        try:
            self._ssh = retrying(self._connect_once)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            tries = f" after {self.options.connect_attempts} attempts" if _transient(exc) else ""
            raise Unreachable(self.host.name, f"cannot connect to {self.where}{tries}: "
                              f"{_describe(exc)}") from exc
        return self._ssh

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning("ssh connect failed, retrying", host=self.host.name, attempt=state.attempt_number,
                    error=_describe(error))

    def _connect_once(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        try:
            # Only this file: never the user's ~/.ssh/known_hosts, and never written to.
            client.get_host_keys().load(str(self.options.known_hosts))
            client.set_missing_host_key_policy(_RejectUnknown(self.host, self.options.known_hosts))
            if self.key is None:
                self._check_agent()
            timeout = self.options.connect_timeout
            client.connect(self.host.address, port=self.host.port, username=self.host.user,
                           pkey=self.key, allow_agent=self.key is None, look_for_keys=False,
                           timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                           channel_timeout=timeout)
        except paramiko.BadHostKeyException as exc:
            client.close()
            name = self.host.address if self.host.port == 22 else f"[{self.host.address}]:{self.host.port}"
            known = shlex.quote(str(self.options.known_hosts))
            raise HostKeyChanged(
                self.host.name,
                f"the host key of {name} CHANGED: {self.options.known_hosts} holds "
                f"{exc.expected_key.get_name()} {exc.expected_key.fingerprint}, the server offered "
                f"{exc.key.get_name()} {exc.key.fingerprint}. Someone may be intercepting the "
                "connection (man-in-the-middle), or the host was reinstalled; no command was "
                f"sent. Once the new key is verified: ssh-keygen -R '{name}' -f {known}, then add "
                "the new one with ssh-keyscan") from None
        except paramiko.AuthenticationException as exc:
            client.close()
            how = f"key {self.key.fingerprint}" if self.key else "the ssh-agent's keys"
            raise AuthFailed(self.host.name, f"{self.where} refused {how} ({_describe(exc)}); is the "
                             "public key in that user's authorized_keys?") from None
        except BaseException:
            client.close()
            raise
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(15)
        log.debug("ssh connected", host=self.host.name, to=self.where)
        return client

    def _check_agent(self) -> None:
        try:
            agent = paramiko.Agent()
            try:
                keys = agent.get_keys()
            finally:
                agent.close()
        except (paramiko.SSHException, OSError) as exc:
            raise AuthFailed(self.host.name, f"no key file is set and the ssh-agent does not answer "
                             f"({_describe(exc)})") from None
        if not keys:
            raise AuthFailed(self.host.name, "no key file is set and the ssh-agent offers no keys "
                             "(is SSH_AUTH_SOCK set? ssh-add the key)")

    def _attempt(self, work: Callable[[paramiko.SSHClient], T]) -> T:
        """Run `work` on a live connection; a connection that dies under it becomes `_Lost`."""
        client = self._client()
        transport = client.get_transport()
        assert transport is not None
        try:
            return work(client)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if not _gone(transport):
                raise  # a real answer from the host, such as "no such file"
            raise _Lost(started=True) from exc

    def _again_if_lost(self, work: Callable[[paramiko.SSHClient], T], what: str, idempotent: bool) -> T:
        """`work`, run again on a new connection when the old one dropped, if that is safe."""
        for rerun in range(self.options.reruns + 1):
            try:
                return self._attempt(work)
            except _Lost as lost:
                self.close()
                if lost.started and not idempotent:
                    raise ConnectionLost(self.host.name, f"connection lost while `{what}` ran; not run "
                                         "again since it is not marked idempotent: check the host") from None
                log.warning("ssh connection lost, running again", host=self.host.name, command=what,
                            rerun=rerun + 1)
        raise ConnectionLost(self.host.name, f"connection lost {self.options.reruns + 1} times while "
                             f"`{what}` ran")

    def _sftp_client(self, client: paramiko.SSHClient) -> paramiko.SFTPClient:
        if self._sftp is None:
            self._sftp = client.open_sftp()
        return self._sftp

    def _abs(self, client: paramiko.SSHClient, path: str) -> str:
        if path.startswith("/"):
            return path
        if self._home is None:
            self._home = self._sftp_client(client).normalize(".")
        return posixpath.join(self._home, path)

    # Commands ---------------------------------------------------------------------------------

    def run(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None,
            idempotent: bool = False, timeout: float | None = None, check: bool = True,
            quiet: bool = False) -> CommandResult:
        """Run `argv` on the host, streaming its output; run again after a lost connection
        only if `idempotent`. `check`: a non-zero status raises CommandFailed."""
        command, shown = remote_command(argv, env, cwd), shown_command(argv, env, cwd)
        log.debug("ssh run", host=self.host.name, command=shown)
        status, output = self._again_if_lost(
            lambda client: self._exec(client, command, shown, timeout, quiet), shown, idempotent)
        if check and status != 0:
            raise CommandFailed(self.host.name, shown, status, output)
        return CommandResult(self.host.name, status, output)

    def _exec(self, client: paramiko.SSHClient, command: str, shown: str, timeout: float | None,
              quiet: bool) -> tuple[int, list[str]]:
        transport = client.get_transport()
        assert transport is not None
        try:
            chan = transport.open_session(timeout=self.options.connect_timeout)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if _gone(transport):
                raise _Lost(started=False) from exc  # nothing was sent: safe to run anywhere
            raise
        output: deque[str] = deque(maxlen=KEEP_OUTPUT)
        deadline = None if timeout is None else time.monotonic() + timeout

        def emit(raw: bytes) -> None:
            line = raw.rstrip(b"\r").decode("utf-8", "replace")
            output.append(line)
            if not quiet:
                self.options.output(self.host.name, line)

        with chan:
            chan.set_combine_stderr(True)
            chan.settimeout(0.5)  # wakes the loop up to check the deadline
            chan.exec_command(command)
            pending = b""
            while True:
                try:
                    data = chan.recv(65536)
                except TimeoutError:
                    if deadline is not None and time.monotonic() > deadline:
                        raise CommandFailed(self.host.name, shown, -1, list(output), f"timed out after "
                                            f"{timeout} s (it may still run on the host)") from None
                    continue
                if not data:
                    break
                *lines, pending = (pending + data).split(b"\n")
                for raw in lines:
                    emit(raw)
            if pending:
                emit(pending)
            status = chan.recv_exit_status()
            # No exit status: the connection died, or (EOF received, transport alive) a signal.
            if status == -1 and (not chan.eof_received or _gone(transport)):
                raise _Lost(started=True)
        return status, list(output)

    # Files and releases -----------------------------------------------------------------------

    def upload(self, local: Path, remote: str) -> None:
        """Copy a file or a folder tree to `remote`: written beside it under a temporary name,
        then renamed into place. An existing folder at `remote` is replaced."""
        if not local.exists():
            raise BadInput(f"upload: {local} does not exist")
        self._again_if_lost(lambda client: self._upload(client, local, remote), f"upload {local}",
                            idempotent=True)

    def _upload(self, client: paramiko.SSHClient, local: Path, remote: str) -> None:
        sftp = self._sftp_client(client)
        remote = self._abs(client, remote.rstrip("/"))
        parent, name = posixpath.split(remote)
        tag = secrets.token_hex(4)
        tmp = posixpath.join(parent, f".{name}.tmp-{tag}")
        _makedirs(sftp, parent)
        if not local.is_dir():
            sftp.put(str(local), tmp)
            sftp.chmod(tmp, stat.S_IMODE(local.stat().st_mode))
            sftp.posix_rename(tmp, remote)  # replaces an older file in one step
            return
        self._put_tree(sftp, local, tmp)
        try:
            sftp.lstat(remote)
        except FileNotFoundError:
            sftp.posix_rename(tmp, remote)
            return
        # rename(2) does not replace a folder that has files: move the old one aside first.
        aside = posixpath.join(parent, f".{name}.pruned-{tag}")
        sftp.posix_rename(remote, aside)
        sftp.posix_rename(tmp, remote)
        self._exec_checked(client, ["rm", "-rf", "--", aside])

    def _put_tree(self, sftp: paramiko.SFTPClient, local: Path, remote: str) -> None:
        sftp.mkdir(remote)
        sftp.chmod(remote, stat.S_IMODE(local.stat().st_mode))
        for folder, dirs, files in os.walk(local):
            here = posixpath.join(remote, *Path(folder).relative_to(local).parts)
            for entry in [*dirs, *files]:
                source, target = Path(folder, entry), posixpath.join(here, entry)
                mode = source.lstat().st_mode
                if stat.S_ISLNK(mode):
                    sftp.symlink(str(source.readlink()), target)  # os.walk does not follow it
                elif stat.S_ISDIR(mode):
                    sftp.mkdir(target)
                    sftp.chmod(target, stat.S_IMODE(mode))
                elif stat.S_ISREG(mode):
                    sftp.put(str(source), target)
                    sftp.chmod(target, stat.S_IMODE(mode))

    def _exec_checked(self, client: paramiko.SSHClient, argv: Sequence[str]) -> list[str]:
        command = remote_command(argv)
        status, output = self._exec(client, command, command, None, quiet=True)
        if status != 0:
            raise CommandFailed(self.host.name, command, status, output)
        return output

    def switch(self, root: str, version: str, keep: int = 5) -> list[str]:
        """Make `<root>/releases/<version>` live: a new symlink renamed over `<root>/current`.

        Then remove all but the `keep` most recent releases; returns the removed versions.
        """
        check_release(version, keep)
        return self._again_if_lost(lambda client: self._switch(client, root, version, keep),
                                   f"switch {root} to {version}", idempotent=True)

    def _switch(self, client: paramiko.SSHClient, root: str, version: str, keep: int) -> list[str]:
        sftp = self._sftp_client(client)
        root = self._abs(client, root)
        releases = posixpath.join(root, "releases")
        try:
            if not stat.S_ISDIR(sftp.stat(posixpath.join(releases, version)).st_mode or 0):
                raise FileNotFoundError
        except FileNotFoundError:
            raise SshError(self.host.name, f"release {version} is not on the host "
                           f"({releases}/{version} missing): upload it first") from None
        # Recency for pruning: the release switched to last is the newest.
        sftp.utime(posixpath.join(releases, version), None)
        mtimes = {entry.filename: float(entry.st_mtime or 0) for entry in sftp.listdir_attr(releases)
                  if not entry.filename.startswith(".") and stat.S_ISDIR(entry.st_mode or 0)}
        old = releases_to_prune(mtimes, version, keep)
        self._exec_checked(client, switch_argv(root, version, secrets.token_hex(4), old))
        log.info("ssh release live", host=self.host.name, version=version, pruned=old)
        return old

    # The application's process ----------------------------------------------------------------

    def _stem(self, client: paramiko.SSHClient, spec: ProcessSpec) -> str:
        return posixpath.join(self._abs(client, self.options.rundir), spec.app, spec.name)

    def _read(self, client: paramiko.SSHClient, path: str) -> bytes:
        with self._sftp_client(client).open(path, "rb") as f:
            return f.read()

    def _tail(self, client: paramiko.SSHClient, path: str, count: int = TAIL) -> list[str]:
        try:
            with self._sftp_client(client).open(path, "rb") as f:
                f.seek(max(0, (f.stat().st_size or 0) - 16384))
                return f.read().decode("utf-8", "replace").splitlines()[-count:]
        except FileNotFoundError:
            return []

    def _pid(self, client: paramiko.SSHClient, spec: ProcessSpec) -> int | None:
        try:
            recorded = json.loads(self._read(client, self._stem(client, spec) + ".pid"))
            pid = int(recorded["pid"])
            cmdline = self._read(client, f"/proc/{pid}/cmdline")
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):  # a pidfile written by something else
            return None
        # The pid may have been reused by another program since.
        if cmdline.split(b"\0")[:-1] != [a.encode() for a in recorded["argv"]]:
            return None
        return pid

    def pid(self, spec: ProcessSpec) -> int | None:
        """The pid of the running process for `spec` on the host, or None."""
        return self._again_if_lost(lambda client: self._pid(client, spec), "pid", idempotent=True)

    def start(self, spec: ProcessSpec) -> int:
        """Start the process unless it already runs; return its pid."""
        def once(client: paramiko.SSHClient) -> int:
            running = self._pid(client, spec)
            if running is not None:
                return running
            argv = start_argv(spec, self._stem(client, spec))
            command, shown = remote_command(argv, spec.env), shown_command(spec.argv, spec.env, str(spec.cwd))
            status, output = self._exec(client, command, shown, None, quiet=True)
            if status != 0 or not output or not output[-1].isdigit():
                raise CommandFailed(self.host.name, f"start {shown}", status, output)
            return int(output[-1])

        # Idempotent: after a lost connection, `once` finds the process if it did start.
        pid = self._again_if_lost(once, f"start {spec.name}", idempotent=True)
        log.info("ssh process running", host=self.host.name, app=spec.app, name=spec.name, pid=pid)
        return pid

    def exited(self, spec: ProcessSpec) -> str | None:
        """If the process died, its exit status and the last lines of its log."""
        def once(client: paramiko.SSHClient) -> str | None:
            if self._pid(client, spec) is not None:
                return None
            stem = self._stem(client, spec)
            try:
                status = self._read(client, stem + ".status").decode().strip()
            except FileNotFoundError:
                status = ""
            lines = self._tail(client, stem + ".log")
            code = f"exit status {status}: " if status else ""
            return code + (" | ".join(lines) or "no output")

        return self._again_if_lost(once, f"exited {spec.name}", idempotent=True)

    def stop(self, spec: ProcessSpec, timeout: float) -> bool:
        """Stop the process (TERM, then KILL after `timeout`); True if one was running."""
        def once(client: paramiko.SSHClient) -> bool:
            pidfile = self._stem(client, spec) + ".pid"
            pid = self._pid(client, spec)
            if pid is not None:
                # Its own session and process group (setsid): the signal reaches its children too.
                self._exec(client, remote_command(["kill", "-TERM", "--", f"-{pid}"]), "kill", None, True)
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline and self._pid(client, spec) == pid:
                    time.sleep(0.05)
                if self._pid(client, spec) == pid:
                    self._exec(client, remote_command(["kill", "-KILL", "--", f"-{pid}"]), "kill", None,
                               True)
                    deadline = time.monotonic() + 5
                    while time.monotonic() < deadline and self._pid(client, spec) == pid:
                        time.sleep(0.05)
            with contextlib.suppress(FileNotFoundError):
                self._sftp_client(client).remove(pidfile)
            return pid is not None

        return self._again_if_lost(once, f"stop {spec.name}", idempotent=True)


# The fleet -----------------------------------------------------------------------------------

class SshTransport:
    """The `ssh` transport: `Remote`'s operations on every host, in batches, `parallel` at a time.

    Results are per host: {host name: value}. A failure raises HostsFailed once the hosts of
    the failing batch have finished; later batches are not started.
    """

    def __init__(self, hosts: Sequence[Host], *, known_hosts: Path, parallel: int = 4,
                 batch: int | str | None = None, output: OutputSink | None = None,
                 rundir: str = ".deployctl/run", connect_attempts: int = 5,
                 connect_timeout: float = 10.0, backoff: float = 0.5, reruns: int = 2) -> None:
        names = [h.name for h in hosts]
        if not hosts or len(set(names)) != len(names):
            raise BadInput(f"hosts: need at least one, each with its own name; got {names}")
        if parallel < 1 or connect_attempts < 1:
            raise BadInput("parallel and connect_attempts: at least 1")
        if not known_hosts.is_file():
            raise BadInput(f"known_hosts: {known_hosts} does not exist; create it with the hosts' "
                           "verified keys (ssh-keyscan -p PORT HOST >> FILE, after checking them)")
        self.hosts = list(hosts)
        self.parallel = parallel
        self.batches = plan_batches(self.hosts, batch)
        self.options = SshOptions(known_hosts=known_hosts, output=output or log_output, rundir=rundir,
                                  connect_attempts=connect_attempts, connect_timeout=connect_timeout,
                                  backoff=backoff, reruns=reruns)
        self._remotes = {h.name: Remote(h, self.options, load_key(h)) for h in self.hosts}

    def remote(self, name: str) -> Remote:
        """One host's connection, for a sequence of steps per host: `each(lambda r: ...)`."""
        return self._remotes[name]

    def close(self) -> None:
        for remote in self._remotes.values():
            remote.close()

    def __enter__(self) -> SshTransport:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def each(self, work: Callable[[Remote], T], *, batched: bool = True) -> dict[str, T]:
        """`work` on every host: in batches, or (`batched=False`) all, `parallel` at a time.

        In batches, hosts not yet started when one fails are skipped. Unbatched (stopping,
        querying), every host is tried.
        """
        batches = self.batches if batched else [self.hosts]
        done: dict[str, T] = {}
        failures: dict[str, Exception] = {}
        with ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="ssh") as pool:
            for number, batch in enumerate(batches, 1):
                if len(batches) > 1:
                    log.info("ssh batch", batch=number, of=len(batches), hosts=[h.name for h in batch])
                # Each task gets a copy of the caller's context: structlog's bound variables.
                futures: dict[Future[T], str] = {
                    pool.submit(contextvars.copy_context().run, work, self._remotes[h.name]): h.name
                    for h in batch}
                for future in as_completed(futures):
                    if future.cancelled():
                        continue
                    try:
                        done[futures[future]] = future.result()
                    except Exception as exc:
                        failures[futures[future]] = exc
                        if batched:
                            for pending in futures:
                                pending.cancel()
                if failures:
                    skipped = [name for future, name in futures.items() if future.cancelled()]
                    skipped += [h.name for later in batches[number:] for h in later]
                    raise HostsFailed(failures, done, skipped)
        return {h.name: done[h.name] for h in self.hosts}

    def run(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None,
            idempotent: bool = False, timeout: float | None = None) -> dict[str, CommandResult]:
        """Run `argv` on every host (see Remote.run); a non-zero status fails that host."""
        return self.each(lambda r: r.run(argv, env=env, cwd=cwd, idempotent=idempotent, timeout=timeout))

    def upload(self, local: Path, remote: str) -> None:
        """Copy a build (file or folder) to `remote` on every host, each renamed into place."""
        if not local.exists():
            raise BadInput(f"upload: {local} does not exist")
        self.each(lambda r: r.upload(local, remote))

    def switch(self, root: str, version: str, keep: int = 5) -> dict[str, list[str]]:
        """Make `version` live on every host (atomic link switch); the pruned versions per host."""
        check_release(version, keep)
        return self.each(lambda r: r.switch(root, version, keep))

    def pid(self, spec: ProcessSpec) -> dict[str, int | None]:
        """Per host, the pid of the running process for `spec`, or None (as LocalTransport.pid)."""
        return self.each(lambda r: r.pid(spec), batched=False)

    def start(self, spec: ProcessSpec) -> dict[str, int]:
        """Start the process on every host, in batches, where it does not run yet; the pids."""
        return self.each(lambda r: r.start(spec))

    def exited(self, spec: ProcessSpec) -> dict[str, str | None]:
        """Per host, None while the process runs, else its exit status and last log lines."""
        return self.each(lambda r: r.exited(spec), batched=False)

    def stop(self, spec: ProcessSpec, timeout: float) -> dict[str, bool]:
        """Stop the process on every host (all tried, even after a failure); True where it ran."""
        return self.each(lambda r: r.stop(spec, timeout), batched=False)
