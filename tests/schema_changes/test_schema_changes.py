"""Every kind of schema change, both capture modes: a restore rollback keeps every user action.

Run as a superuser, and as a managed-PostgreSQL role (LOGIN REPLICATION CREATEDB, owner of the
databases, no superuser: trigger capture, replay in foreign-key order).

Each case is a folder of cases/: an Alembic revision pair (or more), and in its __init__.py the
mapping a user would write and the SQL its users run on each version. One test runs them all:

1. the database is migrated to the case's first revision (which seeds rows) and copied: the
   copy is the oracle, the old schema at the snapshot point;
2. the release's own snapshot step starts the capture;
3. simulated users act before the migration; while it runs (a transaction the migration waits
   for, then statements that wait for the migration, which holds its locks); after it on the
   new version; and on the old version where its SQL still runs on the new schema;
4. the rollback restores the snapshot beside the live database, replays the delta mapped to the
   old schema and swaps them, exactly as `database.rollback: restore` does;
5. every acknowledged action is applied to the oracle in the old version's own SQL, in the
   order they were acknowledged: both databases must hold the same rows, table by table.
"""

from __future__ import annotations

import importlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest
from psycopg import sql

from deployctl import delta
from deployctl.db import capture, shapes
from deployctl.db.migrate import Alembic
from deployctl.journal import Journal
from deployctl.steps import Run
from tests.conftest import SOCIAL, Env, start_capture, wait_for

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
CASES = sorted(p.name for p in (HERE / "cases").iterdir() if (p / "__init__.py").exists())
MIGRATION = "deployctl-test-migration"   # the migration's application_name, to watch it wait
USER = "deployctl-test-user"


@pytest.fixture(autouse=True)
def named_migration(monkeypatch: pytest.MonkeyPatch) -> None:
    """Alembic runs as a child process: libpq gives its connections this application_name."""
    monkeypatch.setenv("PGAPPNAME", MIGRATION)


def case_module(name: str) -> ModuleType:
    return importlib.import_module(f"tests.schema_changes.cases.{name}")


LOSSLESS_DOWNGRADES = [c for c in CASES if not getattr(case_module(c), "DOWNGRADE_LOSES_DATA", False)]


def alembic_ini(case: ModuleType, folder: Path) -> Path:
    """An alembic.ini for the case: the sample app's env.py, the case's revisions."""
    locations = [HERE / "cases" / case.__name__.rsplit(".", 1)[1]]
    if getattr(case, "USES_ITEMS_V1", False):
        locations.append(HERE / "items_v1")
    ini = folder / "alembic.ini"
    ini.write_text((SOCIAL / "alembic.ini").read_text().replace(
        "script_location = %(here)s/migrations",
        f"script_location = {SOCIAL / 'migrations'}\n"
        f"version_locations = {os.pathsep.join(map(str, locations))}"))
    return ini


@dataclass
class Action:
    kind: str   # create | edit | delete
    key: int
    n: int

    @property
    def params(self) -> dict[str, Any]:
        return {"k": self.key, "n": self.n, "v": f"{self.kind} {self.n}"}


@dataclass
class Users:
    """Simulated users: each action is one transaction; acknowledged once its commit returns."""

    dsn: str
    case: ModuleType
    acked: list[tuple[str, str, Action]] = field(default_factory=list)  # phase, revision, action
    attempted: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def new(self, kind: str, key: int) -> Action:
        with self.lock:
            self.attempted += 1
            return Action(kind, key, self.attempted)

    def ack(self, phase: str, revision: str, action: Action) -> None:
        with self.lock:
            self.acked.append((phase, revision, action))

    def in_old_schema(self, conn: psycopg.Connection[Any], revision: str, action: Action) -> None:
        """What `action`, acknowledged on `revision`, does in the old schema (the case's
        EQUIVALENT, else the same action in the old version's SQL)."""
        first = min(self.case.ACTIONS)
        spec = getattr(self.case, "EQUIVALENT", {}).get(revision, self.case.ACTIONS[first])[action.kind]
        for statement in [spec] if isinstance(spec, str) else spec:
            conn.execute(statement, action.params)

    def statements(self, revision: str, action: Action) -> list[str]:
        spec = self.case.ACTIONS[revision][action.kind]
        return [spec] if isinstance(spec, str) else list(spec)

    def write(self, conn: psycopg.Connection[Any], revision: str, action: Action) -> None:
        for statement in self.statements(revision, action):
            conn.execute(statement, action.params)

    def act(self, phase: str, revision: str, kind: str, key: int) -> bool:
        action = self.new(kind, key)
        try:
            with psycopg.connect(self.dsn, application_name=USER) as conn:
                self.write(conn, revision, action)
                conn.commit()
        except psycopg.Error:
            return False  # refused (the old version's SQL on the new schema): never acknowledged
        self.ack(phase, revision, action)
        return True

    def acts(self, phase: str, revision: str, plan: list[tuple[str, int]]) -> None:
        for kind, key in plan:
            self.act(phase, revision, kind, key)


