"""Releases that move real users through a real HAProxy in sticky cohorts, watched by gates.

Version 1 of the sample app is released behind HAProxy, then version 2 in cohort steps while
simulated users (each with a user id in X-User-Id) keep reading their feed through HAProxy.
The tests show: each user moves from version 1 to version 2 once and never back, allow-listed
users first, with zero failed requests; a gate breach at 10% puts every user back on version 1
and rolls back; operators pause, promote and abort a running release from another terminal; a
step with no conclusive reading rolls back in CI.
"""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
import time

import psycopg
import pytest

from tests.conftest import Env, seed, wait_for
from tests.routers_env import HaproxyEnv
from tests.traffic_env import GATES, STAFF, USERS, Users, released_v1, routed, versions_now

pytestmark = pytest.mark.integration

def test_a_staged_release_moves_each_user_once_allow_list_first_with_no_failed_request(
        env: Env, haproxy: HaproxyEnv) -> None:
    released_v1(env, haproxy)
    playbook = routed(env, haproxy, "2", gates=GATES, cohorts=[
        {"name": "staff", "allow": STAFF, "hold": "1.5s"},
        {"name": "beta", "percent": 10, "hold": "1.5s"},
        {"name": "half", "percent": 50, "hold": "1.5s"},
        {"name": "everyone", "percent": 100, "hold": "1.5s"}])
    with Users(haproxy.port) as users:
        done = env.cli("release", str(playbook), "--json", timeout=300)
        time.sleep(0.5)
    assert done.returncode == 0, done.stdout + done.stderr
    steps = [s["step"] for s in json.loads(done.stdout)["steps"]]
    assert steps[5:10] == ["route", "cohort.staff", "cohort.beta", "cohort.half", "cohort.everyone"]

    assert len(users.seen) > 1000, "the simulated users sent too few requests to judge"
    assert users.failed() == [], f"{len(users.failed())} of {len(users.seen)} requests failed"
    # Sticky and monotone: once a user got version 2, never version 1 again.
    for user in USERS:
        versions = [v for _, u, _, v in users.seen if u == user]
        assert "2" in versions, f"{user} never reached version 2"
        first_two = versions.index("2")
        assert set(versions[first_two:]) == {"2"}, f"{user} went back to version 1"
    first = users.first_on("2")
    staff_last = max(first[u] for u in STAFF)
    others_first = min(t for u, t in first.items() if u not in STAFF)
    assert staff_last < others_first, "allow-listed users reach green before anyone else"
    assert set(versions_now(haproxy.port).values()) == {"2"}


