"""deployctl killed with SIGKILL inside every step; `resume` and `rollback` both finish the job.

The failpoint (deployctl/failpoints.py) picks the exact moment: right after a step's `started`
event (nothing done yet) or right after it acted (done, but the journal does not know). After
the kill, the database must be in a state one of the two versions runs on, and the journal must
tell the truth about what happened.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import pytest
import yaml

from tests.conftest import Env, seed

pytestmark = pytest.mark.integration

FORWARD = ["preflight", "snapshot", "migrate", "deploy", "smoke", "finalize"]
ROLLBACK = ["rollback.blue", "rollback.green", "rollback.database", "rollback.capture"]
SOAK = os.environ.get("DEPLOYCTL_SOAK") == "1"


def _boundaries(steps: list[str]) -> list[tuple[str, str]]:
    """Right after a step acted (done, but the journal does not know: the hard case) and, in
    `make soak`, right after its `started` too (each kill costs a release or two)."""
    return [(step, point) for step in steps for point in ("started", "acted")
            if SOAK or point == "acted"]


# And inside a step's work where it matters: the snapshot step has created the capture's slot
# (or triggers) and not yet dumped; the swap has the live database refusing connections, then
# renamed away (blue is down).
FORWARD_KILLS = [*_boundaries(FORWARD), ("snapshot", "capturing")]
ROLLBACK_KILLS = [*_boundaries(ROLLBACK), ("rollback.database", "refusing"),
                  ("rollback.database", "renamed")]


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def counts(env: Env) -> tuple[int, int, int]:
    with env.connect() as conn:
        row = conn.execute("SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM messages), "
                           "(SELECT count(*) FROM likes)").fetchone()
    assert row is not None
    return row


def v1_live(env: Env) -> tuple[int, int, int]:
    done = env.cli("release", str(env.playbook("1")))
    assert done.returncode == 0, done.stderr
    seed(env)
    return counts(env)


def assert_journal_truthful(env: Env, release_id: int, killed_step: str) -> None:
    events = env.events(release_id)
    # The killed run's last event is the killed step's `started`: nothing claims more.
    first_run = events[: events.index((killed_step, "started")) + 1]
    assert (killed_step, "done") not in first_run
    for step, phase in events:
        if phase == "done":
            assert events.index((step, "started")) < events.index((step, "done"))
    # Each step is done at most once.
    done_steps = [step for step, phase in events if phase == "done"]
    assert len(done_steps) == len(set(done_steps))


def assert_released(env: Env, release_id: int) -> None:
    row = env.release_row(release_id)
    assert row is not None and row["status"] == "released"
    assert env.revision() == "0002"
    assert answers(env.green_port)
    assert not answers(env.blue_port), "finalize stops version 1"
    assert [s for s, p in env.events(release_id) if p == "done"] == FORWARD
    assert env.leftovers() == []


def assert_rolled_back(env: Env, release_id: int, before: tuple[int, int, int]) -> None:
    row = env.release_row(release_id)
    assert row is not None and row["status"] == "rolled_back"
    assert env.revision() == "0001"
    assert counts(env) == before
    assert answers(env.blue_port), "version 1 serves again"
    assert not answers(env.green_port), "version 2 is stopped"
    assert env.leftovers() == []


@pytest.mark.parametrize(("step", "point"), FORWARD_KILLS)
def test_kill_in_forward_step_then_resume_finishes_the_release(env: Env, step: str, point: str) -> None:
    v1_live(env)
    playbook = str(env.playbook("2"))
    killed = env.cli("release", playbook, env={"DEPLOYCTL_FAILPOINT": f"{step}:{point}"})
    assert killed.returncode == -9
    assert env.release_row(2)["status"] == "running"

    resumed = env.cli("resume", "--json", "--state-dsn", env.state_dsn)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert json.loads(resumed.stdout)["status"] == "released"
    assert_released(env, 2)
    assert_journal_truthful(env, 2, step)


@pytest.mark.parametrize(("step", "point"), FORWARD_KILLS)
def test_kill_in_forward_step_then_rollback_restores_version_1(env: Env, step: str, point: str) -> None:
    before = v1_live(env)
    playbook = str(env.playbook("2"))
    killed = env.cli("release", playbook, env={"DEPLOYCTL_FAILPOINT": f"{step}:{point}"})
    assert killed.returncode == -9

    rolled = env.cli("rollback", "--json", "-p", playbook)
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    result = json.loads(rolled.stdout)
    assert result["status"] == "rolled_back"
    assert result["reason"].startswith("the deployctl process running it died during "), result
    assert_rolled_back(env, 2, before)
    assert_journal_truthful(env, 2, step)


@pytest.mark.parametrize("command", ["resume", "rollback"])
@pytest.mark.parametrize(("step", "point"), ROLLBACK_KILLS)
def test_kill_during_rollback_then_resume_or_rollback_finishes_it(
    env: Env, step: str, point: str, command: str
) -> None:
    before = v1_live(env)
    broken = env.playbook("2", deploy={**_default_deploy(env), "env": {
        "DATABASE_URL": env.app_dsn, "SOCIAL_FAIL": "1"}})
    killed = env.cli("release", str(broken), env={"DEPLOYCTL_FAILPOINT": f"{step}:{point}"})
    assert killed.returncode == -9
    assert env.release_row(2)["status"] == "rolling_back"
    if point in ("refusing", "renamed"):
        status = env.cli("status", "--state-dsn", env.state_dsn)
        assert "the application is down: database " in status.stdout, status.stdout

    finished = env.cli(command, "--json", "--state-dsn", env.state_dsn)
    # resume finishes the rollback the release was doing: the release failed (exit 1);
    # an explicit rollback did what it was asked (exit 0).
    assert finished.returncode == (1 if command == "resume" else 0), finished.stderr
    assert_rolled_back(env, 2, before)
    assert_journal_truthful(env, 2, step)


def _default_deploy(env: Env) -> dict[str, object]:
    return dict(yaml.safe_load(env.playbook("2").read_text())["deploy"])


@pytest.mark.parametrize("point", ["refusing", "renamed"])
def test_a_swap_killed_halfway_is_finished_before_anything_else_the_rerun_does(
        env: Env, point: str) -> None:
    before = v1_live(env)
    broken = env.playbook("2", deploy={**_default_deploy(env), "env": {
        "DATABASE_URL": env.app_dsn, "SOCIAL_FAIL": "1"}})
    killed = env.cli("release", str(broken), env={"DEPLOYCTL_FAILPOINT": f"rollback.database:{point}"})
    assert killed.returncode == -9
    # The rerun is killed too, as soon as its first step starts: the database is back by then.
    again = env.cli("rollback", "--state-dsn", env.state_dsn,
                    env={"DEPLOYCTL_FAILPOINT": "rollback.database:started"})
    assert again.returncode == -9
    with env.connect() as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] >= before[0]  # type: ignore[index]
    finished = env.cli("rollback", "--state-dsn", env.state_dsn)
    assert finished.returncode == 0, finished.stderr
    assert_rolled_back(env, 2, before)


def test_cleanup_drops_the_databases_rollbacks_kept_once_their_release_ended_long_enough_ago(
        env: Env) -> None:
    v1_live(env)
    broken = env.playbook("2", deploy={**_default_deploy(env), "env": {
        "DATABASE_URL": env.app_dsn, "SOCIAL_FAIL": "1"}})
    assert env.cli("release", str(broken)).returncode == 1
    failed = f"{env.dbname}_failed_2"

    def databases() -> set[str]:
        with env.connect() as conn:
            return {n for (n,) in conn.execute("SELECT datname FROM pg_database")}

    assert failed in databases(), "the rollback kept the failed database for a look"
    young = env.cli("cleanup", "--json", "-p", str(broken), "--failed-databases", "--older-than", "1h")
    assert young.returncode == 0, young.stderr
    assert json.loads(young.stdout)["dropped"] == [] and failed in databases()

    bad = env.cli("cleanup", "-p", str(broken), "--failed-databases", "--older-than", "soon")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --older-than: "), bad.stderr

    old = env.cli("cleanup", "--json", "-p", str(broken), "--failed-databases", "--older-than", "1ms")
    assert old.returncode == 0, old.stderr
    assert [d.split(" (")[0] for d in json.loads(old.stdout)["dropped"]] == [f"database {failed}"]
    assert failed not in databases() and env.dbname in databases()
    assert env.revision() == "0001", "the live database is untouched"


def test_an_incomplete_delta_refuses_a_restore_and_the_operator_rolls_back_by_downgrade_instead(
        env: Env) -> None:
    before = v1_live(env)
    broken = env.playbook("2", deploy={**_default_deploy(env), "env": {
        "DATABASE_URL": env.app_dsn, "SOCIAL_FAIL": "1"}})
    killed = env.cli("release", str(broken), env={"DEPLOYCTL_FAILPOINT": "smoke:started"})
    assert killed.returncode == -9
    with env.connect() as conn:  # the slot is lost: the delta misses what it held
        conn.execute("SELECT pg_drop_replication_slot('deployctl_social_2')")

    refused = env.cli("rollback", "--state-dsn", env.state_dsn)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "is incomplete" in refused.stdout and "--database keep|downgrade" in refused.stdout
    assert env.release_row(2)["status"] == "rollback_failed"

    unconfirmed = env.cli("rollback", "2", "--database", "downgrade", "--state-dsn", env.state_dsn)
    assert unconfirmed.returncode == 2, unconfirmed.stdout + unconfirmed.stderr
    assert "deployctl --yes" in unconfirmed.stderr
    assert env.release_row(2)["status"] == "rollback_failed" and env.revision() == "0002"

    done = env.cli("--yes", "rollback", "2", "--database", "downgrade", "--json",
                   "--state-dsn", env.state_dsn)
    assert done.returncode == 0, done.stdout + done.stderr
    database = next(s for s in json.loads(done.stdout)["steps"] if s["step"] == "rollback.database")
    assert database["action"] == "downgraded 0002 → 0001"
    assert_rolled_back(env, 2, before)