class Migration(threading.Thread):
    """`alembic upgrade` through deployctl's own migrate code, in the background."""

    def __init__(self, alembic: Alembic, target: str) -> None:
        super().__init__(daemon=True)
        self.alembic, self.target = alembic, target
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            self.alembic.upgrade(self.target, retries=0)
        except Exception as exc:  # reported by the test
            self.error = exc


def migration_waits(dsn: str, on_version_table: bool = False) -> bool:
    with psycopg.connect(dsn, autocommit=True, application_name=USER) as conn:
        return bool(conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock' "
            "AND (NOT %s OR query ILIKE '%%alembic_version%%')", (MIGRATION, on_version_table)
        ).fetchone())


def migrate_under_load(users: Users, alembic: Alembic, run: Run, step: str, before: str,
                       waited_for: tuple[str, int], waiting: list[tuple[str, int]]) -> None:
    """Migrate to `step` while users act: `waited_for` is written before the migration starts
    and committed while it waits; `waiting` is issued (in the old SQL) while the migration holds
    its locks, held back from committing by a lock on alembic_version."""
    dsn = run.pb.database.dsn
    with psycopg.connect(dsn, application_name=USER) as hold, \
            psycopg.connect(dsn, application_name=USER) as first:
        hold.execute("SELECT * FROM alembic_version FOR UPDATE")
        action = users.new(*waited_for)
        users.write(first, before, action)
        migration = Migration(alembic, step)
        migration.start()
        wait_for("the migration to wait", lambda: not migration.is_alive() or migration_waits(dsn))
        first.commit()
        users.ack("during", before, action)
        wait_for("the migration to hold its locks",
                 lambda: not migration.is_alive() or migration_waits(dsn, on_version_table=True))
        assert migration.is_alive(), f"the migration did not wait: {migration.error}"
        threads = [threading.Thread(target=users.act, args=("during", before, kind, key))
                   for kind, key in waiting]
        for thread in threads:
            thread.start()
        time.sleep(0.5)  # they commit now, or queue behind the migration's locks
        hold.rollback()
    migration.join(120)
    assert migration.error is None, migration.error
    for thread in threads:
        thread.join(60)
    capture.after_migration(dsn, run.journal.capture(run.release_id)["mode"],  # type: ignore[index]
                            run.pb.capture.schemas)


def table_rows(dsn: str, tables: dict[str, str]) -> dict[str, list[str]]:
    """Every row, by column name (a downgrade may put a column back at the end)."""
    with psycopg.connect(dsn) as conn:
        return {table: [r[0] for r in conn.execute(sql.SQL(
            "SELECT to_jsonb(row_)::text FROM {} AS row_ ORDER BY {}").format(
                sql.Identifier(table), sql.Identifier(order))).fetchall()]
            for table, order in tables.items()}


def oracle_copy(env: Env) -> str:
    """A copy of the application database now (the snapshot point): the oracle."""
    name = f"{env.dbname}_oracle"
    with env.connect("postgres") as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(env.dbname)))
    return env.app_dsn.rsplit("/", 1)[0] + "/" + name


def plan(step: int) -> dict[str, Any]:
    """Which keys users touch around migration `step` (seeded keys are 1-20). Keys created
    before are edited and deleted after, so folds meet changes of several shapes."""
    new = 100 + 20 * step
    return {
        "before": [("create", new + 1), ("edit", 1), ("edit", 2 + step), ("delete", 3 + 5 * step),
                   ("create", new + 2), ("edit", new + 1)],
        "waited_for": ("edit", 4 + 5 * step),
        "waiting": [("create", new + 3), ("edit", 5 + 5 * step), ("delete", 6 + 5 * step)],
        "after": [("create", new + 4), ("edit", 1), ("edit", new + 1), ("delete", new + 2),
                  ("edit", 4 + 5 * step), ("create", new + 5), ("edit", new + 5), ("edit", 7 + 5 * step)],
        "old_version": [("create", new + 6), ("edit", 2 + step), ("edit", new + 4)],
    }


