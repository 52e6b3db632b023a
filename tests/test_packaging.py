"""The wheel holds what an installed deployctl reads at run time: the journal's schema and the
trigger capture's SQL, inside the package (read with importlib.resources, not from the tree)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from deployctl.db import capture
from deployctl.journal import SCHEMA_SQL

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_carries_the_sql_the_package_reads(tmp_path: Path) -> None:
    # Built from a copy of the tree: a build/ folder left by an earlier build would hide a miss.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".demo", ".deployctl", "build", "*.egg-info", "__pycache__", ".*_cache",
        ".hypothesis"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path),
                    str(source)], check=True, capture_output=True, timeout=600)
    (wheel,) = tmp_path.glob("deployctl-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    read = {f"deployctl/sql/{SCHEMA_SQL.name}", f"deployctl/sql/{capture.TRIGGER_SQL.name}"}
    assert read <= names, f"missing from {wheel.name}: {sorted(read - names)}"
    assert SCHEMA_SQL.read_text().strip() and capture.TRIGGER_SQL.read_text().strip()
