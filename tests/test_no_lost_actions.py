"""A failed release rolled back by restore loses no action a user was told had succeeded.

Simulated users (examples/social/users.py) write through version 1 (blue) from before the
release until after its rollback, and through version 2 (green) from the moment it answers
/health until it is stopped. Version 2 ships with its feed bug and a smoke check that retries for
a few seconds, so green takes real writes (messages, likes, bios, reactions) before it fails.
Then version 1's database is compared with every acknowledged action, row by row.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.conftest import Env, seed, social_users, wait_for
from tests.conftest import failing_v2_playbook as _failing_v2_playbook

pytestmark = pytest.mark.integration

AFTER_ROLLBACK_S = 1.5  # blue keeps taking writes this long after the release ended
CLOSELY = {"timeout": 300, "every": 0.005}  # wait_for: a moment of the rollback, not missed


users = social_users()


def _step_events(env: Env, release_id: int) -> dict[tuple[str, str], dict[str, Any]]:
    with psycopg.connect(env.state_dsn, row_factory=dict_row) as conn:
        rows = conn.execute("SELECT step, phase, extract(epoch FROM at)::float8 AS at, detail "
                            "FROM deployctl.events WHERE release_id = %s ORDER BY id",
                            (release_id,)).fetchall()
    return {(r["step"], r["phase"]): {**r["detail"], "at": r["at"]} for r in rows}


def _exported_delta(env: Env, release_id: int) -> list[dict[str, Any]]:
    path = env.dir / "delta.jsonl.gz"
    done = env.cli("delta", "export", str(release_id), "-o", str(path), "--state-dsn", env.state_dsn)
    assert done.returncode == 0, done.stderr
    with gzip.open(path, "rt") as fh:
        return [json.loads(line) for line in fh]


@pytest.mark.parametrize(("env", "capture", "drain"), [
    ("superuser", "logical", "lazy"), ("superuser", "logical", "continuous"),
    ("superuser", "trigger", "lazy"), ("managed", "auto", "lazy")], indirect=["env"])
def test_rollback_by_restore_keeps_every_acknowledged_action_of_users_on_both_versions(
        env: Env, capture: str, drain: str) -> None:
    released = env.cli("release", str(env.playbook("1")))
    assert released.returncode == 0, released.stderr
    seed(env)
    blue, green = f"http://127.0.0.1:{env.blue_port}", f"http://127.0.0.1:{env.green_port}"

    traffic = users.Traffic([blue], workers=6, seed=20240101)
    traffic.start()
    try:
        traffic.add_when_healthy(green)
        done = env.cli("release", "--json", str(_failing_v2_playbook(env, capture, drain)), timeout=300)
        ended = time.time()
        time.sleep(AFTER_ROLLBACK_S)
    finally:
        acks = traffic.stop()
    maybe = traffic.maybe_applied()
    everything = acks + maybe

    # The release failed its smoke check and rolled back cleanly.
    assert done.returncode == 1, done.stdout + done.stderr
    result = json.loads(done.stdout)
    rid = result["release_id"]
    assert result["status"] == "rolled_back"
    assert "smoke failed: feed answers" in result["reason"]
    steps = _step_events(env, rid)
    assert ("rollback.database", "done") in steps, steps.keys()
    report = steps[("rollback.database", "done")]
    assert report["mode"] == "restore"
    assert env.revision() == "0001"

    delta = json.loads(env.cli("delta", "show", str(rid), "--json", "--state-dsn",
                               env.state_dsn).stdout)
    by_kind = Counter(a.kind for a in acks)
    on_green = Counter(a.kind for a in acks if a.version == "2")
    rollback_start = steps[("rollback.database", "started")]["at"]
    rollback_end = report["at"]
    during_rollback = [a for a in acks if rollback_start <= a.at <= rollback_end]
    after = [a for a in acks if a.sent > ended]
    print("\n--- no lost actions: what was measured ---")
    print(f"changes captured in the delta: {delta['changes']} in {delta['transactions']} transactions "
          f"({delta['mode']} capture, {delta['status']})")
    print(f"rollback.database: replayed {report['replayed']}, pause {report['pause_ms']} ms, "
          f"conflicts {report['conflicts']}, side-effect rows {report['side_effect_rows']}, "
          f"took {report['duration_s']} s")
    print(f"  summary: {report['summary']}")
    print(f"acknowledged actions: {len(acks)} ({dict(sorted(by_kind.items()))})")
    print(f"  through green (v2): {sum(on_green.values())} ({dict(sorted(on_green.items()))})")
    print(f"  during the restore: {len(during_rollback)}; after the release ended: {len(after)}")
    not_acked = {outcome: kinds for outcome, kinds in traffic.tally().items() if outcome != "ack"}
    print(f"not acknowledged: {not_acked}")
    print(f"  why: {dict(Counter(a.error for a in traffic.actions if not a.acknowledged))}")

    # Users wrote through both versions, and through blue while the database was restored.
    assert on_green["create_message"] > 0 and on_green["react"] > 0 and on_green["set_bio"] > 0, on_green
    assert during_rollback, "no write was acknowledged while the restore ran"
    assert after, "no write was acknowledged after the rollback"

    # The rollback's report.
    assert report["replayed"] > 0
    assert report["pause_ms"] < 2000
    assert report["conflicts"] == 0, report["summary"]  # policy skip: a conflict is a lost change
    assert "tables the target lacks, kept in the delta: reactions" in report["summary"]

    # Row by row: version 1's database holds every acknowledged action.
    with env.connect() as conn:
        found = users.check(conn, everything)
        sim_bodies = sorted({a.body for a in everything if a.body})
        per_body = conn.execute("SELECT body, count(*) FROM messages WHERE body = ANY(%s) GROUP BY body",
                                (sim_bodies,)).fetchall()
        assert conn.execute("SELECT to_regclass('reactions')").fetchone() == (None,)
    print("\n".join(found.lines()))
    assert found.ok, "\n".join(found.problems[:20])
    assert all(n == 1 for _, n in per_body), "a message is there more than once"
    acked_messages = [a for a in acks if a.kind == "create_message"]
    assert len(acked_messages) == len({a.body for a in acked_messages}) > 0
    for what, (expected, got) in found.compared.items():
        assert expected == got, what
    assert found.compared["acknowledged messages present once"][0] > 0
    assert found.compared["acknowledged likes present"][0] > 0
    assert found.compared["acknowledged deletes absent"][0] > 0

    # What version 1 cannot hold is not silently lost: the delta keeps every reaction and bio.
    reactions = [a for a in acks if a.kind == "react"]
    bios = [a for a in acks if a.kind == "set_bio"]
    assert found.not_in_schema == {"reactions": len(reactions), "users.bio values": len(bios)}
    captured = delta["tables"].get("public.reactions", {})
    assert len(reactions) <= captured.get("insert", 0) <= len(reactions) + len(
        [a for a in maybe if a.kind == "react"]), captured
    rows = _exported_delta(env, rid)
    kept_reactions = {int(r["new"]["id"]) for r in rows
                      if r["table_name"] == "reactions" and r["op"] == "insert"}
    assert {a.reaction_id for a in reactions} <= kept_reactions
    kept_bios = {r["new"].get("bio") for r in rows if r["table_name"] == "users" and r["new"]}
    assert {a.bio for a in bios} <= kept_bios


@pytest.mark.parametrize("capture", ["logical", "trigger"])
def test_a_write_begun_before_the_restore_and_committed_during_its_replay_is_not_lost(
        env: Env, capture: str) -> None:
    """A transaction open across the restore's first drain, committed before the swap."""
    released = env.cli("release", str(env.playbook("1")))
    assert released.returncode == 0, released.stderr
    seed(env)
    traffic = users.Traffic([f"http://127.0.0.1:{env.blue_port}"], workers=4, seed=7)
    traffic.start()
    held = psycopg.connect(env.app_dsn)
    release: subprocess.Popen[str] | None = None
    try:
        # Output to files: a pipe nobody reads would stop deployctl once its buffer is full.
        with (env.dir / "release.out").open("w") as out_file, (env.dir / "release.err").open("w") as err_file:
            playbook = str(_failing_v2_playbook(env, capture))
            release = subprocess.Popen([sys.executable, "-m", "deployctl", "release", "--json", playbook],
                                       stdout=out_file, stderr=err_file, text=True, cwd=env.dir)
        with psycopg.connect(env.state_dsn, autocommit=True) as state:
            def phase(step: str) -> bool:
                return state.execute("SELECT 1 FROM deployctl.events WHERE release_id = 2 AND step = %s "
                                     "AND phase = 'started'", (step,)).fetchone() is not None

            def drained_to() -> int:
                row = state.execute("SELECT drained_to FROM deployctl.captures WHERE release_id = 2"
                                    ).fetchone()
                return int(row[0]) if row else 0

            # Begun while green is smoke-tested (users keep writing meanwhile) ...
            wait_for("the smoke step", lambda: phase("smoke"), **CLOSELY)
            held.execute("INSERT INTO messages (user_id, body) VALUES (1, 'begun before the restore')")
            # ... and committed right after the restore's first drain, while it replays.
            wait_for("the rollback of the database", lambda: phase("rollback.database"), **CLOSELY)
            before = drained_to()
            wait_for("the restore's first drain", lambda: drained_to() > before, **CLOSELY)
            held.commit()  # the database acknowledged it: it must survive the rollback
        release.wait(timeout=300)
        out, err = (env.dir / "release.out").read_text(), (env.dir / "release.err").read_text()
    finally:
        held.close()
        traffic.stop()
        if release is not None and release.poll() is None:
            release.kill()
    assert release is not None
    assert release.returncode == 1, out + err
    assert json.loads(out)["status"] == "rolled_back"
    with env.connect() as conn:
        kept = conn.execute("SELECT count(*) FROM messages WHERE body = 'begun before the restore'"
                            ).fetchone()
    assert kept == (1,), "a transaction acknowledged before the swap is missing after the rollback"
