"""Whole releases of the sample app through the real CLI, against a real PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import yaml

from tests.conftest import Env, seed

pytestmark = pytest.mark.integration


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def release_v1(env: Env) -> None:
    done = env.cli("release", str(env.playbook("1")))
    assert done.returncode == 0, done.stdout + done.stderr
    seed(env)


def test_first_release_migrates_starts_and_finalizes(env: Env) -> None:
    done = env.cli("release", "--json", str(env.playbook("1")))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "released"
    assert [s["step"] for s in result["steps"]] == [
        "preflight", "snapshot", "migrate", "deploy", "smoke", "finalize"]
    assert all(s["outcome"] == "done" and s["duration_s"] >= 0 for s in result["steps"])
    assert env.revision() == "0001"
    assert json.loads(get(f"http://127.0.0.1:{env.blue_port}/")[1]) == {"app": "social", "version": "1"}


def test_release_of_v2_replaces_v1(env: Env) -> None:
    release_v1(env)
    done = env.cli("release", str(env.playbook("2")))
    assert done.returncode == 0, done.stderr
    assert "outcome: released" in done.stdout
    assert env.revision() == "0002"
    assert get(f"http://127.0.0.1:{env.green_port}/")[0] == 200
    # finalize stopped version 1
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{env.blue_port}/", timeout=2)
    history = env.cli("history", "--json", "--state-dsn", env.state_dsn, "--app", "social")
    assert [(r["version"], r["status"]) for r in json.loads(history.stdout)] == [
        ("2", "released"), ("1", "released")]


@pytest.mark.parametrize("mode", ["restore", "downgrade"])
def test_failed_smoke_check_rolls_back_database_and_keeps_blue_serving(env: Env, mode: str) -> None:
    release_v1(env)
    with env.connect() as conn:
        before = conn.execute("SELECT count(*) FROM messages").fetchone()
    playbook = env.playbook("2", database={"rollback": mode},
                            deploy={**_deploy_with(env, SOCIAL_FAIL="1")})
    done = env.cli("release", "--json", str(playbook))
    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "rolled_back"
    assert "smoke failed: feed answers" in result["reason"]
    assert env.release_row(result["release_id"])["ended_by"] == "step_failed"  # type: ignore[index]
    assert [(s["step"], s["outcome"]) for s in result["steps"]][-5:] == [
        ("smoke", "failed"), ("rollback.blue", "done"), ("rollback.green", "done"),
        ("rollback.database", "done"), ("rollback.capture", "done")]
    assert env.revision() == "0001"
    database_step = next(s for s in result["steps"] if s["step"] == "rollback.database")
    if mode == "restore":  # the summary says what users felt and what was replayed
        assert database_step["pause_ms"] >= 0 and database_step["conflicts"] == 0
        assert database_step["replayed"] == 0, "nobody wrote during this release"
    with env.connect() as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == before
        if mode == "restore":
            kept = conn.execute("SELECT datname FROM pg_database WHERE datname = %s",
                                (f"{env.dbname}_failed_{result['release_id']}",)).fetchone()
            assert kept is not None, "the failed database is kept for forensics"
    assert get(f"http://127.0.0.1:{env.blue_port}/feed")[0] == 200, "blue still serves"
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{env.green_port}/", timeout=2)


def _deploy_with(env: Env, **extra: str) -> dict[str, object]:
    """The default deploy section with extra environment for the app."""
    data = yaml.safe_load(env.playbook("2").read_text())["deploy"]
    data["env"].update(extra)
    return data


def test_second_release_while_one_runs_exits_4_and_changes_nothing(env: Env) -> None:
    release_v1(env)
    slow = env.playbook("2", deploy=_deploy_with(env, SOCIAL_STARTUP_DELAY="4"))
    first = subprocess.Popen([sys.executable, "-m", "deployctl", "release", str(slow)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        row = env.release_row()
        if row and row["id"] == 2 and ("deploy", "started") in env.events(2):
            break
        time.sleep(0.1)
    else:
        first.kill()
        pytest.fail("the first release never reached deploy")
    events_before = env.events(2)
    second = env.cli("release", str(env.playbook("2")))
    assert second.returncode == 4
    assert "social is being released by" in second.stderr
    assert env.release_row()["id"] == 2, "no release row was created"
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert env.events(2)[: len(events_before)] == events_before


def test_unfinished_release_blocks_the_next_one_until_resolved(env: Env) -> None:
    release_v1(env)
    crashed = env.cli("release", str(env.playbook("2")),
                      env={"DEPLOYCTL_FAILPOINT": "migrate:acted"})
    assert crashed.returncode == -9
    blocked = env.cli("release", str(env.playbook("2")))
    assert blocked.returncode == 4
    assert "release #2 of social is unfinished" in blocked.stderr
    status = env.cli("status", "--state-dsn", env.state_dsn, "--app", "social")
    assert "migrate" in status.stdout and "started" in status.stdout
    assert "no deployctl process is working on it: run `deployctl resume 2`" in status.stdout


def test_failed_preflight_refuses_with_exit_2_and_touches_nothing(env: Env) -> None:
    release_v1(env)
    playbook = env.playbook("2", migrations={"target": "0009"})
    done = env.cli("release", "--json", str(playbook))
    assert done.returncode == 2, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "refused"
    assert "unknown Alembic revision '0009'" in result["reason"]
    assert [(s["step"], s["outcome"]) for s in result["steps"]] == [("preflight", "failed")]
    assert env.revision() == "0001"
    assert not list((env.workdir / "snapshots").glob("social-2-*"))
    assert get(f"http://127.0.0.1:{env.blue_port}/feed")[0] == 200
