"""`deployctl report`: the timeline of a real release, checked against that release's journal.

Two real releases behind a real HAProxy, with simulated users reading through it and others
writing through blue: a staged release that an operator promotes past its first cohort and that
succeeds, and one whose gates breach at 10% and roll back by restore (likes marked as external
side effects). Each report must say exactly what the journal says: every step with its result,
times and duration, every gate reading, the decision and why, the delta's counts (as `deployctl
delta show` gives them), the cohorts' sizes. Personal columns are masked even where the journal
holds their values in clear (a conflict listing of a later replay run with a playbook that does
not mark them), a secret from `${ENV}` never appears, `-o` writes 0600, and the HTML page is
well-formed, self-contained and charts one point per reading.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from datetime import UTC
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg.rows import dict_row

from deployctl import report
from deployctl.journal import Journal
from tests.conftest import Env, seed, wait_for
from tests.routers_env import HaproxyEnv
from tests.test_no_lost_actions import users as social_users
from tests.traffic_env import GATES, STAFF, Users, released_v1, routed

pytestmark = pytest.mark.integration

TOKEN = "tok-report-8d1f3a9c"
SECRETS = {"REPORT_API_TOKEN": TOKEN}
PERSONAL = ["users.name", "users.email"]
# A user written during the release, and the name the database gives it after the rollback.
OURS_NAME, OURS_EMAIL = "Ada Reportington-Zq", "ada.reportington@example.org"
THEIRS_NAME = "Mallory Afterwards-Xk"


def v2_playbook(env: Env, proxy: HaproxyEnv, cohorts: list[dict[str, Any]], fail: bool = False,
                **changes: Any) -> Path:
    """Version 2 behind the test's HAProxy, with personal columns and a secret for the app."""
    app_env = {"DATABASE_URL": env.app_dsn, "API_TOKEN": "${REPORT_API_TOKEN}",
               **({"SOCIAL_FAIL": "users"} if fail else {})}
    return routed(env, proxy, "2", gates=GATES, cohorts=cohorts, deploy={"env": app_env},
                  personal=PERSONAL, **changes)


def journal_events(env: Env, rid: int) -> list[dict[str, Any]]:
    with psycopg.connect(env.state_dsn, row_factory=dict_row) as conn:
        return conn.execute("SELECT step, phase, at, detail FROM deployctl.events WHERE release_id = %s "
                            "ORDER BY id", (rid,)).fetchall()


def iso(at: Any) -> str:
    return str(at.astimezone(UTC).isoformat(timespec="milliseconds"))


def reports_of(env: Env, rid: int, monkeypatch: pytest.MonkeyPatch, secrets: bool = True) -> dict[str, Any]:
    """The report in each format from the CLI (run with or without the playbook's secrets in its
    environment), and the dict built in this process (with them)."""
    out: dict[str, Any] = {}
    for fmt in report.FORMATS:
        done = env.cli("report", str(rid), "--format", fmt, "--state-dsn", env.state_dsn,
                       env=SECRETS if secrets else None)
        assert done.returncode == 0, done.stderr
        out[fmt] = done.stdout
    monkeypatch.setenv("REPORT_API_TOKEN", TOKEN)
    with Journal(env.state_dsn) as journal:
        out["built"] = report.build(journal, rid)
    return out


