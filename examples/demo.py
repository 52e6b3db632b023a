"""`make demo`: real releases of the sample app on the embedded default.

A throwaway PostgreSQL cluster under .demo/pg, the app's processes on this machine. Three
releases through the real CLI: version 1 onto an empty database; version 2 with its deliberate
bug (SOCIAL_FAIL=1), which fails its smoke check and is rolled back on its own, the database
restored from the snapshot; version 2 again, fixed, which is finalized. Exits non-zero if any
release ends other than expected. `--keep` leaves the cluster and version 2 running.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import psycopg

from deployctl.localpg import LocalCluster

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"


def banner(text: str) -> None:
    print(f"\n=== {text} ===", flush=True)


def stop_leftovers() -> None:
    """Stop app processes a previous demo left running (their pidfiles say which)."""
    for pidfile in (DEMO / "deployctl" / "run").glob("*/*.pid"):
        try:
            os.killpg(int(json.loads(pidfile.read_text())["pid"]), signal.SIGTERM)
        except (OSError, ValueError, KeyError):
            pass
        pidfile.unlink()


def deployctl(*args: str, env: dict[str, str]) -> int:
    print(f"$ deployctl {' '.join(args)}", flush=True)
    return subprocess.run([sys.executable, "-m", "deployctl", *args], env=env,
                          check=False).returncode


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

        banner("release 2: version 2 with a bug in its feed (SOCIAL_FAIL=1)")
        code = deployctl("release", "playbooks/social-v2.yaml", env={**env, "SOCIAL_FAIL": "1"})
        if code != 1:
            failures.append(f"the broken version 2 should roll back (exit 1), got exit {code}")
        blue = f"http://127.0.0.1:{os.environ.get('SOCIAL_BLUE_PORT', '18001')}/"
        with urllib.request.urlopen(blue, timeout=5) as resp:
            print(f"version 1 still serves: {resp.read().decode()}")

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
    print("\ndemo passed: one release rolled back on its own, one finalized")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
