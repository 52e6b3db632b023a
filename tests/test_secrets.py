"""Secrets from `${ENV}` and DSN passwords never appear in anything deployctl prints or keeps.

A real role with a real password: the release connects with it, so masking cannot be faked by
never using the secret.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
import yaml
from psycopg import sql

from tests.conftest import Env

pytestmark = pytest.mark.integration

PASSWORD = "pw-Zq8!xK2vN7"
TOKEN = "tok-4f9c1e7b2a"


def secret_playbook(env: Env, fail: bool) -> str:
    """A v1 playbook that logs in as a password role and hands the app a token from ${ENV}."""
    path = env.playbook("1")
    data = yaml.safe_load(path.read_text())
    user_dsn = env.app_dsn.replace("postgres@", "deployer:${DEPLOYER_PASSWORD}@")
    data["database"]["dsn"] = user_dsn
    data["deploy"]["env"] = {"DATABASE_URL": user_dsn, "API_TOKEN": "${API_TOKEN}"}
    if fail:
        data["smoke"][0]["http"]["status"] = 201  # the feed answers 200: the check fails
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.fixture
def deployer(pg_server: str) -> Iterator[None]:
    """A password role; requested before `env`, so it is dropped after env's databases."""
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE deployer LOGIN SUPERUSER PASSWORD {}").format(
            sql.Literal(PASSWORD)))
    yield
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute("DROP OWNED BY deployer")
        conn.execute("DROP ROLE deployer")


@pytest.mark.parametrize("fail", [False, True], ids=["released", "rolled-back"])
def test_no_output_of_a_release_contains_a_secret(deployer: None, env: Env, fail: bool) -> None:
    playbook = secret_playbook(env, fail)
    secrets = {"DEPLOYER_PASSWORD": PASSWORD, "API_TOKEN": TOKEN}
    outputs = []
    for args in (["plan", playbook], ["check", playbook], ["check", "--json", playbook],
                 ["--log-json", "release", playbook],
                 ["--log-text", "status", "-p", playbook],
                 ["history", "--json", "-p", playbook], ["status", "--json", "-p", playbook],
                 ["report", "1", "-p", playbook], ["report", "1", "--format", "json", "-p", playbook],
                 ["report", "1", "--format", "html", "-p", playbook],
                 ["delta", "show", "1", "--json", "-p", playbook]):
        done = env.cli(*args, env=secrets)
        outputs += [done.stdout, done.stderr]
        if args[-2:] == ["release", playbook]:
            assert done.returncode == (1 if fail else 0), done.stderr
    with psycopg.connect(env.state_dsn) as conn:
        journal = conn.execute("SELECT string_agg(detail::text, ' ') FROM deployctl.events").fetchone()
        kept = conn.execute("SELECT string_agg(playbook_text || coalesce(reason, ''), ' ') "
                            "FROM deployctl.releases").fetchone()
    outputs += [journal[0], kept[0]]
    outputs += [log.read_text() for log in (env.workdir / "run").glob("*/*.log")]
    everything = "\n".join(outputs)
    assert "step done" in everything, "the release did log"
    assert PASSWORD not in everything
    assert TOKEN not in everything