def check_against_journal(env: Env, rid: int, got: dict[str, Any]) -> dict[str, Any]:
    """What every report must agree with the journal on; returns the parsed JSON report."""
    data = json.loads(got["json"])
    # JSON for machines: the same dict the API builds, unchanged by a trip through JSON.
    assert data == got["built"] == json.loads(report.render(got["built"], "json"))
    assert data["schema"] == report.SCHEMA
    release = env.release_row(rid)
    assert release is not None
    rel = data["release"]
    assert (rel["id"], rel["app"], rel["version"], rel["from_version"]) == (rid, "social", "2", "1")
    assert (rel["status"], rel["reason"], rel["started_by"]) == (
        release["status"], release["reason"], release["started_by"])
    assert rel["started_at"] == iso(release["started_at"]) and rel["ended_at"] == iso(release["finished_at"])

    events = journal_events(env, rid)
    steps = {s["step"]: s for s in data["steps"]}
    ran = list(dict.fromkeys(e["step"] for e in events if e["phase"] != "info"))
    assert [s for s in steps if s in ran] == ran, "the steps that ran, in the order they ran"
    for name in ran:
        mine = [e for e in events if e["step"] == name and e["phase"] != "info"]
        last = mine[-1]
        assert steps[name]["result"] == last["phase"], name
        assert steps[name]["started_at"] == iso(mine[0]["at"]), name
        assert steps[name]["ended_at"] == iso(last["at"]), name
        assert steps[name]["duration_s"] == last["detail"]["duration_s"], name
        assert steps[name]["error"] == last["detail"].get("error"), name
        assert 0 <= steps[name]["duration_s"] <= (last["at"] - mine[0]["at"]).total_seconds() + 0.01, name
    assert all(s["result"] == "skipped" for n, s in steps.items() if n not in ran)
    # Steps run one after another: together they take most of the release, never more.
    total = sum(s["duration_s"] for s in data["steps"] if s["duration_s"] is not None)
    assert 0.7 * rel["duration_s"] < total <= rel["duration_s"], (total, rel["duration_s"])

    readings = [e for e in events if e["phase"] == "info" and "checks" in e["detail"]]
    assert [r["n"] for r in data["readings"]] == list(range(1, len(readings) + 1))
    for mine, event in zip(data["readings"], readings, strict=True):
        d = event["detail"]
        assert (mine["at"], mine["step"], mine["cohort"], mine["status"]) == (
            iso(event["at"]), event["step"], d["cohort"], d["status"])
        assert [(c["name"], c["status"], c["detail"]) for c in mine["checks"]] == [
            (c["name"], c["status"], c["detail"]) for c in d["checks"]]
        for side in ("green", "blue"):
            want = d[side]
            assert (mine[side] is None) == (want is None)
            if want:
                assert {k: mine[side][k] for k in want} == want
                assert mine[side]["error_rate"] == (
                    round(want["errors"] / want["requests"], 4) if want["requests"] else None)
    splits = {e["step"]: e["detail"]["split"] for e in events if "split" in e["detail"]}
    for cohort in data["cohorts"]:
        if cohort["step"] in splits:
            assert {"percent": cohort["percent"], "allow": cohort["allow"]} == splits[cohort["step"]]
        assert cohort["readings"] == len([r for r in readings if r["step"] == cohort["step"]])

    shown = env.cli("delta", "show", str(rid), "--json", "--state-dsn", env.state_dsn)
    assert shown.returncode == 0, shown.stderr
    delta = json.loads(shown.stdout)
    assert data["delta"]["captured"] and delta["changes"] > 0
    for key in ("changes", "transactions", "tables", "excluded", "mode", "status"):
        assert data["delta"][key] == delta[key], key

    md = got["md"]
    for step in data["steps"]:
        result = f"**{step['result']}**" if step["result"] == "failed" else step["result"]
        assert f"| {step['step']} | {result}" in md, step["step"]
    for fmt in report.FORMATS:
        assert TOKEN not in got[fmt]
    check_html(got["html"], data)
    return data


class _Tags(HTMLParser):
    VOID = {"meta", "br", "hr", "img", "input", "link", "line", "rect", "polyline", "circle"}

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.seen: list[tuple[str, dict[str, str | None]]] = []
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID and (not self.open or self.open[-1] != tag):
            return
        if not self.open or self.open[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.open[-1] if self.open else 'nothing'}")
        else:
            self.open.pop()


def check_html(page: str, data: dict[str, Any]) -> None:
    """Well-formed, self-contained (no script, nothing fetched), one chart point per reading."""
    tags = _Tags()
    tags.feed(page)
    tags.close()
    assert tags.problems == [] and tags.open == [], (tags.problems, tags.open)
    names = [t for t, _ in tags.seen]
    assert names.count("svg") == (1 if data["readings"] else 0)
    assert "script" not in names and "link" not in names
    assert not [a for _, attrs in tags.seen for a in attrs if a in ("src", "href") or a.startswith("on")]
    points = [a for t, a in tags.seen if t == "circle" and a.get("class") == "reading"]
    assert len(points) == len(data["readings"])
    assert [p["data-status"] for p in points] == [r["status"] for r in data["readings"]]
    started = [c for c in data["cohorts"] if c["started_at"]]
    assert len([a for t, a in tags.seen if t == "line" and a.get("class") == "boundary"]) == len(started)


