"""The `ssh` transport against a real OpenSSH server on loopback (tests/sshd.py), no mocks.

Several "hosts" are the same server under different names: what differs between real hosts
(their address) plays no part in what is tested here.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import paramiko
import pytest
from structlog.testing import capture_logs

from deployctl.errors import BadInput
from deployctl.fleet import versions
from deployctl.fleet.process import ProcessSpec
from deployctl.fleet.transports.ssh import (
    AuthFailed,
    CommandFailed,
    ConnectionLost,
    Host,
    HostKeyChanged,
    HostKeyUnknown,
    HostsFailed,
    SshTransport,
    Unreachable,
    plan_batches,
    releases_to_prune,
    remote_command,
    shown_command,
)
from deployctl.playbook import DeployConfig
from tests.sshd import (
    Keys,
    Sshd,
    free_port,
    make_key,
    require,
)


class Lines:
    """An output sink that remembers (host, line, arrival time)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, float]] = []
        self._lock = threading.Lock()

    def __call__(self, host: str, line: str) -> None:
        with self._lock:
            self.seen.append((host, line, time.monotonic()))

    def of(self, host: str) -> list[str]:
        return [line for h, line, _ in self.seen if h == host]


def hosts(server: Sshd, keys: Keys, *names: str, key: Path | None = None) -> list[Host]:
    return [Host(name, "127.0.0.1", server.port, server.user, key or keys.user) for name in names]


def fleet(server: Sshd, keys: Keys, known_hosts: Path, *names: str, **options: object) -> SshTransport:
    return SshTransport(hosts(server, keys, *(names or ("web1",))), known_hosts=known_hosts,
                        **options)  # type: ignore[arg-type]


def failure(raised: pytest.ExceptionInfo[HostsFailed], host: str = "web1") -> Exception:
    assert set(raised.value.failures) == {host}
    return raised.value.failures[host]


# Commands built as data ------------------------------------------------------------------------

def test_batches_are_a_number_of_hosts_or_a_percentage_rounded_down() -> None:
    ten = [Host(f"h{i}", "127.0.0.1") for i in range(10)]
    assert [len(b) for b in plan_batches(ten, 3)] == [3, 3, 3, 1]
    assert [len(b) for b in plan_batches(ten, "25%")] == [2, 2, 2, 2, 2]
    assert [len(b) for b in plan_batches(ten, "5%")] == [1] * 10
    assert [len(b) for b in plan_batches(ten, None)] == [10]
    assert [h.name for b in plan_batches(ten, "50%") for h in b] == [h.name for h in ten]
    for bad in (0, "0%", "150%", "half", True):
        with pytest.raises(BadInput, match="batch"):
            plan_batches(ten, bad)  # type: ignore[arg-type]


def test_remote_commands_quote_every_word_and_pass_variables_with_env() -> None:
    line = remote_command(["echo", "a b", "$HOME", "it's"], {"GREETING": "hi there"}, "/srv/my app")
    assert line == "cd '/srv/my app' && env 'GREETING=hi there' echo 'a b' '$HOME' 'it'\"'\"'s'"
    assert shown_command(["run"], {"TOKEN": "s3cr3t-value"}) == "env 'TOKEN=***' run"
    with pytest.raises(BadInput, match="environment variable names"):
        remote_command(["run"], {"-i": "x"})


def test_pruning_keeps_the_newest_releases_and_always_the_live_one() -> None:
    mtimes = {"1": 10.0, "2": 20.0, "3": 30.0, "4": 40.0}
    assert releases_to_prune(mtimes, "4", keep=2) == ["1", "2"]
    assert releases_to_prune(mtimes, "1", keep=2) == ["2"]
    assert releases_to_prune(mtimes, "4", keep=5) == []


# Running commands --------------------------------------------------------------------------------

def test_output_arrives_line_by_line_prefixed_with_the_host_name(
        sshd: Sshd, ssh_keys: Keys, known_hosts: Path, tmp_path: Path) -> None:
    lines = Lines()
    # Standard error is merged in, after the rest here: the two pipes would race.
    script = 'echo one; printf "%s|%s\\n" "$GREETING" "$1"; pwd; sleep 0.1; echo two >&2'
    with fleet(sshd, ssh_keys, known_hosts, "web1", "web2", output=lines) as fleet_:
        results = fleet_.run(["sh", "-c", script, "sh", "$HOME 'quoted'"],
                             env={"GREETING": "hello world"}, cwd=str(tmp_path))
    expected = ["one", "hello world|$HOME 'quoted'", str(tmp_path), "two"]
    assert lines.of("web1") == lines.of("web2") == expected
    assert {name: (r.status, r.output) for name, r in results.items()} == {
        "web1": (0, expected), "web2": (0, expected)}

    # The default sink is the project's logger: one event per line, the host's name first.
    with capture_logs() as logs, fleet(sshd, ssh_keys, known_hosts, "web1") as fleet_:
        fleet_.run(["echo", "from the default sink"])
    assert {"event": "web1: from the default sink", "host": "web1", "log_level": "info"} in logs