def run_case(env: Env, journal: Journal, name: str, mode: str, mapping: dict[str, Any] | None = None
             ) -> tuple[Users, str, Run]:
    """Steps 1-3 of the module's docstring; returns the users, the oracle and the release."""
    case = case_module(name)
    steps: list[str] = getattr(case, "STEPS", ["0002"])
    first = min(case.ACTIONS)
    ini = alembic_ini(case, env.dir)
    alembic = Alembic(ini, env.app_dsn, lock_timeout_s=60)
    alembic.upgrade(first, retries=0)
    oracle = oracle_copy(env)
    run = start_capture(env, journal, mode, migrations={"alembic_ini": str(ini), "target": steps[-1]},
                        replay={"tables": case.MAPPING if mapping is None else mapping})
    users = Users(env.app_dsn, case)
    old_runs_on_new = getattr(case, "OLD_RUNS_ON_NEW", True)
    revision = first
    for i, step in enumerate(steps):
        keys = plan(i)
        users.acts("before", revision, keys["before"])
        migrate_under_load(users, alembic, run, step, revision, keys["waited_for"],
                           keys["waiting"] if old_runs_on_new else [])
        revision = step
        users.acts("after", revision, keys["after"])
        if old_runs_on_new:
            users.acts("old version", first, keys["old_version"])
    return users, oracle, run


def roll_back(run: Run) -> dict[str, Any]:
    recorded = run.journal.snapshot(run.release_id)
    assert recorded is not None
    result = delta.restore_with_replay(run.journal, run.pb, run.release_id, Path(recorded["path"]),
                                       recorded["manifest"]["alembic_revision"])
    delta.finish(run.journal, run.pb, run.release_id)
    return result


def assert_every_action_kept(world: Env, users: Users, oracle: str) -> None:
    """Step 5 of the module's docstring."""
    phases = {phase for phase, _, _ in users.acked}
    assert {"before", "during", "after"} <= phases, f"users acted only {phases}"
    first = min(users.case.ACTIONS)
    with psycopg.connect(oracle) as conn:
        for _, revision, action in users.acked:
            users.in_old_schema(conn, revision, action)
        conn.commit()
    tables = getattr(users.case, "TABLES", {"items": "id"})
    assert table_rows(world.app_dsn, tables) == table_rows(oracle, tables)
    assert world.revision() == first


@pytest.mark.parametrize(("env", "mode"), [("superuser", "logical"), ("superuser", "trigger"),
                                           ("managed", "trigger")], indirect=["env"])
@pytest.mark.parametrize("name", CASES)
def test_a_restore_rollback_keeps_every_acknowledged_action(
        world: Env, journal: Journal, name: str, mode: str) -> None:
    users, oracle, run = run_case(world, journal, name, mode)

    result = roll_back(run)

    assert_every_action_kept(world, users, oracle)
    assert result["conflicts"] == 0, result["conflict_list"]


@pytest.mark.parametrize("name", LOSSLESS_DOWNGRADES)
def test_a_downgrade_rollback_keeps_every_acknowledged_action_where_the_downgrade_is_lossless(
        world: Env, journal: Journal, name: str) -> None:
    """`database.rollback: downgrade`: Alembic's downgrade on the live database, as the rollback
    runs it; where the case's downgrade brings the old columns back from the new ones."""
    users, oracle, run = run_case(world, journal, name, "logical")

    run.alembic.downgrade(min(users.case.ACTIONS), retries=0)
    delta.finish(run.journal, run.pb, run.release_id)

    assert_every_action_kept(world, users, oracle)


def test_a_rename_nobody_mapped_stops_the_replay_and_names_the_mapping(
        world: Env, journal: Journal) -> None:
    _, _, run = run_case(world, journal, "rename_column", "logical", mapping={})
    with pytest.raises(shapes.Unmapped, match=r"items: \d+ changes carry title.*columns\.label: "
                                              r"\{from: title\}"):
        roll_back(run)
