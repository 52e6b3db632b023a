"""Running PostgreSQL's client tools without putting a password on their command line."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from deployctl.errors import StepFailed


def tool_env(dsn: str) -> tuple[str, dict[str, str]]:
    """The DSN without its password, and an environment carrying it as PGPASSWORD."""
    params = conninfo_to_dict(dsn)
    password = params.pop("password", None)
    env = dict(os.environ)
    if password is not None:
        env["PGPASSWORD"] = str(password)
    return make_conninfo(**params), env  # type: ignore[arg-type]


def tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise StepFailed(f"{name} not found on PATH: install the PostgreSQL client tools")
    return found


def tool_version(name: str) -> tuple[int, int]:
    """(major, minor) of a client tool, from `pg_dump --version`."""
    out = subprocess.run([tool(name), "--version"], capture_output=True, text=True, check=True)
    # "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"; development builds say "17devel".
    match = re.search(r"\)\s+(\d+)(?:\.(\d+))?", out.stdout)
    if not match:
        raise StepFailed(f"cannot read the version of {name}: {out.stdout.strip()!r}")
    return int(match.group(1)), int(match.group(2) or 0)


def run_tool(name: str, args: list[str], dsn: str) -> subprocess.CompletedProcess[str]:
    """Run a client tool against `dsn`; a failure raises StepFailed with its stderr."""
    dsn_no_password, env = tool_env(dsn)
    argv = [tool(name), *args, f"--dbname={dsn_no_password}"]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise StepFailed(f"{name} failed (exit {result.returncode}): {result.stderr.strip()}")
    return result
