"""Malformed playbooks, and commands missing what they need, are refused by the real CLI with one
line, exit code 2, nothing touched.

Each bad playbook starts from a valid one (`Env.playbook`) with exactly one thing broken, so the
message can only be about that thing. "Nothing touched" means: no journal in the state database,
no Alembic table in the application database, no workdir folder.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployctl.errors import PlaybookError
from deployctl.playbook import PATTERNS, Playbook, parse
from tests.conftest import Env

pytestmark = pytest.mark.integration

# Not set in any sane environment; the test also deletes it to be sure.
UNSET = "DEPLOYCTL_TEST_NEVER_SET_7F3A"
SECRET_VAR = "DEPLOYCTL_TEST_SOME_SECRET"
SECRET_VALUE = "Hunter2-Sideways-S3cret"  # invalid as an app name, a URL and a rollback mode

Break = Callable[[dict[str, Any], Env], Any]


@dataclass(frozen=True)
class Case:
    """`breaks` turns the valid playbook into what is written: a mapping or a list is dumped as
    YAML, a string or bytes are written as they are, a function makes the file itself (given its
    path), None writes no file at all."""

    breaks: Break
    # The field path the message must name, after the line and column of the file where it is
    # written ("" when the whole file is wrong; "<position>" for a line and column alone;
    # "<N>" for line N alone, "<N:M>" for line N, column M).
    field: str
    expected: tuple[str, ...]  # fragments saying what was expected


def _set(path: str, value: Any) -> Break:
    """Set a dotted path (`smoke.0.http.status`) in the playbook to `value`."""

    def breaks(data: dict[str, Any], _: Env) -> dict[str, Any]:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[int(last) if isinstance(node, list) else last] = value
        return data

    return breaks


def _delete(path: str) -> Break:
    def breaks(data: dict[str, Any], _: Env) -> dict[str, Any]:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        del node[last]
        return data

    return breaks


def _rename(old: str, new: str) -> Break:
    def breaks(data: dict[str, Any], _: Env) -> dict[str, Any]:
        # Keep the key's place so the file still reads like a real typo.
        return {new if key == old else key: value for key, value in data.items()}

    return breaks


def _not_yaml(data: dict[str, Any], _: Env | None) -> str:
    text = yaml.safe_dump(data, sort_keys=False)
    return text.replace("  rollback: restore\n", "  rollback: restore: now\n")


def _yaml_error_position(data: dict[str, Any]) -> str:
    lines = _not_yaml(data, None).splitlines()
    number = next(i for i, line in enumerate(lines) if "restore: now" in line)
    return f"<{number + 1}:{lines[number].index(': now') + 1}>"


def _second_smoke_check_status_700(data: dict[str, Any], _: Env) -> dict[str, Any]:
    first = data["smoke"][0]
    data["smoke"].append({"name": "home answers", "http": {**first["http"], "status": 700}})
    return data


def _both_http_and_sql(data: dict[str, Any], _: Env) -> dict[str, Any]:
    data["smoke"][0]["sql"] = "select true"
    return data


def _missing_alembic_ini(data: dict[str, Any], env: Env) -> dict[str, Any]:
    data["migrations"]["alembic_ini"] = str(env.dir / "nowhere" / "alembic.ini")
    return data


def _text(body: str | bytes) -> Break:
    return lambda data, _: body


def _yaml_text(data: dict[str, Any], _: Env) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def _encoded(encoding: str) -> Break:
    def breaks(data: dict[str, Any], env: Env) -> bytes:
        data["version"] = "café"  # refused as a version too, but the bytes are refused first
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode(encoding)

    return breaks


def _appended(text: str) -> Break:
    return lambda data, env: _yaml_text(data, env) + text


def _link_to(target: str) -> Break:
    return lambda data, env: lambda path: path.symlink_to(target)


def _fifo(data: dict[str, Any], env: Env) -> Callable[[Path], None]:
    return os.mkfifo


LAUGHS = "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}' if i else 'lol'] * 10)}]\n" for i in range(9))

FUZZ = [
    pytest.param(Case(_encoded("latin-1"), "<2>", ("not UTF-8 text", "0xe9", "save the playbook as "
                                                                             "UTF-8")), id="latin-1"),
    pytest.param(Case(_encoded("utf-16"), "", ("UTF-16", "save the playbook as UTF-8")), id="utf-16"),
    pytest.param(Case(_text(bytes(range(256)) * 4), "<2>", ("not UTF-8 text",)), id="binary"),
    pytest.param(Case(_text("a: " + "[" * 100_000 + "]" * 100_000), "<position>",
                      ("nested more than 32 levels deep",)), id="deep-nesting"),
    pytest.param(Case(_text(LAUGHS), "<position>", ("expands to more than",)), id="billion-laughs"),
    pytest.param(Case(_text("a: &a [1, *a]\n"), "<position>", ("an alias refers to the node that holds "
                                                                "it",)), id="alias-to-itself"),
    pytest.param(Case(_text(("# " + "x" * 80 + "\n") * 20_000), "", ("larger than 1024 KiB",)),
                 id="too-large"),
    pytest.param(Case(_link_to("/dev/zero"), "", ("not a regular file",)), id="link-to-dev-zero"),
    pytest.param(Case(_fifo, "", ("not a regular file",)), id="fifo"),
    pytest.param(Case(_appended("app: other\n"), "<position>", ("duplicate key 'app'",)),
                 id="duplicate-key"),
    pytest.param(Case(_text("snapshot:\n  jobs: " + "9" * 5000 + "\n"), "",
                      ("not valid YAML", "integer string conversion")), id="integer-of-5000-digits"),
    pytest.param(Case(_set("deploy.health.timeout", 10**400), "deploy.health.timeout",
                      ("positive, finite duration",)), id="duration-integer-too-large"),
    pytest.param(Case(_set("deploy.health.timeout", float("nan")), "deploy.health.timeout",
                      ("positive, finite duration", "nan")), id="duration-nan"),
    pytest.param(Case(_set("deploy.health.timeout", float("inf")), "deploy.health.timeout",
                      ("positive, finite duration", "inf")), id="duration-inf"),
    pytest.param(Case(_set("database.statement_timeout", "99999999h"), "database.statement_timeout",
                      ("at most 7 days",)), id="duration-absurd"),
    pytest.param(Case(_set("gates", {"error_rate": {"max": float("nan")}}), "gates.error_rate.max",
                      ("finite number",)), id="gate-max-nan"),
    pytest.param(Case(_set("database.lock_retries", True), "database.lock_retries",
                      ("expected a number, got True",)), id="lock-retries-true"),
    pytest.param(Case(_set("gates", {"error_rate": {"max": False}}), "gates.error_rate.max",
                      ("expected a number, got False",)), id="gate-max-false"),
    pytest.param(Case(_set("migrations.alembic_ini", 5), "migrations.alembic_ini",
                      ("expected a path", "5")), id="path-that-is-a-number"),
    pytest.param(Case(_set("version", "../../etc/x"), "version",
                      ("letters, digits and . _ + - only", "'../../etc/x'")), id="version-traversal"),
    pytest.param(Case(_set("version", "2\nrelease #9: social 3 ok"), "version",
                      ("letters, digits and . _ + - only",)), id="version-with-newline"),
]

CASES = [
    pytest.param(Case(_not_yaml, "<yaml position>", ("not valid YAML", "mapping values are not allowed")),
                 id="not-yaml-syntax-error"),
    pytest.param(Case(lambda data, _: [data], "", ("expected a mapping",)), id="top-level-is-a-list"),
    pytest.param(Case(_delete("app"), "app", ("required setting is missing",)), id="missing-app"),
    pytest.param(Case(_set("app", "Social App"), "app", ("lowercase letters, digits", "'Social App'")),
                 id="app-name-uppercase-and-space"),
    pytest.param(Case(_set("version", ""), "version", ("at least 1 character",)), id="empty-version"),
    pytest.param(Case(_rename("smoke", "smoek"), "smoek", ("unknown setting",)),
                 id="unknown-top-level-key-typo"),
    pytest.param(Case(_set("deploy.health.path", "/health"), "deploy.health.path", ("unknown setting",)),
                 id="unknown-nested-key"),
    pytest.param(Case(_delete("deploy.health"), "deploy.health", ("required setting is missing",)),
                 id="missing-nested-section"),
    pytest.param(Case(_set("database.rollback", "sideways"), "database.rollback",
                      ("'keep', 'downgrade' or 'restore'", "'sideways'")), id="rollback-sideways"),
    pytest.param(Case(_set("database.dsn", "mysql://app@localhost/social"), "database.dsn",
                      ("postgresql://",)), id="dsn-not-postgres-url"),
    pytest.param(Case(_set("database.state_dsn", "host=localhost dbname=deployctl"), "database.state_dsn",
                      ("postgresql://",)), id="state-dsn-not-postgres-url"),
    pytest.param(Case(_set("database.lock_timeout", "soon"), "database.lock_timeout",
                      ("expected a duration", "'soon'")), id="lock-timeout-not-a-duration"),
    pytest.param(Case(_set("database.statement_timeout", "-5s"), "database.statement_timeout",
                      ("expected a duration", "'-5s'")), id="negative-duration-text"),
    pytest.param(Case(_set("deploy.health.timeout", -5), "deploy.health.timeout",
                      ("expected a positive, finite duration", "-5")), id="negative-duration-number"),
    pytest.param(Case(_set("database.lock_retries", -1), "database.lock_retries",
                      ("greater than or equal to 0", "-1")), id="negative-lock-retries"),
    pytest.param(Case(_missing_alembic_ini, "migrations.alembic_ini", ("file not found", "alembic.ini")),
                 id="alembic-ini-missing-file"),
    pytest.param(Case(_set("deploy.command", []), "deploy.command", ("at least 1 item",)),
                 id="deploy-command-empty"),
    pytest.param(Case(_set("deploy.transport", "kubernetes"), "deploy.transport", ("'local'", "'ssh'")),
                 id="deploy-transport-unknown"),
    pytest.param(Case(_set("deploy.transport", "ssh"), "deploy", ("needs its settings under `ssh:`",)),
                 id="deploy-ssh-without-settings"),
    pytest.param(Case(_set("cohorts", [{"name": "beta", "percent": 10}]), "",
                      ("cohorts need a `router`",)), id="cohorts-without-router"),
    pytest.param(Case(_set("router", {"type": "command", "command": {"argv": ["true"]}}), "",
                      ("deploy.endpoints",)), id="router-without-endpoints"),
    pytest.param(Case(_set("router", {"type": "haproxy"}), "router",
                      ("needs its settings under `haproxy:`",)), id="router-without-its-settings"),
    pytest.param(Case(_set("cohorts", [{"name": "beta", "allow": ["bob smith"]}]), "cohorts[0].allow",
                      ("'bob smith' is not a user id",)), id="cohort-allow-bad-user-id"),
    pytest.param(Case(_set("cohorts", [{"name": "beta"}]), "cohorts[0]",
                      ("an `allow` list or a `percent`",)), id="cohort-moving-nobody"),
    pytest.param(Case(_set("gates", {"error_rate": {"max": -1}}), "gates.error_rate.max",
                      ("greater than or equal to 0",)), id="gate-negative-max"),
    pytest.param(Case(_set("deploy.health.url", "ftp://127.0.0.1/health"), "deploy.health.url",
                      ("an http:// or https:// URL", "'ftp://127.0.0.1/health'")),
                 id="health-url-not-http"),
    pytest.param(Case(_set("public_urls", ["https://social.example", "http://social.example"]),
                      "public_urls[1]", ("expected an https:// URL", "'http://social.example'")),
                 id="public-url-not-https"),
    pytest.param(Case(_both_http_and_sql, "smoke[0]", ("exactly one of `http` or `sql`",)),
                 id="smoke-check-with-http-and-sql"),
    pytest.param(Case(_delete("smoke.0.http"), "smoke[0]", ("exactly one of `http` or `sql`",)),
                 id="smoke-check-with-neither-http-nor-sql"),
    pytest.param(Case(_second_smoke_check_status_700, "smoke[1].http.status", ("less than 600", "700")),
                 id="smoke-1-http-status-700"),
    pytest.param(Case(_set("smoke.0.http.method", "DELETE"), "smoke[0].http.method",
                      ("'GET', 'HEAD' or 'POST'", "'DELETE'")), id="smoke-http-method-unknown"),
    pytest.param(Case(_set("snapshot", {"jobs": 0}), "snapshot.jobs", ("greater than or equal to 1", "0")),
                 id="snapshot-jobs-zero"),
    pytest.param(Case(_set("snapshot", {"jobs": "many"}), "snapshot.jobs", ("valid integer", "'many'")),
                 id="snapshot-jobs-not-a-number"),
    pytest.param(Case(_set("deploy.command.5", f"${{{UNSET}}}"), "deploy.command[5]",
                      (f"environment variable {UNSET} is not set",)), id="unset-variable-in-list"),
    pytest.param(Case(_set("database.dsn", f"${{{UNSET}}}"), "database.dsn",
                      (f"environment variable {UNSET} is not set", f"${{{UNSET}:-default}}")),
                 id="unset-variable"),
    pytest.param(Case(lambda data, _: None, "", ("cannot read the playbook", "No such file")),
                 id="missing-playbook-file"),
    *FUZZ,
]


def _where(name: str, field: str) -> str:
    """How an error line starts: `error: FILE:LINE:COLUMN: FIELD: ` (see Case.field)."""
    at = rf"error: {re.escape(name)}"
    if field == "":
        return rf"{at}: (?!\S+: )"
    if field == "<position>":
        return rf"{at}:\d+:\d+: "
    if field.startswith("<"):  # <2> for a line, <2:5> for a line and a column
        return rf"{at}:{re.escape(field[1:-1])}: "
    return rf"{at}:\d+:\d+: {re.escape(field)}: "


def _assert_nothing_touched(env: Env, workdir: Path) -> None:
    assert env.release_row() is None
    with env.connect(env.state_dbname) as conn:
        assert conn.execute("SELECT to_regnamespace('deployctl')").fetchone() == (None,)
    assert env.revision() is None
    assert not workdir.exists()
    assert list(env.workdir.iterdir()) == []


def _valid(env: Env) -> tuple[dict[str, Any], Path]:
    """The valid playbook as data, with a workdir that does not exist yet."""
    data = yaml.safe_load(env.playbook("1").read_text())
    workdir = env.dir / "release-work"
    data["workdir"] = str(workdir)
    return data, workdir


@pytest.mark.parametrize("case", CASES)
def test_malformed_playbook_is_refused_with_one_line_and_touches_nothing(
    env: Env, case: Case, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(UNSET, raising=False)
    data, workdir = _valid(env)
    field = _yaml_error_position(data) if case.field == "<yaml position>" else case.field
    name = f"{request.node.callspec.id}.yaml"
    bad = case.breaks(data, env)
    if isinstance(bad, str):
        (env.dir / name).write_text(bad)
    elif isinstance(bad, bytes):
        (env.dir / name).write_bytes(bad)
    elif callable(bad):
        bad(env.dir / name)
    elif bad is not None:
        (env.dir / name).write_text(yaml.safe_dump(bad, sort_keys=False))

    done = env.cli("release", name)

    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert re.match(_where(name, field), line), line
    for fragment in case.expected:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    _assert_nothing_touched(env, workdir)


def test_plan_of_a_valid_playbook_lists_the_steps_and_touches_nothing(env: Env) -> None:
    data, workdir = _valid(env)
    (env.dir / "good.yaml").write_text(yaml.safe_dump(data, sort_keys=False))

    done = env.cli("plan", "good.yaml")

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "social 1:",
        "  preflight", "  snapshot", "  migrate", "  deploy", "  smoke", "  finalize",
        "  on failure: rollback.blue", "  on failure: rollback.green",
        "  on failure: rollback.database (database: restore)", "  on failure: rollback.capture",
    ]
    as_json = env.cli("plan", "--json", "good.yaml")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["steps"][:6] == [
        "preflight", "snapshot", "migrate", "deploy", "smoke", "finalize"]
    _assert_nothing_touched(env, workdir)


@pytest.mark.parametrize(("field_path", "secret"), [
    pytest.param("database.rollback", SECRET_VALUE, id="rollback"),
    pytest.param("app", SECRET_VALUE, id="app"),
    pytest.param("deploy.health.url", SECRET_VALUE, id="inside-a-url"),
    # repr() escapes these characters, so a mask that looks for the raw value misses them.
    pytest.param("app", "Sw0rd\\Fish-42", id="app-secret-with-backslash"),
    pytest.param("database.rollback", "It's-\"Quoted\"-42", id="rollback-secret-with-both-quotes"),
    pytest.param("database.lock_timeout", "Sw0rd\\Fish-42", id="duration-secret-with-backslash"),
])
def test_secret_from_the_environment_in_an_invalid_field_is_masked(
    env: Env, field_path: str, secret: str
) -> None:
    data, workdir = _valid(env)
    value = f"${{{SECRET_VAR}}}"
    if field_path == "deploy.health.url":
        value = f"ftp://{value}/health"
    _set(field_path, value)(data, env)
    (env.dir / "bad.yaml").write_text(yaml.safe_dump(data, sort_keys=False))

    done = env.cli("release", "bad.yaml", env={SECRET_VAR: secret})

    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and re.match(_where("bad.yaml", field_path), lines[0]), done.stderr
    # Neither the value nor any escaped spelling of it: no word of it may show.
    for word in re.findall(r"[A-Za-z0-9]{4,}", secret):
        assert word not in done.stderr + done.stdout, lines[0]
    assert "***" in lines[0]
    _assert_nothing_touched(env, workdir)


@pytest.mark.parametrize("args", [
    pytest.param(("status",), id="status"),
    pytest.param(("history",), id="history"),
    pytest.param(("rollback", "1"), id="rollback"),
    pytest.param(("resume",), id="resume"),
    pytest.param(("history", "--state-dsn", "postgresql://nobody@127.0.0.1:1/x", "-n", "-5"),
                 id="history-negative-limit"),
])
def test_a_command_missing_what_it_needs_is_a_usage_error(env: Env, args: tuple[str, ...]) -> None:
    unset = {"DEPLOYCTL_STATE_DSN": "", "DEPLOYCTL_PLAYBOOK": ""}
    done = env.cli(*args, env=unset)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "rerun with --debug" not in done.stderr, done.stderr
    assert "--playbook" in done.stderr or "-n" in done.stderr, done.stderr


def test_a_release_in_the_journal_parses_with_a_version_new_input_may_not_have(env: Env) -> None:
    # Released by a deployctl that allowed it; blue's playbook must still load for a rollback.
    data, _ = _valid(env)
    data["version"] = "2 (hotfix)"
    text = yaml.safe_dump(data, sort_keys=False)
    with pytest.raises(PlaybookError, match=r"version: use letters, digits"):
        parse(text, env.dir / "new.yaml")
    assert parse(text, env.dir / "stored.yaml", stored=True).version == "2 (hotfix)"


def test_every_problem_is_reported_at_once_in_the_order_of_the_file(env: Env) -> None:
    data, workdir = _valid(env)
    data["app"] = "Social App"
    data["database"]["rollback"] = "sideways"
    data["snapshot"] = {"jbos": 2}
    data["smoek"] = data.pop("smoke")
    data["deploy"]["health"]["timeout"] = "soon"
    (env.dir / "bad.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    lines = (env.dir / "bad.yaml").read_text().splitlines()

    def at(text: str, after: int = 0) -> str:
        """`line:column` of the first `text` at or after line `after` (0-based)."""
        number = next(i for i, line in enumerate(lines) if i >= after and text in line)
        return f"{number + 1}:{lines[number].index(text) + 1}"

    done = env.cli("release", "bad.yaml")

    assert done.returncode == 2 and done.stdout == "", done.stderr
    database = next(i for i, line in enumerate(lines) if line.startswith("database:"))
    assert done.stderr.splitlines() == [
        f"error: bad.yaml:{at('Social App')}: app: expected lowercase letters, digits, _ and - "
        "(at most 63), starting with a letter, got 'Social App'",
        f"error: bad.yaml:{at('sideways', database)}: database.rollback: Input should be 'keep', "
        "'downgrade' or 'restore', got 'sideways'",
        f"error: bad.yaml:{at('soon')}: deploy.health.timeout: expected a duration such as 500ms, "
        "5s or 2m, got 'soon'",
        f"error: bad.yaml:{at('jbos')}: snapshot.jbos: unknown setting: did you mean `jobs`?",
        f"error: bad.yaml:{at('smoek')}: smoek: unknown setting: did you mean `smoke`?",
    ]
    _assert_nothing_touched(env, workdir)


def test_an_unknown_setting_far_from_any_other_lists_those_known_there(env: Env) -> None:
    data, _ = _valid(env)
    data["database"]["zzz"] = 1
    with pytest.raises(PlaybookError) as caught:
        parse(yaml.safe_dump(data, sort_keys=False), env.dir / "bad.yaml")
    assert caught.value.field == "database.zzz"
    assert caught.value.problem.startswith("unknown setting (check its spelling; known here: dsn, "
                                           "state_dsn, rollback"), caught.value.problem


def test_no_error_shows_a_regular_expression() -> None:
    """Every pattern a playbook setting must match is said in words (playbook.PATTERNS)."""
    def patterns(node: Any) -> set[str]:
        if isinstance(node, dict):
            own = {node["pattern"]} if isinstance(node.get("pattern"), str) else set()
            return own | {p for v in node.values() for p in patterns(v)}
        if isinstance(node, list):
            return {p for v in node for p in patterns(v)}
        return set()

    used = patterns(Playbook.model_json_schema())
    assert used and used <= set(PATTERNS), sorted(used - set(PATTERNS))
