"""Real PostgreSQL for every test that needs one, and the sample app's playbooks.

The server, in order of preference: one named by DEPLOYCTL_TEST_DSN; a testcontainers
PostgreSQL where a Docker engine answers; else a throwaway cluster from the local binaries
(deployctl.localpg, run as the `postgres` user when we are root). Each test gets fresh
databases from pytest-postgresql's DatabaseJanitor. Nothing is skipped: a missing server is an
error.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict
from pytest_postgresql.janitor import DatabaseJanitor

from deployctl import engine, steps
from deployctl.journal import Journal
from deployctl.localpg import LocalCluster
from deployctl.playbook import load
from deployctl.steps import Run

# The fixtures of real servers, for every test module that asks for them by name: backends,
# HAProxy and nginx for the routers; sshd and its keys; HAProxy in front of a test's app.
pytest_plugins = ["tests.routers_env", "tests.sshd", "tests.traffic_env"]

ROOT = Path(__file__).resolve().parent.parent
SOCIAL = ROOT / "examples" / "social"


def _docker_reachable() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DSN of the `postgres` database on a real server (superuser)."""
    named = os.environ.get("DEPLOYCTL_TEST_DSN")
    if named:
        yield named
        return
    if _docker_reachable():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:15", driver=None).with_command(
            "postgres -c wal_level=logical"
        ) as container:
            yield container.get_connection_url()
        return
    cluster = LocalCluster(tmp_path_factory.mktemp("pg"))
    yield cluster.start()
    cluster.destroy()


def wait_for(what: str, condition: Callable[[], Any], timeout: float = 60, every: float = 0.05) -> Any:
    """Poll `condition` every `every` seconds until it is true (returns its value); fail the test
    after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(every)
    pytest.fail(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require(program: str) -> str:
    """The absolute path of a program the tests run for real (sshd, haproxy, nginx…): a missing
    one fails the tests when CI is set (never a silent skip there), and skips them elsewhere."""
    for candidate in (shutil.which(program), f"/usr/sbin/{program}", f"/usr/bin/{program}"):
        if candidate and os.access(candidate, os.X_OK):
            return os.path.abspath(candidate)
    reason = f"{program} not found: these tests run a real one (`make fleet-tools` installs it)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _dsn(server: str, dbname: str, user: str | None = None) -> str:
    """A postgresql:// URL (what Alembic's env.py expects) for `dbname` on the server, as the
    server's user or as `user` (a role of the trusting test cluster: no password)."""
    params = conninfo_to_dict(server)
    password = f":{params['password']}" if params.get("password") and not user else ""
    return (f"postgresql://{user or params.get('user', 'postgres')}{password}@{params['host']}:"
            f"{params.get('port', 5432)}/{dbname}")


