"""deployctl installed as any Python tool is: the wheel built from a copy of the tree, installed
alone into a fresh virtual environment outside it, runs a real release and a real rollback of
the sample app (it reads the journal's schema and the trigger capture's SQL from inside the
package, with importlib.resources, never from the tree)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from deployctl.db import capture
from deployctl.journal import SCHEMA_SQL
from tests.conftest import SOCIAL, Env, seed

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy of the tree: a build/ folder left by an earlier build would hide a miss.
    where = tmp_path_factory.mktemp("wheel")
    source = where / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".demo", ".deployctl", "build", "*.egg-info", "__pycache__", ".*_cache",
        ".hypothesis"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(where),
                    str(source)], check=True, capture_output=True, timeout=600)
    (built,) = where.glob("deployctl-*.whl")
    return built


def test_the_wheel_carries_the_sql_the_package_reads(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    read = {f"deployctl/sql/{SCHEMA_SQL.name}", f"deployctl/sql/{capture.TRIGGER_SQL.name}"}
    assert read <= names, f"missing from {wheel.name}: {sorted(read - names)}"
    assert SCHEMA_SQL.read_text().strip() and capture.TRIGGER_SQL.read_text().strip()


@pytest.mark.integration
def test_the_installed_wheel_releases_and_rolls_back(wheel: Path, env: Env, tmp_path: Path) -> None:
    home = tmp_path / "venv"
    venv.create(home, with_pip=True)
    subprocess.run([str(home / "bin" / "pip"), "install", "--quiet", str(wheel)], check=True,
                   capture_output=True, timeout=900)
    # Nothing of the tree on the path: only what the wheel installed.
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def installed(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(home / "bin" / "deployctl"), *args], capture_output=True, text=True,
                              cwd=tmp_path, env={**clean, **extra}, timeout=300, check=False)

    version = installed("--version")
    assert version.returncode == 0 and "0.1.0" in version.stdout, version.stderr
    where = subprocess.run([str(home / "bin" / "python"), "-c", "import deployctl; print(deployctl.__file__)"
                            ], capture_output=True, text=True, cwd=tmp_path, env=clean, check=True)
    assert where.stdout.startswith(str(home)), where.stdout

    project = tmp_path / "project"  # init writes a playbook for the Alembic project it finds
    shutil.copytree(SOCIAL, project)
    started = subprocess.run([str(home / "bin" / "deployctl"), "init", "-o", "app.yaml"], cwd=project,
                             capture_output=True, text=True, env=clean, timeout=60, check=False)
    assert started.returncode == 0, started.stderr
    checked = installed("check", str(project / "app.yaml"), DATABASE_URL=env.app_dsn)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    v1, v2 = env.playbook("1"), env.playbook("2")
    assert installed("check", str(v1)).returncode == 0
    done = installed("release", str(v1))
    assert done.returncode == 0, done.stdout + done.stderr
    seed(env)
    # Killed once version 2 is migrated and answering: a user writes, then `rollback` finishes
    # the job, restoring the snapshot and replaying the write onto version 1's schema.
    killed = installed("release", str(v2), DEPLOYCTL_FAILPOINT="smoke:started")
    assert killed.returncode < 0, killed.stdout + killed.stderr
    assert env.revision() == "0002"
    with env.connect() as conn:
        conn.execute("INSERT INTO messages (user_id, body) SELECT min(id), 'written during the release' "
                     "FROM users")
    rolled = installed("rollback", "--playbook", str(v2))
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert env.revision() == "0001"
    with env.connect() as conn:
        kept = conn.execute("SELECT count(*) FROM messages WHERE body = 'written during the release'"
                            ).fetchone()
    assert kept == (1,), "the write made during the release is in version 1's database"
