"""Faults: deployctl killed at random moments under users; its database restarting, invalidating
its slot or filling its disk under a release or under a rollback.

These tests run on a PostgreSQL cluster of their own (restarting the session's server would
disturb nothing else, but it may be a server the tests do not own). The release is stopped
(SIGSTOP, from a failpoint) at an exact point, the cluster restarts (every session ends, as in
a restart or a failover), and the release goes on (SIGCONT). Whatever happens next, the journal
tells the truth, nothing is left behind, and no acknowledged write is lost.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from deployctl.localpg import LocalCluster
from tests.conftest import Env, failing_v2_playbook, seed, social_users, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    own = LocalCluster(tmp_path_factory.mktemp("restartable"))
    own.start()
    yield own
    own.destroy()


@pytest.fixture(scope="module")
def pg_server(cluster: LocalCluster) -> str:
    """The `env` fixture's server: this module's own cluster."""
    return cluster.dsn()


def stopped(pid: int) -> bool:
    """Whether the process stopped itself at its failpoint (state T in /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] == "T"


def run_stopped_at(env: Env, failpoint: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "deployctl", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=env.dir, env={**os.environ, "DEPLOYCTL_FAILPOINT": f"{failpoint}:stop"})
    wait_for(f"deployctl to stop at {failpoint}", lambda: proc.poll() is not None or stopped(proc.pid),
             timeout=300)
    assert proc.poll() is None, proc.communicate()
    return proc


