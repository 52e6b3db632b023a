"""`make lint` stays clean: ruff with the rule set in pyproject.toml (each exception there with
its reason) over the code, tests, examples and bench, and mypy --strict over deployctl/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, check=False)


def test_ruff_finds_nothing() -> None:
    done = _run("ruff", "check", "deployctl", "tests", "examples", "bench")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict_finds_nothing() -> None:
    done = _run("mypy", "deployctl")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "strict = true" in (ROOT / "pyproject.toml").read_text()
