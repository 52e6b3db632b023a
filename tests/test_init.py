"""`deployctl init`: a starter playbook for the Alembic project it finds, which validates as it
is written, for every transport and router; `deployctl check` passes on it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deployctl import playbook
from tests.conftest import SOCIAL, Env


def init(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deployctl", "init", *args], cwd=project,
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, **env})


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An application's folder with its Alembic project under `db/`."""
    folder = tmp_path / "My Shop"
    shutil.copytree(SOCIAL / "migrations", folder / "db" / "migrations")
    shutil.copy(SOCIAL / "alembic.ini", folder / "db" / "alembic.ini")
    return folder


@pytest.mark.parametrize("transport", ["local", "ssh"])
@pytest.mark.parametrize("router", ["none", "haproxy", "nginx", "command"])
def test_the_starter_playbook_validates_as_written(project: Path, transport: str, router: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    done = init(project, "--transport", transport, "--router", router)
    assert done.returncode == 0, done.stderr
    written = project / "playbooks" / "my-shop.yaml"
    assert f"wrote {written}" in done.stdout
    text = written.read_text()
    assert text.startswith("# deployctl playbook for my-shop") and "docs/playbook.md" in text
    if transport == "ssh":  # the files it names, as a user would put them there
        (written.parent / "known_hosts").write_text("")
        (written.parent / "build").mkdir()
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@127.0.0.1:5432/shop")
    pb = playbook.load(written)
    assert (pb.app, pb.deploy.transport) == ("my-shop", transport)
    assert pb.migrations.alembic_ini == project / "db" / "alembic.ini"
    assert (pb.router.type if pb.router else "none") == router
    assert bool(pb.cohorts) == (router != "none")
    if router == "command":  # it cannot measure errors: no error-rate gate that is never conclusive
        assert pb.gates.error_rate.max is None and pb.gates.error_rate.max_vs_blue is None
        assert pb.gates.http


def test_init_refuses_to_overwrite_and_needs_one_alembic_project(project: Path, tmp_path: Path) -> None:
    assert init(project).returncode == 0
    written = project / "playbooks" / "my-shop.yaml"
    written.write_text("mine")
    again = init(project)
    assert again.returncode == 2 and "--force" in again.stderr and written.read_text() == "mine"
    assert init(project, "--force").returncode == 0 and written.read_text() != "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = init(empty)
    assert nothing.returncode == 2 and "no alembic.ini" in nothing.stderr
    shutil.copytree(project / "db", project / "other")
    two = init(project, "-o", "x.yaml")
    assert two.returncode == 2 and "2 alembic.ini found" in two.stderr and "--alembic-ini" in two.stderr
    named = init(project, "-o", "x.yaml", "--alembic-ini", "other/alembic.ini", "--app", "shop")
    assert named.returncode == 0, named.stderr


@pytest.mark.integration
def test_check_passes_on_the_starter_playbook(project: Path, env: Env) -> None:
    done = init(project, "--command", f"{sys.executable} app.py serve --version 1 --port {env.blue_port}",
                "--health-url", f"http://127.0.0.1:{env.blue_port}/health")
    assert done.returncode == 0, done.stderr
    checked = subprocess.run([sys.executable, "-m", "deployctl", "check", "playbooks/my-shop.yaml"],
                             cwd=project, capture_output=True, text=True, timeout=120, check=False,
                             env={**os.environ, "DATABASE_URL": env.app_dsn})
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "my-shop 1: ready" in checked.stdout