@dataclass
class Env:
    """One test's world: its own application and state databases, folder and ports."""

    server: str
    dbname: str
    state_dbname: str
    dir: Path
    blue_port: int
    green_port: int
    user: str | None = None     # a managed role (no superuser) instead of the server's user

    @property
    def app_dsn(self) -> str:
        return _dsn(self.server, self.dbname, self.user)

    @property
    def state_dsn(self) -> str:
        return _dsn(self.server, self.state_dbname, self.user)

    @property
    def workdir(self) -> Path:
        return self.dir / "work"

    def connect(self, dbname: str | None = None) -> psycopg.Connection[Any]:
        return psycopg.connect(_dsn(self.server, dbname or self.dbname, self.user), autocommit=True)

    def leftovers(self) -> list[str]:
        """What no ended release may leave behind: replication slots, and in the application
        database or a kept failed copy of it publications, capture triggers; side-by-side
        restores that never became live."""
        found = []
        with self.connect() as conn:
            copies = [n for (n,) in conn.execute(
                "SELECT datname FROM pg_database WHERE datname = %s OR datname LIKE %s",
                (self.dbname, f"{self.dbname}\\_%")).fetchall()]
            found += [f"slot {n}" for (n,) in conn.execute(
                "SELECT slot_name FROM pg_replication_slots WHERE database = ANY(%s)",
                (copies,)).fetchall()]
        for dbname in copies:
            if "_restore_" in dbname:
                found.append(f"database {dbname}")
                continue
            with self.connect(dbname) as conn:
                found += [f"publication {n} in {dbname}" for (n,) in conn.execute(
                    "SELECT pubname FROM pg_publication").fetchall()]
                found += [f"capture triggers in {dbname}" for _ in conn.execute(
                    "SELECT 1 FROM pg_namespace WHERE nspname = 'deployctl_capture'").fetchall()]
        return found

    def playbook(self, version: str = "2", *, name: str | None = None, **changes: Any) -> Path:
        """Write a playbook for `version` of the sample app; `changes` override sections."""
        port = self.blue_port if version == "1" else self.green_port
        base = f"http://127.0.0.1:{port}"
        data: dict[str, Any] = {
            "app": "social",
            "version": version,
            "workdir": str(self.workdir),
            "database": {"dsn": self.app_dsn, "state_dsn": self.state_dsn, "rollback": "restore",
                         "lock_timeout": "2s"},
            "migrations": {"alembic_ini": str(SOCIAL / "alembic.ini"),
                           "target": "0001" if version == "1" else "0002"},
            "deploy": {
                "command": [sys.executable, str(SOCIAL / "app.py"), "serve", "--version", version,
                            "--port", str(port)],
                "env": {"DATABASE_URL": self.app_dsn},
                "health": {"url": f"{base}/health", "timeout": "20s"},
                "stop_timeout": "5s",
            },
            "smoke": [{"name": "feed answers",
                       "http": {"url": f"{base}/feed", "status": 200, "body_contains": "messages"}}],
        }
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        path = self.dir / (name or f"social-v{version}-{uuid.uuid4().hex[:6]}.yaml")
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def cli(self, *args: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the real `deployctl` command in a child process."""
        return subprocess.run(
            [sys.executable, "-m", "deployctl", *args], capture_output=True, text=True,
            env={**os.environ, **(env or {})}, timeout=timeout, check=False, cwd=self.dir,
        )

    def revision(self) -> str | None:
        with self.connect() as conn:
            exists = conn.execute("SELECT to_regclass('alembic_version') IS NOT NULL").fetchone()
            if not exists or not exists[0]:
                return None
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
            return row[0] if row else None

    def release_row(self, release_id: int | None = None) -> dict[str, Any] | None:
        with psycopg.connect(self.state_dsn, row_factory=psycopg.rows.dict_row) as conn:
            if conn.execute("SELECT to_regclass('deployctl.releases')").fetchone()["to_regclass"] is None:
                return None
            return conn.execute(
                "SELECT * FROM deployctl.releases WHERE id = coalesce(%s, (SELECT max(id) FROM "
                "deployctl.releases))", (release_id,)).fetchone()

    def events(self, release_id: int) -> list[tuple[str, str]]:
        with psycopg.connect(self.state_dsn) as conn:
            return conn.execute("SELECT step, phase FROM deployctl.events WHERE release_id = %s "
                                "ORDER BY id", (release_id,)).fetchall()

    def stop_apps(self, workdir: Path | None = None) -> None:
        import json
        import signal

        for pidfile in ((workdir or self.workdir) / "run").glob("*/*.pid"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                os.killpg(int(json.loads(pidfile.read_text())["pid"]), signal.SIGKILL)


def _janitor(server: str, dbname: str) -> DatabaseJanitor:
    params = conninfo_to_dict(server)
    return DatabaseJanitor(user=str(params.get("user", "postgres")), host=str(params["host"]),
                           port=int(params.get("port", 5432)), dbname=dbname,
                           password=params.get("password"))  # type: ignore[arg-type]


# What managed PostgreSQL (RDS, Cloud SQL, Azure) gives an application: no superuser.
MANAGED_ROLE = "LOGIN REPLICATION CREATEDB NOSUPERUSER"


@pytest.fixture
def env(pg_server: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Env]:
    """The test's databases, owned by the server's superuser, or (parametrised indirectly with
    "managed") by a role of its own that has only MANAGED_ROLE's rights."""
    suffix = uuid.uuid4().hex[:8]
    role = f"owner_{suffix}" if getattr(request, "param", "superuser") == "managed" else None
    world = Env(pg_server, f"social_{suffix}", f"state_{suffix}", tmp_path, free_port(), free_port(),
                role)
    world.workdir.mkdir()
    janitors = [_janitor(pg_server, world.dbname), _janitor(pg_server, world.state_dbname)]
    for janitor in janitors:
        janitor.init()
    ident = psycopg.sql.Identifier
    if role:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL(f"CREATE ROLE {{}} {MANAGED_ROLE}").format(ident(role)))
            for name in (world.dbname, world.state_dbname):
                conn.execute(psycopg.sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    ident(name), ident(role)))
    try:
        yield world
    finally:
        world.stop_apps()
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                         "WHERE database LIKE %s AND NOT active", (f"%{suffix}%",))
            leftovers = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                     (f"%{suffix}%",)).fetchall()
            for (name,) in leftovers:
                conn.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident(name)))
            if role:
                conn.execute(psycopg.sql.SQL("DROP ROLE IF EXISTS {}").format(ident(role)))