def test_a_non_zero_exit_fails_naming_the_host_and_its_last_lines(
        sshd: Sshd, ssh_keys: Keys, known_hosts: Path) -> None:
    with fleet(sshd, ssh_keys, known_hosts, output=Lines()) as fleet_, \
            pytest.raises(HostsFailed) as raised:
        fleet_.run(["sh", "-c", "for i in 1 2 3 4 5 6 7; do echo line$i; done; exit 3"])
    error = failure(raised)
    assert isinstance(error, CommandFailed) and error.status == 3
    assert "web1:" in str(raised.value) and "exited with status 3" in str(raised.value)
    assert "line3 | line4 | line5 | line6 | line7" in str(error) and "line2" not in str(error)


def test_a_command_past_its_timeout_fails_with_what_it_printed(
        sshd: Sshd, ssh_keys: Keys, known_hosts: Path) -> None:
    started = time.monotonic()
    with fleet(sshd, ssh_keys, known_hosts, output=Lines()) as fleet_, \
            pytest.raises(HostsFailed) as raised:
        fleet_.run(["sh", "-c", "echo begun; sleep 1"], timeout=0.2)
    error = failure(raised)
    assert isinstance(error, CommandFailed) and "timed out after 0.2 s" in str(error)
    assert error.output == ["begun"] and time.monotonic() - started < 1


def test_an_unknown_host_key_is_refused_and_nothing_runs(
        sshd: Sshd, ssh_keys: Keys, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    marker = tmp_path / "marker"
    before = sshd.connections()
    with fleet(sshd, ssh_keys, empty, backoff=0.01) as fleet_, pytest.raises(HostsFailed) as raised:
        fleet_.run(["touch", str(marker)])
    error = failure(raised)
    assert isinstance(error, HostKeyUnknown)
    fingerprint = paramiko.PKey.from_path(sshd.host_key).fingerprint
    assert f"[127.0.0.1]:{sshd.port} is not in known_hosts {empty}" in str(error)
    assert fingerprint in str(error)
    assert f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {empty}" in str(error)
    assert not marker.exists()
    assert sshd.connections() - before == 1  # not retried
    assert empty.read_text() == ""           # never auto-accepted


def test_a_changed_host_key_is_refused_as_a_possible_man_in_the_middle(
        sshd: Sshd, ssh_keys: Keys, tmp_path: Path) -> None:
    impostor = make_key(tmp_path / "other_host_key")
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts_line(impostor))
    marker = tmp_path / "marker"
    before = sshd.connections()
    with fleet(sshd, ssh_keys, known, backoff=0.01) as fleet_, pytest.raises(HostsFailed) as raised:
        fleet_.run(["touch", str(marker)])
    error = failure(raised)
    assert isinstance(error, HostKeyChanged)
    assert "CHANGED" in str(error) and "man-in-the-middle" in str(error)
    assert paramiko.PKey.from_path(tmp_path / "other_host_key").fingerprint in str(error)
    assert not marker.exists()
    assert sshd.connections() - before == 1


def test_a_wrong_key_fails_at_once_without_retrying(sshd: Sshd, ssh_keys: Keys, known_hosts: Path) -> None:
    before, started = sshd.connections(), time.monotonic()
    transport = SshTransport(hosts(sshd, ssh_keys, "web1", key=ssh_keys.stranger),
                             known_hosts=known_hosts, connect_attempts=5, backoff=2)
    with transport, pytest.raises(HostsFailed) as raised:
        transport.run(["true"])
    error = failure(raised)
    assert isinstance(error, AuthFailed) and "refused key SHA256:" in str(error)
    assert time.monotonic() - started < 2  # the first backoff alone would take 2 s
    assert sshd.connections() - before == 1


