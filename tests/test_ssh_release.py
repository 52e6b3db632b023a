"""Releases over the `ssh` transport: a real sshd on loopback, a real HAProxy in front.

The sample app's folder is the build: uploaded by SFTP into `<root>/releases/<version>/`,
started there on the host, switched live by renaming `<root>/current`. Host keys are checked
against a known_hosts file; an unknown host is refused before anything is touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SOCIAL, Env
from tests.routers_env import HaproxyEnv
from tests.sshd import Keys, Sshd
from tests.traffic_env import GATES, Users, versions_now

pytestmark = pytest.mark.integration


def over_ssh(env: Env, proxy: HaproxyEnv, version: str, sshd: Sshd, keys: Keys, known_hosts: Path,
             root: Path, **changes: Any) -> Path:
    port = env.blue_port if version == "1" else env.green_port
    deploy = {
        "transport": "ssh",
        "ssh": {"known_hosts": str(known_hosts), "root": str(root), "artifact": str(SOCIAL),
                "hosts": [{"name": "web1", "address": "127.0.0.1", "port": sshd.port,
                           "key": str(keys.user)}]},
        "command": [sys.executable, "app.py", "serve", "--version", version, "--host", "{host}",
                    "--port", str(port)],
        "env": {"DATABASE_URL": env.app_dsn, **changes.pop("app_env", {})},
        "health": {"url": f"http://{{host}}:{port}/health", "timeout": "20s"},
        "stop_timeout": "5s",
        "endpoints": [f"{{host}}:{port}"],
    }
    return env.playbook(version, deploy=deploy, router={
        "type": "haproxy",
        "haproxy": {"socket": str(proxy.folder / "admin.sock"), "maps": str(proxy.folder / "maps")},
    }, **changes)


@pytest.fixture(name="root")
def root_fixture(tmp_path: Path) -> Iterator[Path]:
    """The application's folder on the host; its processes are stopped at the end."""
    root = tmp_path / "srv" / "social"
    yield root
    for pidfile in root.glob("run/*/*.pid"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            os.killpg(int(json.loads(pidfile.read_text())["pid"]), signal.SIGKILL)


def test_a_staged_release_over_ssh_uploads_switches_current_and_moves_users(
        env: Env, haproxy: HaproxyEnv, sshd: Sshd, ssh_keys: Keys, known_hosts: Path, root: Path) -> None:
    first = env.cli("release", str(over_ssh(env, haproxy, "1", sshd, ssh_keys, known_hosts, root)))
    assert first.returncode == 0, first.stdout + first.stderr
    assert os.readlink(root / "current") == "releases/1"
    assert (root / "releases" / "1" / "app.py").is_file()

    playbook = over_ssh(env, haproxy, "2", sshd, ssh_keys, known_hosts, root, gates=GATES, cohorts=[
        {"name": "beta", "percent": 10, "hold": "1.2s"},
        {"name": "everyone", "percent": 100, "hold": "1.2s"}])
    with Users(haproxy.port) as users:
        done = env.cli("release", str(playbook), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert users.failed() == [], f"{len(users.failed())} of {len(users.seen)} requests failed"
    assert os.readlink(root / "current") == "releases/2"
    assert set(versions_now(haproxy.port).values()) == {"2"}
    # Version 1's process on the host was stopped at finalize.
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{env.blue_port}/health", timeout=2)


def test_a_breach_over_ssh_leaves_current_on_the_old_version_and_stops_green(
        env: Env, haproxy: HaproxyEnv, sshd: Sshd, ssh_keys: Keys, known_hosts: Path, root: Path) -> None:
    first = env.cli("release", str(over_ssh(env, haproxy, "1", sshd, ssh_keys, known_hosts, root)))
    assert first.returncode == 0, first.stdout + first.stderr
    playbook = over_ssh(env, haproxy, "2", sshd, ssh_keys, known_hosts, root, gates=GATES,
                        app_env={"SOCIAL_FAIL": "users"},
                        cohorts=[{"name": "beta", "percent": 10, "hold": "30s"}])
    with Users(haproxy.port):
        done = env.cli("release", str(playbook), timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "gate breach in cohort beta" in (env.release_row() or {})["reason"]
    assert os.readlink(root / "current") == "releases/1"
    assert set(versions_now(haproxy.port).values()) == {"1"}
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{env.green_port}/health", timeout=2)


def test_an_unknown_host_key_is_refused_before_anything_is_touched(
        env: Env, haproxy: HaproxyEnv, sshd: Sshd, ssh_keys: Keys, tmp_path: Path, root: Path) -> None:
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    done = env.cli("release", str(over_ssh(env, haproxy, "1", sshd, ssh_keys, empty, root)))
    assert done.returncode == 2, done.stdout + done.stderr
    release = env.release_row()
    assert release is not None and release["status"] == "refused"
    assert "web1" in release["reason"] and "not in known_hosts" in release["reason"], release["reason"]
    assert ("snapshot", "started") not in env.events(release["id"])
    assert not root.exists(), "nothing was uploaded to a host we could not verify"