def social_users() -> ModuleType:
    """The sample app's simulated users (examples/social/users.py): traffic and its oracle."""
    spec = importlib.util.spec_from_file_location("social_users", SOCIAL / "users.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


def failing_v2_playbook(env: Env, capture: str = "auto", drain: str = "lazy") -> Path:
    """Version 2 with its feed bug; the feed check retries ~4 s, so green serves meanwhile."""
    deploy = yaml.safe_load(env.playbook("2").read_text())["deploy"]
    deploy["env"]["SOCIAL_FAIL"] = "1"
    feed = f"http://127.0.0.1:{env.green_port}/feed"
    return env.playbook("2", deploy=deploy, smoke=[{
        "name": "feed answers", "http": {"url": feed, "status": 200, "body_contains": "messages"},
        "retries": 8, "interval": "0.5s"}], capture={"mode": capture, "drain": drain})


def migrate_to(world: Env, revision: str) -> None:
    """Bring the app database to `revision` with the sample app's own Alembic setup."""
    subprocess.run([sys.executable, "-m", "alembic", "-c", str(SOCIAL / "alembic.ini"), "upgrade",
                    revision], env={**os.environ, "DATABASE_URL": world.app_dsn}, check=True,
                   capture_output=True)


def seed(world: Env, users: int = 10, messages: int = 30) -> None:
    subprocess.run([sys.executable, str(SOCIAL / "app.py"), "seed", "--users", str(users),
                    "--messages", str(messages)], env={**os.environ, "DATABASE_URL": world.app_dsn},
                   check=True, capture_output=True)


# -- capture: a release's snapshot step, for tests of the delta ---------------------------------

@pytest.fixture
def world(env: Env) -> Iterator[Env]:
    """The test's databases; their replication slots are dropped after it (a database that
    holds a slot cannot be dropped)."""
    yield env
    with env.connect("postgres") as conn:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                     "WHERE database LIKE %s AND NOT active", (f"{env.dbname}%",))


@pytest.fixture
def journal(world: Env) -> Iterator[Journal]:
    with Journal(world.state_dsn) as opened:
        yield opened


def new_release(env: Env, journal: Journal, version: str = "2", **changes: Any) -> Run:
    """A release row for a fresh playbook of `version`, as `engine.release` creates it, and its Run."""
    path = env.playbook(version, **changes)
    pb = load(path)
    live = journal.live(pb.app)
    rid = journal.create_release(
        app=pb.app, version=pb.version, from_version=live["live_version"] if live else None,
        playbook_path=str(path.resolve()), playbook_text=pb.source_text, playbook_sha256=pb.sha256)
    return Run(pb, journal, rid)


def start_capture(env: Env, journal: Journal, mode: str = "logical", **changes: Any) -> Run:
    """The release's snapshot step: capture first, then the dump on an exported snapshot."""
    run = new_release(env, journal, capture={"mode": mode}, **changes)
    engine.run_step(run, "snapshot", steps.take_snapshot)
    found = journal.capture(run.release_id)
    assert found is not None and found["mode"] == mode and found["status"] == "active"
    return run