def go_on(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def released_v1(env: Env) -> None:
    assert env.cli("release", str(env.playbook("1"))).returncode == 0
    seed(env)


def user_names(env: Env) -> set[str]:
    with env.connect() as conn:
        return {name for (name,) in conn.execute("SELECT name FROM users").fetchall()}


def add_user(env: Env, name: str) -> None:
    with env.connect() as conn:
        conn.execute("INSERT INTO users (name, email) VALUES (%s, %s)", (name, f"{name}@example.com"))


def test_a_database_restart_inside_the_capture_window_is_survived(env: Env, cluster: LocalCluster) -> None:
    released_v1(env)
    proc = run_stopped_at(env, "smoke:started", "release", "--json", str(env.playbook("2")))
    add_user(env, "before_restart")
    cluster.restart()
    add_user(env, "after_restart")

    code, out, err = go_on(proc)

    # The journal and the capture reconnected: the release went on as if nothing happened.
    assert code == 0, out + err
    assert json.loads(out)["status"] == "released"
    assert "reconnected to the state database" in err
    assert {"before_restart", "after_restart"} <= user_names(env)
    assert env.leftovers() == []


def test_a_database_restart_inside_the_rollback_is_survived_and_loses_nothing(
        env: Env, cluster: LocalCluster) -> None:
    released_v1(env)
    proc = run_stopped_at(env, "rollback.database:loaded", "release", "--json", str(failing_v2_playbook(env)))
    add_user(env, "during_rollback")  # written to the migrated database: the delta must carry it
    cluster.restart()

    code, out, err = go_on(proc)

    result = json.loads(out)
    assert code == 1, out + err
    assert result["status"] == "rolled_back", result
    assert env.revision() == "0001"
    assert "during_rollback" in user_names(env), "a write made before the restart was replayed"
    assert env.leftovers() == []


def test_a_state_database_that_stays_away_moves_users_to_blue_and_says_how_to_finish(
        env: Env, cluster: LocalCluster) -> None:
    released_v1(env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "deployctl", "release", str(env.playbook("2"))], text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=env.dir,
        env={**os.environ, "DEPLOYCTL_FAILPOINT": "smoke:started:stop", "DEPLOYCTL_RECONNECT_S": "3"})
    wait_for("deployctl to stop before its smoke check", lambda: stopped(proc.pid), timeout=300)
    cluster.stop()
    try:
        code, out, err = go_on(proc)
    finally:
        cluster.start()

    assert code == 3, out + err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: the state database stayed away for 3 s ("), last
    assert last.endswith("green is stopped; once it answers, `deployctl rollback 2` finishes the rollback")
    assert env.release_row(2)["status"] == "running", "nothing could be recorded"
    status = env.cli("status", "--state-dsn", env.state_dsn)
    assert "no deployctl process is working on it" in status.stdout, status.stdout

    finished = env.cli("rollback", "--json", "--state-dsn", env.state_dsn)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert json.loads(finished.stdout)["status"] == "rolled_back"
    assert env.revision() == "0001"
    assert env.leftovers() == []


@pytest.fixture
def small_slot_limit(cluster: LocalCluster) -> Iterator[None]:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
        conn.execute("SELECT pg_reload_conf()")
    try:
        yield
    finally:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
            conn.execute("SELECT pg_reload_conf()")


def test_a_slot_the_server_invalidates_makes_the_delta_incomplete_and_restore_refuse(
        env: Env, cluster: LocalCluster, small_slot_limit: None) -> None:
    released_v1(env)
    proc = run_stopped_at(env, "smoke:started", "release", "--json", str(failing_v2_playbook(env)))
    add_user(env, "in_the_lost_wal")
    with env.connect() as conn:  # more WAL than max_slot_wal_keep_size, then a checkpoint
        def lost() -> bool:
            for _ in range(3):
                conn.execute("SELECT pg_logical_emit_message(true, 'fill', repeat('x', 1 << 20))")
            conn.execute("SELECT pg_switch_wal()")
            conn.execute("CHECKPOINT")
            row = conn.execute("SELECT wal_status FROM pg_replication_slots "
                               "WHERE slot_name = 'deployctl_social_2'").fetchone()
            return row is not None and row[0] == "lost"

        wait_for("the server to invalidate the capture slot", lost, timeout=120, every=0)

    code, out, err = go_on(proc)

    # A restore would silently lose what the slot held: it is refused, and says the way out.
    assert code == 3, out + err
    result = json.loads(out)
    assert result["status"] == "rollback_failed"
    assert "is incomplete (replication slot deployctl_social_2 is lost)" in result["reason"]
    assert "--database keep|downgrade" in result["reason"]
    assert env.revision() == "0002", "nothing was restored"
    done = env.cli("--yes", "rollback", "--database", "downgrade", "--state-dsn", env.state_dsn)
    assert done.returncode == 0, done.stdout + done.stderr
    assert env.revision() == "0001" and "in_the_lost_wal" in user_names(env)
    assert env.leftovers() == []


@pytest.fixture
def small_disk(env: Env) -> Iterator[Path]:
    """A filesystem of its own for the workdir, 32 MiB: enough for preflight's estimate."""
    mount = env.dir / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        env.stop_apps(mount / "work")
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(folder: Path) -> None:
    """Write into `folder` until its filesystem is full."""
    with open(folder / "filler", "wb") as out:
        try:
            while True:
                out.write(b"\0" * (1 << 16))
                out.flush()
        except OSError:
            pass


def test_a_disk_that_fills_during_the_snapshot_fails_the_release_and_leaves_no_capture(
        env: Env, small_disk: Path) -> None:
    workdir = str(small_disk / "work")
    assert env.cli("release", str(env.playbook("1", workdir=workdir))).returncode == 0
    seed(env)
    proc = run_stopped_at(env, "snapshot:started", "release", "--json",
                          str(env.playbook("2", workdir=workdir)))
    fill(small_disk)  # after preflight measured the free space, before the dump

    code, out, err = go_on(proc)

    assert code == 1, out + err
    result = json.loads(out)
    assert result["status"] == "rolled_back"
    assert result["reason"].startswith("snapshot failed: "), result["reason"]
    assert "No space left on device" in result["reason"]
    assert env.revision() == "0001"
    assert env.leftovers() == []


# -- kill -9 at random moments under users ------------------------------------------------------

users = social_users()
# Every step a failing release goes through, those with the most work inside first: trial N
# kills inside step N (round and round), at a random moment of its work. `make test` runs the
# first three; `make soak` (DEPLOYCTL_KILLS=N) runs every step several times.
STEPS = ["snapshot", "rollback.database", "smoke", "migrate", "deploy", "rollback.capture",
         "rollback.green", "rollback.blue", "preflight"]
KILLS = int(os.environ.get("DEPLOYCTL_KILLS", "3"))


def started(env: Env, step: str) -> bool:
    with psycopg.connect(env.state_dsn, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM deployctl.events WHERE release_id = 2 AND step = %s",
                            (step,)).fetchone() is not None


@pytest.mark.parametrize("trial", range(KILLS))
def test_a_kill_at_a_random_moment_then_rollback_or_resume_loses_no_acknowledged_action(
        env: Env, trial: int) -> None:
    rng = random.Random(20261202 + trial)
    step, delay, finisher = STEPS[trial % len(STEPS)], rng.uniform(0, 0.6), rng.choice(
        ["rollback", "resume"])
    print(f"\ntrial {trial}: kill {delay:.3f} s into {step}, then `deployctl {finisher}`")
    released_v1(env)
    traffic = users.Traffic([f"http://127.0.0.1:{env.blue_port}"], workers=4, seed=trial)
    traffic.start()
    try:
        traffic.add_when_healthy(f"http://127.0.0.1:{env.green_port}")
        with (env.dir / "release.out").open("w") as out, (env.dir / "release.err").open("w") as err:
            release = subprocess.Popen(
                [sys.executable, "-m", "deployctl", "release", str(failing_v2_playbook(env))],
                stdout=out, stderr=err, cwd=env.dir)
        wait_for(f"{step} to start", lambda: release.poll() is not None or started(env, step),
                 timeout=300, every=0.01)
        time.sleep(delay)
        release.kill()
        killed = release.wait() == -signal.SIGKILL
        if killed:
            finished = env.cli(finisher, "--state-dsn", env.state_dsn, timeout=300)
            assert finished.returncode in (0, 1), finished.stdout + finished.stderr
        time.sleep(1.0)  # blue keeps taking writes after the end
    finally:
        acks = traffic.stop()
    everything = acks + traffic.maybe_applied()

    row = env.release_row(2)
    assert row is not None and row["status"] == "rolled_back", row
    with psycopg.connect(env.state_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                            ).fetchone() == (0,), "the lock went with the release"
    assert env.revision() == "0001"
    assert env.leftovers() == []
    with env.connect() as conn:
        found = users.check(conn, everything)
    print("\n".join(found.lines()))
    assert found.ok, "\n".join(found.problems[:20])
    assert len(acks) > 0


def test_green_stops_while_a_drain_in_progress_is_held_up_traffic_never_waits_for_capture(
        env: Env) -> None:
    released_v1(env)
    release = subprocess.Popen(
        [sys.executable, "-m", "deployctl", "release", "--json", str(failing_v2_playbook(env))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=env.dir)
    green = f"http://127.0.0.1:{env.green_port}/health"
    wait_for("the smoke check to start", lambda: started(env, "smoke"), timeout=300)
    holder = psycopg.connect(env.state_dsn)
    try:
        # The capture worker's next drain waits behind this lock, as behind a slow journal.
        holder.execute("LOCK TABLE deployctl.captures, deployctl.changes IN ACCESS EXCLUSIVE MODE")
        add_user(env, "while_the_drain_waits")
        wait_for("green to be stopped while the drain still waits", lambda: not answers(green),
                 timeout=30)
        assert release.poll() is None, "the rollback waits for the capture only before its database step"
    finally:
        holder.close()
    out, err = release.communicate(timeout=300)
    assert release.returncode == 1, out + err
    assert json.loads(out)["status"] == "rolled_back"
    assert "while_the_drain_waits" in user_names(env)
    assert env.leftovers() == []
