"""`deployctl lock`: an application frozen on purpose (as `kamal lock` does); no release of it
starts, and whoever is refused is told who locked it, since when and why."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Env

pytestmark = pytest.mark.integration


def test_a_locked_app_refuses_releases_until_the_lock_is_released(env: Env) -> None:
    playbook = str(env.playbook("1"))
    state = ["-p", playbook]
    assert env.cli("lock", "status", *state).stdout.strip() == "social: not locked"

    locked = env.cli("lock", "acquire", "-m", "database maintenance until 14:00", *state)
    assert locked.returncode == 0, locked.stderr
    assert "social: locked by " in locked.stdout and "'database maintenance until 14:00'" in locked.stdout

    again = env.cli("lock", "acquire", "-m", "me too", *state)
    assert again.returncode == 4 and "already locked" in again.stderr and "maintenance" in again.stderr

    refused = env.cli("release", playbook)
    assert refused.returncode == 4, refused.stdout + refused.stderr
    assert "social is locked by " in refused.stderr and "database maintenance" in refused.stderr
    assert "deployctl lock release" in refused.stderr
    assert env.release_row() is None and env.revision() is None, "a refused release touches nothing"

    shown = json.loads(env.cli("lock", "status", "--json", "--app", "social",
                               "--state-dsn", env.state_dsn).stdout)
    assert shown["locked"] and shown["lock"]["message"] == "database maintenance until 14:00"

    lifted = env.cli("lock", "release", *state)
    assert lifted.returncode == 0 and "social: lock released" in lifted.stdout
    assert env.cli("lock", "release", *state).stdout.strip() == "social: was not locked"
    done = env.cli("release", playbook)
    assert done.returncode == 0, done.stdout + done.stderr


def test_status_shows_the_lock_and_lock_needs_an_app(env: Env) -> None:
    playbook = str(env.playbook("1"))
    assert env.cli("release", playbook).returncode == 0
    assert env.cli("lock", "acquire", "-m", "release freeze for the holidays", "-p", playbook).returncode == 0
    status = env.cli("status", "-p", playbook)
    assert "releases of social are locked by " in status.stdout and "holidays" in status.stdout
    nameless = env.cli("lock", "status", "--state-dsn", env.state_dsn, env={"DEPLOYCTL_PLAYBOOK": ""})
    assert nameless.returncode == 2 and "--app" in nameless.stderr
    blank = env.cli("lock", "acquire", "-m", "  ", "-p", playbook)
    assert blank.returncode == 2 and "--message" in blank.stderr