def test_the_report_of_a_promoted_staged_release_matches_its_journal(
        env: Env, haproxy: HaproxyEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    released_v1(env, haproxy)
    seed(env)
    playbook = v2_playbook(env, haproxy, [
        {"name": "staff", "allow": STAFF, "hold": "10m"},   # an operator promotes it
        {"name": "beta", "percent": 10, "hold": "1.2s"},
        {"name": "everyone", "percent": 100, "hold": "1.2s"}],
        capture={"drain": "continuous"})  # a released delta is kept: the report shows it
    writers = social_users.Traffic([f"http://127.0.0.1:{env.blue_port}"], workers=3, seed=5)
    writers.start()
    rid, log = 2, (env.dir / "release.log").open("w")
    running = None
    try:
        with Users(haproxy.port):
            running = subprocess.Popen(
                [sys.executable, "-m", "deployctl", "release", str(playbook)], cwd=env.dir, stdout=log,
                stderr=subprocess.STDOUT, env={**os.environ, **SECRETS, "CI": "true"})
            wait_for("a reading in cohort staff", lambda: any(
                e["step"] == "cohort.staff" and "checks" in e["detail"] for e in journal_events(env, rid)))
            promoted = env.cli("promote", "--state-dsn", env.state_dsn)
            assert promoted.returncode == 0, promoted.stderr
            assert running.wait(timeout=180) == 0, (env.dir / "release.log").read_text()
    finally:
        log.close()
        writers.stop()
        if running is not None and running.poll() is None:
            running.kill()

    # An engineer without the app's secrets gets the same report (JSON equal to the one built here).
    got = reports_of(env, rid, monkeypatch, secrets=False)
    data = check_against_journal(env, rid, got)
    assert data["release"]["exit_code"] == 0 and data["decision"]["kind"] == "released"
    assert [s["result"] for s in data["steps"]] == ["done"] * len(data["steps"])
    assert not any(s["step"].startswith("rollback.") for s in data["steps"])
    sizes = [(c["cohort"], c["percent"], c["allow"], c["result"]) for c in data["cohorts"]]
    assert sizes == [("staff", 0, 2, "done"), ("beta", 10, 2, "done"), ("everyone", 100, 2, "done")]
    assert data["cohorts"][0]["ended"] == "promoted"
    assert data["cohorts"][2]["green"]["requests"] > 0 and data["cohorts"][2]["green"]["errors"] == 0
    # Who asked what, when, during which step.
    (asked,) = data["decision"]["operator_requests"]
    assert asked["command"] == "promote" and asked["during"] == "cohort.staff"
    assert "@" in asked["requested_by"] and asked["handled_at"] >= asked["requested_at"]
    assert "requested `promote`" in got["md"] and "promote" in got["html"]
    finalize = next(s for s in data["steps"] if s["step"] == "finalize")
    assert finalize["detail"]["changes_captured"] == data["delta"]["changes"]
    assert data["delta"]["rollback"] is None and data["delta"]["replays"] == []

    # -o: 0600 even over a file that was readable by others, and the same text as stdout.
    out = env.dir / "report.html"
    out.write_text("old")
    out.chmod(0o644)
    written = env.cli("report", str(rid), "--format", "html", "-o", str(out), "--state-dsn", env.state_dsn)
    assert written.returncode == 0, written.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_text() + "\n" == got["html"]


def test_the_report_of_a_breach_names_the_readings_the_rollback_and_masks_personal_data(
        env: Env, haproxy: HaproxyEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    released_v1(env, haproxy)
    seed(env)
    cohorts = [{"name": "beta", "percent": 10, "hold": "30s"},
               {"name": "everyone", "percent": 100, "hold": "1s"}]
    playbook = v2_playbook(env, haproxy, cohorts, fail=True,
                           replay={"side_effects": ["likes"], "on_conflict": "skip"})
    writers = social_users.Traffic([f"http://127.0.0.1:{env.blue_port}"], workers=3, seed=9)
    writers.start()
    running, log = None, (env.dir / "release.log").open("w")
    try:
        with Users(haproxy.port):
            running = subprocess.Popen(
                [sys.executable, "-m", "deployctl", "release", str(playbook)], cwd=env.dir,
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **SECRETS})
            wait_for("the snapshot", lambda: ("snapshot", "done") in env.events(2))
            with env.connect() as conn:  # a user who signs up while the release runs
                conn.execute("INSERT INTO users (name, email) VALUES (%s, %s)", (OURS_NAME, OURS_EMAIL))
            assert running.wait(timeout=180) == 1, (env.dir / "release.log").read_text()
    finally:
        log.close()
        writers.stop()
        if running is not None and running.poll() is None:
            running.kill()
    rid = 2

    got = reports_of(env, rid, monkeypatch)
    data = check_against_journal(env, rid, got)
    rel, decision = data["release"], data["decision"]
    assert rel["status"] == "rolled_back" and rel["exit_code"] == 1
    assert "rolled back cleanly" in rel["exit_meaning"]
    steps = {s["step"]: s for s in data["steps"]}
    assert steps["cohort.beta"]["result"] == "failed"
    assert steps["cohort.beta"]["error"].startswith("gate breach in cohort beta")
    assert steps["cohort.everyone"]["result"] == steps["finalize"]["result"] == "skipped"
    assert [n for n in steps if n.startswith("rollback.")] == [
        "rollback.blue", "rollback.traffic", "rollback.green", "rollback.database", "rollback.capture"]
    assert all(steps[n]["result"] == "done" for n in steps if n.startswith("rollback."))
    # The decision: a breach, from the last `failures` readings of cohort beta, all failing.
    assert decision["kind"] == "breach" and decision["step"] == "cohort.beta"
    assert decision["reason"] == rel["reason"] and "error rate" in decision["reason"]
    decisive = [r for r in data["readings"] if r["n"] in decision["decisive_readings"]]
    assert len(decisive) == GATES["failures"] and decisive[-1] == data["readings"][-1]
    assert all(r["status"] == "fail" and r["cohort"] == "beta" for r in decisive)
    assert all(r["green"]["errors"] > 0 for r in decisive)
    assert 0 <= decision["users_on_blue_after_s"] < 10
    assert f"reading #{decisive[-1]['n']} at" in got["md"] and "above 5.00%" in got["md"]
    assert [(c["cohort"], c["percent"], c["result"]) for c in data["cohorts"]] == [
        ("beta", 10, "failed"), ("everyone", 100, "skipped")]
    beta = data["cohorts"][0]
    assert beta["green"]["errors"] > 0 and beta["by_status"]["fail"] >= GATES["failures"]
    # The rollback and the delta, as the journal's rollback.database recorded them.
    db = next(e["detail"] for e in journal_events(env, rid)
              if e["step"] == "rollback.database" and e["phase"] == "done")
    back = data["delta"]["rollback"]
    for key in ("mode", "pause_ms", "replayed", "conflicts", "side_effect_rows", "reconciliation"):
        assert back[key] == db[key], key
    assert back["mode"] == "restore" and back["replayed"] > 0 and back["side_effect_rows"] > 0
    assert Path(back["reconciliation"]).is_file()
    assert back["reconciliation"] in got["md"] and f"writes paused {db['pause_ms']} ms" in got["md"]
    assert steps["rollback.traffic"]["detail"]["switched_s"] == next(
        e["detail"]["switched_s"] for e in journal_events(env, rid) if e["step"] == "rollback.traffic"
        and e["phase"] == "done")

    # After the incident the database moved on (the user renamed), and an operator replays the
    # delta with a playbook of their own that marks nothing personal: the conflict listing the
    # journal keeps holds the names in clear, the report must not.
    with env.connect() as conn:
        conn.execute("UPDATE users SET name = %s WHERE email = %s", (THEIRS_NAME, OURS_EMAIL))
    plain = yaml.safe_load(playbook.read_text())
    del plain["personal"]
    operator = env.dir / "operator.yaml"
    operator.write_text(yaml.safe_dump(plain))
    replayed = env.cli("delta", "replay", str(rid), "--on-conflict", "skip", "-p", str(operator), env=SECRETS)
    assert replayed.returncode == 0, replayed.stderr
    clear = json.dumps([e["detail"] for e in journal_events(env, rid) if e["step"] == "delta.replay"])
    assert THEIRS_NAME in clear and OURS_NAME in clear, "the journal holds the values in clear"

    with env.connect() as conn:
        (user_id,) = conn.execute("SELECT id FROM users WHERE email = %s", (OURS_EMAIL,)).fetchone() or (0,)
    got = reports_of(env, rid, monkeypatch)
    data = json.loads(got["json"])
    (later,) = data["delta"]["replays"]
    assert later["on_conflict"] == "skip" and later["conflicts"] >= 1
    (mine,) = [c for c in later["conflict_list"]
               if c["table"] == "users" and str(c["key"]["id"]) == str(user_id)]
    assert mine["kind"] == "key_exists" and mine["resolution"] == "skipped"
    assert mine["ours"]["name"] == mine["ours"]["email"] == report.MASK
    assert mine["theirs"]["name"] == mine["theirs"]["email"] == report.MASK
    assert str(mine["theirs"]["id"]) == str(user_id), "other columns stay readable"
    for fmt in report.FORMATS:
        for value in (OURS_NAME, OURS_EMAIL, THEIRS_NAME, TOKEN):
            assert value not in got[fmt], (fmt, value)
    assert "Personal columns masked as ***: users.email, users.name" in got["md"]


def test_a_report_of_an_unknown_release_exits_2_with_one_line(env: Env) -> None:
    done = env.cli("report", "4242", "--state-dsn", env.state_dsn)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "error: no release #4242 in the journal (see `deployctl history`)"]


