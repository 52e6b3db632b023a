"""`make demo`: real releases of the sample app on the embedded default.

A throwaway PostgreSQL cluster under .demo/pg, the app's processes on this machine. Three
releases through the real CLI: version 1 onto an empty database; version 2 with its deliberate
bug (SOCIAL_FAIL=1), which fails its smoke check and is rolled back on its own, the database
restored from the snapshot; version 2 again, fixed, which is finalized.

During the failing release, simulated users (examples/social/users.py) write through both
versions: through version 1 all along, through version 2 from the moment it answers until it is
stopped. Afterwards the demo prints what the rollback reported and checks, row by row, that
every action the users were told had succeeded is in version 1's database.

Exits non-zero if any release ends other than expected or an acknowledged action is missing.
`--keep` leaves the cluster and version 2 running.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg

from deployctl.localpg import LocalCluster

sys.path.insert(0, str(Path(__file__).resolve().parent / "social"))
import contextlib

import users  # noqa: E402  (examples/social/users.py: the simulated users)

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def stop_leftovers() -> None:
    """Stop app processes a previous demo left running (their pidfiles say which)."""
    for pidfile in (DEMO / "deployctl" / "run").glob("*/*.pid"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            os.killpg(int(json.loads(pidfile.read_text())["pid"]), signal.SIGTERM)
        pidfile.unlink()


def deployctl(*args: str, env: dict[str, str]) -> int:
    print(f"$ deployctl {' '.join(args)}", flush=True)
    return subprocess.run([sys.executable, "-m", "deployctl", *args], env=env,
                          check=False).returncode


def rollback_report(state_dsn: str) -> dict[str, Any]:
    """What the latest release's rollback.database and rollback.capture steps recorded."""
    with psycopg.connect(state_dsn) as conn:
        rows = conn.execute(
            """SELECT step, detail FROM deployctl.events
               WHERE release_id = (SELECT max(id) FROM deployctl.releases) AND phase = 'done'
                 AND step IN ('rollback.database', 'rollback.capture')""").fetchall()
    return {step: detail for step, detail in rows}


def show_users_and_rollback(traffic: users.Traffic, report: dict[str, Any], url: str) -> bool:
    """Print what users did and what the rollback reported; check version 1's database."""
    acks = traffic.acknowledged()
    restored = report.get("rollback.database", {})
    captured = report.get("rollback.capture", {}).get("changes_captured", "?")
    print(f"users: {len(acks)} actions acknowledged: "
          + ", ".join(f"{kind} {n}" for kind, n in sorted(Counter(a.kind for a in acks).items())))
    on_v2 = Counter(a.kind for a in acks if a.version == "2")
    print(f"  through version 2 before it was stopped: {sum(on_v2.values())} "
          f"(reactions {on_v2['react']}, bios {on_v2['set_bio']})")
    why = Counter(a.error for a in traffic.actions if not a.acknowledged)
    print(f"  not acknowledged (so not counted, and not retried): {sum(why.values())} "
          f"({', '.join(f'{error}: {n}' for error, n in why.most_common())})")
    print(f"rollback: {captured} changes captured, {restored.get('replayed', '?')} rows replayed, "
          f"writes paused {restored.get('pause_ms', '?')} ms, {restored.get('conflicts', '?')} conflicts, "
          f"{restored.get('side_effect_rows', '?')} side-effect rows")
    kept = str(restored.get("summary", "")).partition("tables the target lacks, kept in the delta: ")[2]
    print(f"  tables version 1 lacks, kept in the delta for a later replay: "
          f"{kept.split(';')[0] or 'none'}")
    with psycopg.connect(url) as conn:
        found = users.check(conn, acks + traffic.maybe_applied())
    print("version 1's database compared with every acknowledged action:")
    for line in found.lines():
        print(f"  {line}")
    for problem in found.problems[:10]:
        print(f"  PROBLEM: {problem}")
    print("every acknowledged action is there" if found.ok else
          f"{len(found.problems)} acknowledged actions are not")
    return found.ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="leave the cluster and app running")
    keep = parser.parse_args().keep

    stop_leftovers()
    cluster = LocalCluster(DEMO / "pg")
    cluster.destroy()
    shutil.rmtree(DEMO, ignore_errors=True)
    banner("starting a throwaway PostgreSQL under .demo/pg")
    admin = cluster.start()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CREATE DATABASE social")
    url = cluster.dsn("social")
    env = {**os.environ, "SOCIAL_DATABASE_URL": url,
           # The playbooks start the app with `python`: the one running this demo.
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    failures = []
    try:
        banner("release 1: version 1 onto an empty database")
        if deployctl("release", "playbooks/social-v1.yaml", env=env) != 0:
            failures.append("version 1 was not released")
        subprocess.run([sys.executable, "examples/social/app.py", "seed", "--users", "20",
                        "--messages", "60"], env={**env, "DATABASE_URL": url}, check=True)

        banner("release 2: version 2 with a bug in its feed (SOCIAL_FAIL=1), users writing")
        blue = f"http://127.0.0.1:{os.environ.get('SOCIAL_BLUE_PORT', '18001')}"
        green = f"http://127.0.0.1:{os.environ.get('SOCIAL_GREEN_PORT', '18002')}"
        print(f"6 simulated users write through version 1 ({blue}) and, once it answers, "
              f"version 2 ({green})")
        traffic = users.Traffic([blue], workers=6)
        traffic.start()
        try:
            traffic.add_when_healthy(green)
            code = deployctl("release", "playbooks/social-v2.yaml", env={**env, "SOCIAL_FAIL": "1"})
            time.sleep(1.5)  # users keep writing through version 1 after the rollback
        finally:
            traffic.stop()
        if code != 1:
            failures.append(f"the broken version 2 should roll back (exit 1), got exit {code}")
        with urllib.request.urlopen(blue + "/", timeout=5) as resp:
            print(f"version 1 still serves: {resp.read().decode()}")

        banner("what the users did, and what the rollback kept")
        if not show_users_and_rollback(traffic, rollback_report(cluster.dsn("deployctl")), url):
            failures.append("an acknowledged action is missing from version 1's database")
        deployctl("delta", "show", "2", "--playbook", "playbooks/social-v2.yaml", env=env)

        banner("release 3: version 2, fixed")
        if deployctl("release", "playbooks/social-v2.yaml", env=env) != 0:
            failures.append("the fixed version 2 was not released")

        banner("history")
        deployctl("history", "--playbook", "playbooks/social-v2.yaml", env=env)
    finally:
        if not keep:
            stop_leftovers()
            cluster.stop()
    if failures:
        print("\ndemo FAILED: " + "; ".join(failures), file=sys.stderr)
        return 1
    print("\ndemo passed: one release rolled back on its own without losing an acknowledged action, "
          "one finalized")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