def test_an_unreachable_host_is_tried_a_bounded_number_of_times_with_growing_waits(
        ssh_keys: Keys, tmp_path: Path) -> None:
    (tmp_path / "known_hosts").write_text("")
    port = free_port()  # nothing listens there
    started = time.monotonic()
    with capture_logs() as logs, SshTransport([Host("web1", "127.0.0.1", port, key=ssh_keys.user)],
                                              known_hosts=tmp_path / "known_hosts", connect_attempts=3,
                                              backoff=0.1) as fleet_, pytest.raises(HostsFailed) as raised:
        fleet_.run(["true"])
    error = failure(raised)
    assert isinstance(error, Unreachable)
    assert f"127.0.0.1:{port} after 3 attempts" in str(error)
    assert [e["attempt"] for e in logs if e["event"] == "ssh connect failed, retrying"] == [1, 2]
    assert time.monotonic() - started >= 0.3  # waited 0.1 s, then 0.2 s


def test_an_encrypted_key_opens_with_the_passphrase_named_by_an_env_var_never_shown(
        sshd: Sshd, ssh_keys: Keys, known_hosts: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = Host("web1", "127.0.0.1", sshd.port, sshd.user, ssh_keys.locked, passphrase_env="WEB_KEY_PASS")
    with pytest.raises(BadInput, match="WEB_KEY_PASS is not set"):
        SshTransport([host], known_hosts=known_hosts)
    monkeypatch.setenv("WEB_KEY_PASS", "not the passphrase")
    with pytest.raises(BadInput, match="passphrase is wrong") as wrong:
        SshTransport([host], known_hosts=known_hosts)
    assert "not the passphrase" not in str(wrong.value)
    monkeypatch.setenv("WEB_KEY_PASS", ssh_keys.passphrase)
    lines = Lines()
    with capture_logs() as logs, SshTransport([host], known_hosts=known_hosts, output=lines) as fleet_:
        fleet_.run(["echo", "unlocked"])
    assert lines.of("web1") == ["unlocked"]
    assert ssh_keys.passphrase not in repr(logs)


def test_the_ssh_agents_keys_are_used_when_no_key_file_is_set(
        sshd: Sshd, ssh_keys: Keys, known_hosts: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    agentless = [Host("web1", "127.0.0.1", sshd.port, sshd.user)]
    with SshTransport(agentless, known_hosts=known_hosts) as fleet_, pytest.raises(HostsFailed) as raised:
        fleet_.run(["true"])
    assert isinstance(failure(raised), AuthFailed) and "ssh-agent offers no keys" in str(raised.value)

    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen([require("ssh-agent"), "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if sock.exists():
                break
            time.sleep(0.01)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        subprocess.run([require("ssh-add"), "-q", str(ssh_keys.user)], check=True, capture_output=True)
        lines = Lines()
        with SshTransport(agentless, known_hosts=known_hosts, output=lines) as fleet_:
            fleet_.run(["echo", "via the agent"])
        assert lines.of("web1") == ["via the agent"]
    finally:
        agent.terminate()
        agent.wait(timeout=5)


# Lost connections ------------------------------------------------------------------------------

def _cut_when_started(server: Sshd, runs: Path, restart_after: float | None) -> threading.Thread:
    """Cut the connections once the command has started (and restart sshd after a while)."""
    def cut() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (runs.exists() and runs.read_text()):
            time.sleep(0.01)
        sessions = server.sessions()
        if restart_after is None:
            server.kill_sessions(sessions)
            return
        server.stop()  # first, so that no reconnection gets in before the restart
        server.kill_sessions(sessions)
        time.sleep(restart_after)
        server.start()

    thread = threading.Thread(target=cut)
    thread.start()
    return thread


def _kill_sleeper(runs: Path) -> None:
    """The first run outlives its cut connection, as `sleep`: end it."""
    pid = int(runs.read_text().split()[0])
    try:
        if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep\0"):
            os.kill(pid, signal.SIGKILL)
    except (FileNotFoundError, ProcessLookupError):
        pass


# The first run waits (as `sleep`, whose pid it wrote) until the connection is cut; the second
# finds a line already there and finishes.
SECOND_RUN_FINISHES = 'echo $$ >>"$1"; [ "$(wc -l <"$1")" -ge 2 ] || exec sleep 30; echo finished'


def test_a_connection_cut_mid_command_is_retried_and_the_idempotent_command_run_again(
        own_sshd: Sshd, ssh_keys: Keys, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(own_sshd.known_hosts_line())
    runs = tmp_path / "runs"
    lines = Lines()
    # sshd is also stopped for 0.6 s: the reconnection needs several attempts.
    cutter = _cut_when_started(own_sshd, runs, restart_after=0.6)
    try:
        with capture_logs() as logs, \
                fleet(own_sshd, ssh_keys, known, output=lines, backoff=0.05, connect_attempts=8) as fleet_:
            result = fleet_.run(["sh", "-c", SECOND_RUN_FINISHES, "sh", str(runs)], idempotent=True)
    finally:
        cutter.join()
        _kill_sleeper(runs)
    assert result["web1"].status == 0 and lines.of("web1") == ["finished"]
    assert len(runs.read_text().split()) == 2
    events = [e["event"] for e in logs]
    assert "ssh connection lost, running again" in events
    assert "ssh connect failed, retrying" in events  # refused while sshd was down


def test_a_command_cut_mid_way_is_not_run_again_unless_idempotent(
        own_sshd: Sshd, ssh_keys: Keys, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(own_sshd.known_hosts_line())
    runs = tmp_path / "runs"
    cutter = _cut_when_started(own_sshd, runs, restart_after=None)
    try:
        with fleet(own_sshd, ssh_keys, known, output=Lines()) as fleet_, \
                pytest.raises(HostsFailed) as raised:
            fleet_.run(["sh", "-c", SECOND_RUN_FINISHES, "sh", str(runs)])
    finally:
        cutter.join()
        _kill_sleeper(runs)
    error = failure(raised)
    assert isinstance(error, ConnectionLost) and "not marked idempotent" in str(error)
    assert len(runs.read_text().split()) == 1


# Batches -------------------------------------------------------------------------------------------

STAMPED = 'echo "start $(date +%s%N)"; sleep 0.4; echo "end $(date +%s%N)"'


@pytest.mark.parametrize("batch", [2, "50%"])
def test_hosts_run_in_consecutive_batches_each_in_parallel(
        sshd: Sshd, ssh_keys: Keys, known_hosts: Path, batch: int | str) -> None:
    lines = Lines()
    with fleet(sshd, ssh_keys, known_hosts, "web1", "web2", "web3", "web4", batch=batch, parallel=4,
               output=lines) as fleet_:
        assert [[h.name for h in b] for b in fleet_.batches] == [["web1", "web2"], ["web3", "web4"]]
        fleet_.run(["sh", "-c", STAMPED])
    stamps = {}
    for host in ("web1", "web2", "web3", "web4"):
        (start, begun), (end, ended) = (line.split() for line in lines.of(host))
        assert (start, end) == ("start", "end")
        stamps[host] = (int(begun), int(ended))
    first = [stamps["web1"], stamps["web2"]]
    second = [stamps["web3"], stamps["web4"]]
    for batch_ in (first, second):  # both hosts of a batch at once
        assert max(begun for begun, _ in batch_) < min(ended for _, ended in batch_)
    assert max(ended for _, ended in first) < min(begun for begun, _ in second)


def test_a_failing_host_stops_the_hosts_of_later_batches(
        sshd: Sshd, ssh_keys: Keys, known_hosts: Path, tmp_path: Path) -> None:
    lines = Lines()
    good, bad = hosts(sshd, ssh_keys, "web1", "web3", "web4"), hosts(sshd, ssh_keys, "web2",
                                                                     key=ssh_keys.stranger)
    marks = tmp_path / "ran"
    marks.mkdir()
    transport = SshTransport([good[0], bad[0], *good[1:]], known_hosts=known_hosts, batch=2,
                             output=lines)
    with transport, pytest.raises(HostsFailed) as raised:
        transport.run(["sh", "-c", 'touch "$1/$(date +%s%N)"; echo ran', "sh", str(marks)])
    assert set(raised.value.failures) == {"web2"} and isinstance(raised.value.failures["web2"], AuthFailed)
    assert list(raised.value.done) == ["web1"]
    assert raised.value.skipped == ["web3", "web4"]
    message = str(raised.value)
    assert "1 of 4 hosts failed: web2:" in message and "(not started: web3, web4)" in message
    assert lines.of("web1") == ["ran"] and lines.of("web3") == lines.of("web4") == []
    assert len(list(marks.iterdir())) == 1

    # Stopping is not batched: every host is tried, and every failure reported.
    spec = ProcessSpec("app", "v1", ["true"], tmp_path)
    with SshTransport([good[0], bad[0], *good[1:]], known_hosts=known_hosts, batch=2,
                      rundir=str(tmp_path / "run")) as fleet_, pytest.raises(HostsFailed) as raised:
        fleet_.stop(spec, timeout=1)
    assert set(raised.value.failures) == {"web2"} and raised.value.done == {
        "web1": False, "web3": False, "web4": False}


# Releases --------------------------------------------------------------------------------------------

def build(folder: Path, version: int) -> Path:
    """A release folder whose MANIFEST names every file and its SHA-256."""
    root = folder / f"build-{version}"
    (root / "static").mkdir(parents=True)
    (root / "VERSION").write_text(f"{version}\n")
    (root / "static" / "app.bin").write_bytes(os.urandom(64 * 1024))
    run = root / "run.sh"
    run.write_text("#!/bin/sh\necho running\n")
    run.chmod(0o755)
    (root / "latest").symlink_to("VERSION")
    files = ["VERSION", "static/app.bin", "run.sh"]
    (root / "MANIFEST").write_text("".join(
        f"{name} {hashlib.sha256((root / name).read_bytes()).hexdigest()}\n" for name in files))
    return root


def incomplete(release: Path) -> str | None:
    """What is wrong with a release as seen now, or None if whole (or gone as a whole)."""
    try:
        for line in (release / "MANIFEST").read_text().splitlines():
            name, digest = line.split()
            if hashlib.sha256((release / name).read_bytes()).hexdigest() != digest:
                return f"{release}/{name} differs"
    except FileNotFoundError as exc:
        return None if not release.exists() else f"{release}: {exc}"
    return None


def test_upload_and_atomic_switch_never_serve_a_missing_or_partial_release(
        sshd: Sshd, ssh_keys: Keys, known_hosts: Path, tmp_path: Path) -> None:
    root, local = tmp_path / "app", tmp_path / "local"
    local.mkdir()
    current, releases = root / "current", root / "releases"
    seen: list[str] = []
    problems: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                target = os.readlink(current)
            except OSError as exc:
                problems.append(f"current: {exc}")
                continue
            seen.append(target)
            problem = incomplete(root / target)
            if problem is None and not (root / target).exists():
                problem = f"current points at {target}, which is gone"
            for entry in os.listdir(releases):
                if not entry.startswith("."):
                    problem = problem or incomplete(releases / entry)
            if problem:
                problems.append(problem)

    with fleet(sshd, ssh_keys, known_hosts, "web1", output=Lines()) as fleet_:
        fleet_.upload(build(local, 1), f"{root}/releases/1")
        fleet_.switch(str(root), "1", keep=3)
        thread = threading.Thread(target=reader)
        thread.start()
        pruned = {}
        try:
            for version in range(2, 7):
                fleet_.upload(build(local, version), f"{root}/releases/{version}")
                pruned[version] = fleet_.switch(str(root), str(version), keep=3)["web1"]
        finally:
            stop.set()
            thread.join()
        with pytest.raises(HostsFailed, match="release 9 is not on the host .* upload it first"):
            fleet_.switch(str(root), "9")

        # The same version uploaded again replaces the folder as a whole.
        again = build(tmp_path / "again", 6)
        fleet_.upload(again, f"{root}/releases/6")

    assert problems == []
    assert len(seen) > 20 and {f"releases/{v}" for v in range(1, 7)} >= set(seen)
    assert os.readlink(current) == "releases/6"
    assert sorted(os.listdir(releases)) == ["4", "5", "6"]  # no temporary or half-removed folder
    assert pruned == {2: [], 3: [], 4: ["1"], 5: ["2"], 6: ["3"]}
    assert (current / "static" / "app.bin").read_bytes() == (again / "static" / "app.bin").read_bytes()
    assert os.access(current / "run.sh", os.X_OK) and os.readlink(current / "latest") == "VERSION"
    assert sorted(p.name for p in root.iterdir()) == ["current", "releases"]  # no current.tmp-*


def test_upload_of_a_single_file_replaces_it_in_one_rename(
        sshd: Sshd, ssh_keys: Keys, known_hosts: Path, tmp_path: Path) -> None:
    artifact = tmp_path / "app.tar.gz"
    target = tmp_path / "remote" / "deep" / "app.tar.gz"
    with fleet(sshd, ssh_keys, known_hosts) as fleet_:
        for content in (b"first build", b"second build"):
            artifact.write_bytes(content)
            fleet_.upload(artifact, str(target))
            assert target.read_bytes() == content
    assert os.listdir(target.parent) == ["app.tar.gz"]


# The application's process --------------------------------------------------------------------------

def _answers(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello.txt", timeout=2) as resp:
            return str(resp.read().decode())
    except OSError:
        return None


def test_start_twice_gives_the_same_pid_and_stop_stops_the_process(
        sshd: Sshd, ssh_keys: Keys, known_hosts: Path, tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    (www / "hello.txt").write_text("served from the release folder")
    port = free_port()
    spec = ProcessSpec("shop", "version-7", [sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                                             str(port)], www, {"PYTHONUNBUFFERED": "1"})
    with fleet(sshd, ssh_keys, known_hosts, rundir=str(tmp_path / "run")) as fleet_:
        try:
            assert fleet_.pid(spec) == {"web1": None}
            first = fleet_.start(spec)["web1"]
            assert fleet_.start(spec) == {"web1": first}  # already running: same pid
            assert fleet_.pid(spec) == {"web1": first}
            assert fleet_.exited(spec) == {"web1": None}
            deadline = time.monotonic() + 10
            while _answers(port) is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _answers(port) == "served from the release folder"  # ran in spec.cwd
            assert os.getsid(first) == first  # its own session: outlives the SSH session
        finally:
            stopped = fleet_.stop(spec, timeout=5)
        assert stopped == {"web1": True}
        assert fleet_.pid(spec) == {"web1": None} and _answers(port) is None
        cmdline = Path(f"/proc/{first}/cmdline")
        assert not cmdline.exists() or cmdline.read_bytes() == b""  # gone, or a zombie nobody reaped
        assert fleet_.stop(spec, timeout=5) == {"web1": False}

        # A process that ends on its own: its exit status and its last lines.
        dies = ProcessSpec("shop", "version-8", ["sh", "-c", "echo starting; echo cannot bind >&2; exit 3"],
                           www)
        fleet_.start(dies)
        deadline = time.monotonic() + 10
        while (report := fleet_.exited(dies)["web1"]) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert report == "exit status 3: starting | cannot bind"


def test_a_reused_pid_is_not_taken_for_the_process(
        sshd: Sshd, ssh_keys: Keys, known_hosts: Path, tmp_path: Path) -> None:
    spec = ProcessSpec("shop", "version-1", ["sleep", "300"], tmp_path)
    with fleet(sshd, ssh_keys, known_hosts, rundir=str(tmp_path / "run")) as fleet_:
        pid = fleet_.start(spec)["web1"]
        try:
            pidfile = tmp_path / "run" / "shop" / "version-1.pid"
            # Pretend the process died and its pid went to another program (this test's python).
            recorded = json.loads(pidfile.read_text())
            pidfile.write_text(json.dumps({**recorded, "pid": os.getpid()}))
            assert fleet_.pid(spec) == {"web1": None}
        finally:
            os.killpg(pid, signal.SIGKILL)


def test_bad_settings_are_refused_before_connecting(ssh_keys: Keys, tmp_path: Path) -> None:
    host = Host("web1", "127.0.0.1", 22, key=ssh_keys.user)
    with pytest.raises(BadInput, match="known_hosts: .* does not exist"):
        SshTransport([host], known_hosts=tmp_path / "missing")
    (tmp_path / "known_hosts").write_text("")
    with pytest.raises(BadInput, match="own name"):
        SshTransport([host, host], known_hosts=tmp_path / "known_hosts")
    with pytest.raises(BadInput, match="the key is encrypted"):
        SshTransport([Host("web1", "127.0.0.1", key=ssh_keys.locked)], known_hosts=tmp_path / "known_hosts")


@pytest.fixture(autouse=True)
def _no_stray_sessions(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test closes its connections: none is left open on the shared server."""
    yield
    if "sshd" not in request.fixturenames:
        return
    sshd: Sshd = request.getfixturevalue("sshd")
    deadline = time.monotonic() + 5
    while sshd.sessions() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sshd.sessions() == []


def test_every_transport_a_playbook_may_name_has_a_fleet() -> None:
    named = set(get_args(DeployConfig.model_fields["transport"].annotation))
    assert named == set(versions.FLEETS)
    for path in versions.FLEETS.values():
        module, _, name = path.partition(":")
        fleet = getattr(importlib.import_module(module), name)
        for method in ("unreachable", "start", "stop", "make_live"):
            assert callable(getattr(fleet, method)), (name, method)