def cli_reports(env: Env, rid: int) -> dict[str, str]:
    out = {}
    for fmt in report.FORMATS:
        done = env.cli("report", str(rid), "--format", fmt, "--state-dsn", env.state_dsn)
        assert done.returncode == 0, done.stderr
        out[fmt] = done.stdout
    return out


def test_the_report_of_a_refused_release_shows_the_failed_preflight_and_no_delta(env: Env) -> None:
    done = env.cli("release", str(env.playbook("1", migrations={"target": "0009"})))
    assert done.returncode == 2, done.stderr
    got = cli_reports(env, 1)
    data = json.loads(got["json"])
    rel = data["release"]
    assert (rel["status"], rel["exit_code"], rel["from_version"]) == ("refused", 2, None)
    assert "nothing was touched" in rel["exit_meaning"] and rel["ended_at"] is not None
    steps = [(s["step"], s["result"]) for s in data["steps"]]
    assert steps == [("preflight", "failed")] + [
        (name, "skipped") for name in ("snapshot", "migrate", "deploy", "smoke", "finalize")]
    assert "unknown Alembic revision '0009'" in data["steps"][0]["error"]
    assert data["decision"]["kind"] == "refused" and data["decision"]["step"] == "preflight"
    assert not data["delta"]["captured"] and data["readings"] == data["cohorts"] == []
    assert "| preflight | **failed** | " in got["md"] and "(first release)" in got["md"]
    assert "No delta: the release stopped before its snapshot." in got["md"]
    check_html(got["html"], data)


def test_the_report_of_a_release_whose_process_died_names_the_step_and_what_to_run(env: Env) -> None:
    crashed = env.cli("release", str(env.playbook("1")), env={"DEPLOYCTL_FAILPOINT": "migrate:acted"})
    assert crashed.returncode == -9
    got = cli_reports(env, 1)
    data = json.loads(got["json"])
    rel = data["release"]
    assert rel["status"] == "running" and rel["worked_on_by"] is None
    assert rel["ended_at"] is rel["duration_s"] is rel["exit_code"] is None
    results = {s["step"]: s["result"] for s in data["steps"]}
    assert results == {"preflight": "done", "snapshot": "done", "migrate": "interrupted",
                       "deploy": "pending", "smoke": "pending", "finalize": "pending"}
    assert ("No deployctl process is working on it (it stopped in migrate): run `deployctl resume 1` "
            "to go on, or `deployctl rollback 1`.") in got["md"]
    check_html(got["html"], data)
