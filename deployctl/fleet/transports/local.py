"""The `local` transport: runs the application's processes on this machine.

A started process gets its own session (it must outlive deployctl: it is the service) and a
pidfile holding its pid and command line, so a later deployctl, after a crash, can tell
whether the process it started is still the one running under that pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from deployctl import files
from deployctl.fleet import process
from deployctl.fleet.health import healthy
from deployctl.fleet.process import ProcessSpec
from deployctl.playbook import Playbook


class LocalTransport:
    def __init__(self, workdir: Path) -> None:
        self.rundir = workdir / "run"

    def _pidfile(self, spec: ProcessSpec) -> Path:
        return self.rundir / spec.app / f"{spec.name}.pid"

    def pid(self, spec: ProcessSpec) -> int | None:
        """The pid of the running process for `spec`, or None."""
        pidfile = self._pidfile(spec)
        try:
            recorded = json.loads(pidfile.read_text())
            cmdline = Path(f"/proc/{recorded['pid']}/cmdline").read_bytes()
        except (OSError, ValueError, KeyError):
            return None
        # The pid may have been reused by another program since.
        if cmdline.split(b"\0")[:-1] != [a.encode() for a in recorded["argv"]]:
            return None
        return int(recorded["pid"])

    def start(self, spec: ProcessSpec) -> int:
        """Start the process unless it already runs; return its pid."""
        running = self.pid(spec)
        if running is not None:
            return running
        pidfile = self._pidfile(spec)
        files.private_dir(pidfile.parent, top=self.rundir.parent)
        logfile = pidfile.with_suffix(".log")
        fd = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "ab") as out:
            proc = subprocess.Popen(
                spec.argv, cwd=spec.cwd, env={**os.environ, **spec.env},
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # The command line can carry secrets: the pidfile is its owner's alone.
        files.write_private(pidfile, json.dumps({"pid": proc.pid, "argv": spec.argv}).encode())
        return proc.pid

    def exited(self, spec: ProcessSpec) -> str | None:
        """If the process died, its exit status and the last lines of its log."""
        try:
            pid = int(json.loads(self._pidfile(spec).read_text())["pid"])
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # started by an earlier deployctl: not our child
            if self.pid(spec) is not None:
                return None
            status = None
        except (OSError, ValueError, KeyError):
            status = None
        else:
            if done == 0:
                return None
        logfile = self._pidfile(spec).with_suffix(".log")
        lines = logfile.read_text(errors="replace").splitlines()[-5:] if logfile.exists() else []
        code = f"exit status {os.waitstatus_to_exitcode(status)}: " if status is not None else ""
        return code + (" | ".join(lines) or "no output")

    def stop(self, spec: ProcessSpec, timeout: float) -> bool:
        """Stop the process (TERM, then KILL after `timeout`); True if one was running."""
        pid = self.pid(spec)
        if pid is None:
            self._pidfile(spec).unlink(missing_ok=True)
            return False
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pid(spec) is not None:
            _reap(pid)
            time.sleep(0.05)
        if self.pid(spec) is not None:
            os.killpg(pid, signal.SIGKILL)
            _reap(pid, block=True)
        self._pidfile(spec).unlink(missing_ok=True)
        return True


def _reap(pid: int, block: bool = False) -> None:
    # Our own children become zombies (still in /proc) until waited for.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0 if block else os.WNOHANG)


class LocalFleet:
    """The `local` fleet: one process on this machine, with its pidfile in the workdir."""

    def __init__(self, pb: Playbook, workdir: Path) -> None:
        self.pb, self.local, self.spec = pb, LocalTransport(workdir), process.for_playbook(pb)

    def unreachable(self) -> dict[str, str]:
        return {}

    def start(self, upload: bool) -> dict[str, Any]:
        restarted = self.local.pid(self.spec) is None
        pid = self.local.start(self.spec)
        url = self.pb.deploy.health.url
        took = healthy(self.pb, url, lambda: self.local.exited(self.spec))
        return {"pid": pid, "healthy_after_s": took, "health": url, "restarted": restarted}

    def stop(self) -> bool:
        return self.local.stop(self.spec, self.pb.deploy.stop_timeout)

    def make_live(self) -> dict[str, Any]:
        return {}  # the playbook's command is what runs: no link to switch