def test_a_gate_breach_at_ten_percent_puts_every_user_back_on_blue_and_rolls_back(
        env: Env, haproxy: HaproxyEnv) -> None:
    released_v1(env, haproxy)
    playbook = routed(env, haproxy, "2", gates=GATES,
                      deploy={"env": {"DATABASE_URL": env.app_dsn, "SOCIAL_FAIL": "users"}},
                      cohorts=[{"name": "beta", "percent": 10, "hold": "30s"},
                               {"name": "everyone", "percent": 100, "hold": "1s"}])
    with Users(haproxy.port) as users:
        done = env.cli("release", str(playbook), timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    release = env.release_row()
    assert release is not None and release["status"] == "rolled_back"
    assert "gate breach in cohort beta" in release["reason"] and "error rate" in release["reason"]
    assert release["ended_by"] == "breach"  # what ended it, typed, for the report
    events = env.events(release["id"])
    assert ("cohort.beta", "failed") in events and ("cohort.everyone", "started") not in events
    assert events.index(("rollback.traffic", "done")) < events.index(("rollback.database", "started"))
    assert set(versions_now(haproxy.port).values()) == {"1"}
    # Only the beta cohort ever met the bug.
    hit = {u for _, u, status, _ in users.seen if status == 500}
    assert hit and len(hit) <= 0.2 * len(USERS), f"{len(hit)} users met version 2's bug"
    # Besides the bug, users saw only answers, or 503 (maintenance) while the databases swapped.
    assert {status for _, _, status, _ in users.seen} <= {200, 500, 503}


def test_a_business_metric_below_its_baseline_and_a_failing_probe_roll_back(
        env: Env, haproxy: HaproxyEnv) -> None:
    released_v1(env, haproxy)
    seed(env)  # a business metric needs business: users
    count = "select count(*) from users"
    gates = {**GATES, "error_rate": {}, "sql": [
        {"name": "users kept", "query": count, "baseline": count, "min_ratio": 0.5},
        {"name": "users doubled", "query": count, "baseline": count, "min_ratio": 2}]}
    playbook = routed(env, haproxy, "2", gates=gates,
                      cohorts=[{"name": "beta", "percent": 10, "hold": "30s"}])
    done = env.cli("release", str(playbook), timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    reason = (env.release_row() or {})["reason"]
    assert "users doubled:" in reason and "below 200%" in reason and "users kept" not in reason, reason

    probe = {**GATES, "error_rate": {}, "http": [{"name": "feed as a beta user", "http": {
        "url": f"http://127.0.0.1:{haproxy.port}/no-such-page", "headers": {"X-User-Id": "user1"}}}]}
    playbook = routed(env, haproxy, "2", gates=probe,
                      cohorts=[{"name": "beta", "percent": 10, "hold": "30s"}])
    done = env.cli("release", str(playbook), timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    reason = (env.release_row() or {})["reason"]
    assert "feed as a beta user:" in reason and "status 404, expected 200" in reason, reason


def test_operators_pause_promote_and_abort_a_running_release_from_another_terminal(
        env: Env, haproxy: HaproxyEnv) -> None:
    released_v1(env, haproxy)
    playbook = routed(env, haproxy, "2", gates=GATES, cohorts=[
        {"name": "staff", "allow": STAFF, "hold": "10m"},
        {"name": "beta", "percent": 10, "hold": "10m"}], capture={"max_retained_wal": "1MB"})
    running = subprocess.Popen([sys.executable, "-m", "deployctl", "release", str(playbook)],
                               cwd=env.dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        rid = None

        def at(step: str) -> bool:
            nonlocal rid
            row = env.release_row()
            rid = row["id"] if row and row["version"] == "2" else None
            return rid is not None and (step, "started") in env.events(rid)

        wait_for("cohort.staff", lambda: at("cohort.staff"))
        state = ["--state-dsn", env.state_dsn]
        paused = env.cli("pause", *state)
        assert paused.returncode == 0, paused.stderr
        assert "pause requested" in paused.stdout
        resumed = env.cli("resume", *state)  # a running release: resume is a request to it
        assert resumed.returncode == 0, resumed.stderr
        assert "resume requested" in resumed.stdout
        paused = env.cli("pause", *state)
        assert paused.returncode == 0, paused.stderr
        # `status` shows the step, its share and the pause, with when it rolls back on its own.
        wait_for("the pause in status",
                  lambda: "paused, waiting for an operator" in env.cli("status", *state).stdout)
        shown = env.cli("status", *state).stdout
        assert f"now: cohort.staff: 0% of users and {len(STAFF)} allow-listed on version 2" in shown, shown
        assert "left in the hold" in shown and "rolls back on its own at" in shown, shown
        promoted = env.cli("promote", *state)
        assert promoted.returncode == 0, promoted.stderr
        wait_for("cohort.beta", lambda: at("cohort.beta"))
        assert rid is not None
        detail = [e for e in env.events(rid) if e == ("cohort.staff", "done")]
        assert detail, "the promoted step is done"
        assert set(versions_now(haproxy.port)[u] for u in STAFF) == {"2"}

        aborted = env.cli("abort", *state)
        assert aborted.returncode == 0, aborted.stderr
        out, _ = running.communicate(timeout=120)
        assert running.returncode == 1, out
    finally:
        if running.poll() is None:
            running.kill()
    row = env.release_row(rid)
    assert row is not None and row["status"] == "aborted" and row["ended_by"] == "operator"
    assert set(versions_now(haproxy.port).values()) == {"1"}
    # Green still runs for a look, until the rollback finishes the job.
    assert env.cli("resume", *state).returncode == 2
    # Meanwhile users write on blue: a keeper holds the slot's WAL within its budget.
    assert re.search(r'"capture_keeper_pid": \d+', out), out
    with psycopg.connect(env.app_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO users (name, email) VALUES ('Kept', 'kept@example.com')")
        for _ in range(4):
            conn.execute("INSERT INTO messages (user_id, body) SELECT (SELECT max(id) FROM users), "
                         "'while aborted ' || repeat('x', 500) FROM generate_series(1, 1000)")

    def stored() -> bool:
        with psycopg.connect(env.state_dsn) as conn:
            return conn.execute("SELECT count(*) FROM deployctl.wal_batches WHERE release_id = %s",
                                (rid,)).fetchone() != (0,)

    wait_for("the capture keeper to store the slot's WAL", stored)
    finished = env.cli("rollback", str(rid), *state, timeout=300)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert env.release_row(rid)["status"] == "rolled_back"  # type: ignore[index]
    assert env.cli("pause", *state).returncode == 2
    keeper_log = env.workdir / f"social-{rid}-keeper.log"
    wait_for("the keeper to stop", lambda: "capture keeper stopped" in keeper_log.read_text())
    assert stat.S_IMODE(keeper_log.stat().st_mode) == 0o600
    # Nothing users wrote while the release was aborted is lost by the rollback's restore.
    with psycopg.connect(env.app_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM messages WHERE body LIKE 'while aborted %'"
                            ).fetchone() == (4000,)


@pytest.mark.parametrize("unattended", ["CI=true", "--yes"])
def test_a_step_without_a_conclusive_reading_rolls_back_in_ci(
        env: Env, haproxy: HaproxyEnv, unattended: str) -> None:
    released_v1(env, haproxy)
    playbook = routed(env, haproxy, "2", gates={**GATES, "on_inconclusive": "pause"},
                      cohorts=[{"name": "beta", "percent": 10, "hold": "1.5s"}])
    # Each on its own: CI runs this test with CI=true.
    args, extra = ((["release"], {"CI": "true", "DEPLOYCTL_YES": ""}) if unattended == "CI=true"
                   else (["--yes", "release"], {"CI": ""}))
    done = env.cli(*args, str(playbook), env=extra, timeout=300)  # nobody is using the app
    assert done.returncode == 1, done.stdout + done.stderr
    release = env.release_row()
    assert release is not None and "no gate reading was conclusive" in release["reason"]
    assert release["ended_by"] == "inconclusive"
    assert set(versions_now(haproxy.port).values()) == {"1"}


def test_a_rollback_requested_during_deploy_is_carried_out_before_the_next_step(env: Env) -> None:
    playbook = env.playbook("2", deploy={"env": {"DATABASE_URL": env.app_dsn, "SOCIAL_STARTUP_DELAY": "3"}})
    running = subprocess.Popen([sys.executable, "-m", "deployctl", "release", str(playbook)],
                               cwd=env.dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def deploying() -> bool:
            row = env.release_row()
            return row is not None and ("deploy", "started") in env.events(row["id"])

        wait_for("the deploy step", deploying)
        asked = env.cli("rollback", "--state-dsn", env.state_dsn)
        assert asked.returncode == 0, asked.stderr
        assert "rollback requested" in asked.stdout
        out, _ = running.communicate(timeout=300)
    finally:
        if running.poll() is None:
            running.kill()
    assert running.returncode == 1, out
    row = env.release_row()
    assert row is not None and row["status"] == "rolled_back"
    assert row["reason"] == "rollback requested by an operator before smoke"
    assert ("smoke", "started") not in env.events(row["id"])


def test_status_watch_follows_a_running_release_until_it_ends(env: Env, haproxy: HaproxyEnv) -> None:
    released_v1(env, haproxy)
    playbook = routed(env, haproxy, "2", gates=GATES,
                      cohorts=[{"name": "beta", "percent": 10, "hold": "3s"}])
    running = subprocess.Popen([sys.executable, "-m", "deployctl", "release", str(playbook)],
                               cwd=env.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def started() -> bool:
            row = env.release_row()
            return row is not None and row["version"] == "2"

        wait_for("release 2", started)
        streamed = subprocess.Popen(  # beside it, the same as one JSON object per line
            [sys.executable, "-m", "deployctl", "status", "--watch", "--json", "--interval", "0.5",
             "--state-dsn", env.state_dsn], cwd=env.dir, stdout=subprocess.PIPE, text=True)
        watched = env.cli("status", "--watch", "--interval", "0.5", "--state-dsn", env.state_dsn, timeout=300)
        assert running.wait(timeout=300) == 0
        lines, _ = streamed.communicate(timeout=60)
    finally:
        for process in (running, streamed):
            if process.poll() is None:
                process.kill()
    assert watched.returncode == 0, watched.stderr
    looks = watched.stdout.count("release #2: social 2")
    assert looks >= 3, watched.stdout
    assert watched.stdout.rstrip().endswith("live version: 2"), watched.stdout[-400:]
    assert "outcome: released" in watched.stdout and "outcome: running" in watched.stdout
    assert "now: cohort.beta: 10% of users" in watched.stdout and "left in the hold" in watched.stdout
    assert "latest gate reading" in watched.stdout and "error rate" in watched.stdout
    assert streamed.returncode == 0
    looked = [json.loads(line) for line in lines.splitlines()]
    assert len(looked) >= 3 and looked[-1]["status"] == "released", lines[-600:]
    during = [look["now"] for look in looked if look["now"]]
    assert during and {now["percent"] for now in during} == {10}, during
    assert all(0 <= now["hold_left_s"] <= 3 for now in during), during


def test_status_watch_exits_with_the_code_of_the_release_it_watched(env: Env) -> None:
    broken = env.playbook("1", smoke=[{"name": "nothing there", "sql": "select false"}])
    failed = env.cli("release", str(broken))
    assert failed.returncode == 1, failed.stdout + failed.stderr
    state = ["--state-dsn", env.state_dsn]
    assert env.cli("status", *state).returncode == 0  # a look, not a watch
    assert env.cli("status", "--watch", *state).returncode == 1
    assert env.cli("status", "--watch", "--timeout", "0", *state).returncode == 1
