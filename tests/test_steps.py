"""Each release step on its own, against a real PostgreSQL, real Alembic and real processes.

For every step: one test for what it does, one for running it again (steps must be idempotent,
since a release killed at any point is resumed by running the interrupted step again).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from structlog.testing import capture_logs

from deployctl import engine, steps
from deployctl.db import restore, snapshot
from deployctl.db.libpq import run_tool
from deployctl.db.migrate import Alembic, LockTimeout
from deployctl.errors import BadInput, StepFailed
from deployctl.fleet import process
from deployctl.fleet.transports.local import LocalTransport
from deployctl.gates import smoke as smoke_checks
from deployctl.journal import Journal, with_dbname
from deployctl.playbook import SmokeCheck
from deployctl.steps import Refused, Run
from tests.conftest import SOCIAL, Env, free_port, migrate_to, new_release, seed, wait_for

pytestmark = pytest.mark.integration

APP_TABLES = ("users", "messages", "likes")


# -- helpers -------------------------------------------------------------------------------

def counts(env: Env, dbname: str | None = None) -> dict[str, int]:
    with env.connect(dbname) as conn:
        return {t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t)))
                .fetchone()[0] for t in APP_TABLES}


def revision_of(env: Env, dbname: str) -> str | None:
    with env.connect(dbname) as conn:
        return snapshot.alembic_revision(conn)


def database_names(env: Env) -> set[str]:
    with env.connect("postgres") as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                            (f"{env.dbname}%",)).fetchall()
    return {name for (name,) in rows}


def allows_connections(env: Env, dbname: str) -> bool:
    with env.connect("postgres") as conn:
        row = conn.execute("SELECT datallowconn FROM pg_database WHERE datname = %s",
                           (dbname,)).fetchone()
    assert row is not None, f"database {dbname} does not exist"
    return bool(row[0])


def has_column(env: Env, table: str, column: str, dbname: str | None = None) -> bool:
    with env.connect(dbname) as conn:
        row = conn.execute(
            "SELECT 1 FROM information_schema.columns WHERE table_name = %s AND column_name = %s",
            (table, column)).fetchone()
    return row is not None


def has_table(env: Env, table: str, dbname: str | None = None) -> bool:
    with env.connect(dbname) as conn:
        return bool(conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()[0])


def version_xmin(env: Env) -> str:
    """The transaction that last wrote alembic_version: unchanged means nothing was written."""
    with env.connect() as conn:
        return str(conn.execute("SELECT xmin::text FROM alembic_version").fetchone()[0])


def alembic(env: Env, lock_timeout_s: float = 2.0) -> Alembic:
    return Alembic(SOCIAL / "alembic.ini", env.app_dsn, "DATABASE_URL", lock_timeout_s, 30.0)


def get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def answers(url: str) -> bool:
    try:
        get(url, timeout=2)
    except OSError:
        return False
    return True


def processes_running(argv: list[str]) -> list[int]:
    """Pids of live processes whose command line is exactly `argv`."""
    wanted = [a.encode() for a in argv]
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().split(b"\0")[:-1] == wanted:
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run `target` in a thread; its result or exception lands in the returned dict."""
    box: dict[str, Any] = {}

    def body() -> None:
        try:
            box["result"] = target()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, box


# -- preflight -----------------------------------------------------------------------------

def test_preflight_passes_on_a_good_setup_and_returns_every_check(env: Env, journal: Journal) -> None:
    migrate_to(env, "0001")
    outcome = steps.preflight(new_release(env, journal))
    checks = outcome.detail["checks"]
    assert [c["name"] for c in checks] == ["database", "pg_dump", "disk", "restore_disk", "wal_disk",
                                           "migrations", "migration_lint", "capture", "privileges",
                                           "slots"]
    assert all(c["status"] == "pass" for c in checks), checks
    messages = {c["name"]: c["message"] for c in checks}
    assert messages["migrations"] == "database at 0001, target 0002"
    assert messages["capture"] == "logical capture of schemas public"
    assert outcome.record is None


def test_preflight_twice_gives_the_same_checks_and_touches_nothing(env: Env, journal: Journal) -> None:
    migrate_to(env, "0001")
    run = new_release(env, journal)
    first = steps.preflight(run).detail["checks"]
    second = steps.preflight(run).detail["checks"]
    assert [(c["name"], c["status"]) for c in first] == [(c["name"], c["status"]) for c in second]
    assert env.revision() == "0001"
    assert not has_table(env, "reactions")
    assert not (env.workdir / "snapshots").exists()


def test_preflight_refuses_an_unreachable_database_and_names_it(env: Env, journal: Journal) -> None:
    closed = free_port()
    run = new_release(env, journal, database={"dsn": f"postgresql://postgres@127.0.0.1:{closed}/gone"})
    started = time.monotonic()
    with pytest.raises(Refused) as refused:
        steps.preflight(run)
    message = str(refused.value)
    assert message.startswith("database: ")
    assert "unreachable" in message and str(closed) in message
    assert "check database.dsn" in message
    assert time.monotonic() - started < 5


def test_preflight_refuses_an_alembic_target_that_does_not_exist(env: Env, journal: Journal) -> None:
    migrate_to(env, "0001")
    run = new_release(env, journal, migrations={"target": "0099"})
    with pytest.raises(Refused, match=r"migrations: .*unknown Alembic revision '0099'"):
        steps.preflight(run)
    assert env.revision() == "0001"


# -- snapshot ------------------------------------------------------------------------------

def test_snapshot_manifest_records_revision_lsn_snapshot_and_sha256_of_every_file(env: Env) -> None:
    migrate_to(env, "0001")
    seed(env)
    dest = env.workdir / "snapshots" / "one"
    manifest = snapshot.take(env.app_dsn, dest, jobs=2)

    assert manifest["alembic_revision"] == "0001"
    assert re.fullmatch(r"[0-9A-F]+/[0-9A-F]+", manifest["lsn"]), manifest["lsn"]
    assert re.fullmatch(r"\d+:\d+:(\d+(,\d+)*)?", manifest["snapshot"]), manifest["snapshot"]
    assert json.loads((dest / snapshot.MANIFEST).read_text()) == manifest
    on_disk = {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()} - {snapshot.MANIFEST}
    assert {f["name"] for f in manifest["files"]} == on_disk
    assert "toc.dat" in on_disk
    for entry in manifest["files"]:
        data = (dest / entry["name"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["bytes"] == len(data)
    assert manifest["bytes"] == sum(f["bytes"] for f in manifest["files"])


def test_snapshot_files_are_0600_in_0700_folders(env: Env) -> None:
    migrate_to(env, "0001")
    dest = env.workdir / "snapshots" / "one"
    snapshot.take(env.app_dsn, dest, jobs=2)
    assert dest.stat().st_mode & 0o777 == 0o700
    assert dest.parent.stat().st_mode & 0o777 == 0o700
    files = [p for p in dest.rglob("*") if p.is_file()]
    assert dest / snapshot.MANIFEST in files
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o600)}
    assert all(p.stat().st_mode & 0o777 == 0o700 for p in dest.rglob("*") if p.is_dir())


def test_snapshot_verify_catches_a_file_with_one_flipped_byte(env: Env) -> None:
    migrate_to(env, "0001")
    seed(env)
    dest = env.workdir / "snapshots" / "one"
    snapshot.take(env.app_dsn, dest, jobs=2)
    snapshot.verify(dest)  # intact: passes
    victim = dest / "toc.dat"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(StepFailed, match=r"toc\.dat does not match its sha256"):
        snapshot.verify(dest)


def test_snapshot_taken_twice_returns_the_same_manifest_without_dumping_again(env: Env) -> None:
    migrate_to(env, "0001")
    seed(env)
    dest = env.workdir / "snapshots" / "one"
    first = snapshot.take(env.app_dsn, dest, jobs=2)
    stats = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in dest.rglob("*")}
    with env.connect() as conn:  # a new dump would contain this row and differ
        conn.execute("INSERT INTO users (name, email) VALUES ('Later', 'later@example.com')")
    second = snapshot.take(env.app_dsn, dest, jobs=2)
    assert second == first
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in dest.rglob("*")} == stats
    assert not dest.with_name("one.partial").exists()


def test_snapshot_replaces_a_partial_folder_left_by_a_killed_dump(env: Env) -> None:
    migrate_to(env, "0001")
    dest = env.workdir / "snapshots" / "one"
    partial = dest.with_name("one.partial")
    partial.mkdir(parents=True)
    (partial / "toc.dat").write_bytes(b"half a dump")
    (partial / "leftover.dat.gz").write_bytes(b"garbage")
    manifest = snapshot.take(env.app_dsn, dest, jobs=2)
    assert not partial.exists()
    assert not (dest / "leftover.dat.gz").exists()
    assert "leftover.dat.gz" not in {f["name"] for f in manifest["files"]}
    assert snapshot.verify(dest) == manifest


def test_snapshot_excludes_rows_committed_after_its_export(env: Env) -> None:
    migrate_to(env, "0001")
    seed(env)
    before = counts(env)
    dest = env.workdir / "snapshots" / "one"
    # Holding a lock on messages stops pg_dump after the export and before it reads the table,
    # so rows can be committed between the two.
    holder = psycopg.connect(env.app_dsn)
    try:
        holder.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
        holder_pid = holder.info.backend_pid
        thread, box = in_thread(lambda: snapshot.take(env.app_dsn, dest, jobs=2))

        def dump_waits_for_the_lock() -> bool:
            with env.connect("postgres") as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> %s "
                    "AND wait_event_type = 'Lock'", (env.dbname, holder_pid)).fetchone()
            return bool(row and row[0])

        wait_for("pg_dump to wait for the lock on messages", dump_waits_for_the_lock, timeout=10)
        with env.connect() as writer:  # a transaction that starts after the export
            writer.execute("INSERT INTO users (name, email) VALUES ('Late', 'late@example.com')")
        holder.execute("INSERT INTO messages (user_id, body) SELECT min(id), 'late' FROM users")
        late_xid = holder.execute("SELECT pg_current_xact_id()::text").fetchone()[0]
        holder.commit()
    finally:
        holder.close()
    thread.join(60)
    assert "error" not in box, box.get("error")
    manifest = box["result"]
    with env.connect() as conn:
        visible = conn.execute("SELECT pg_visible_in_snapshot(%s::xid8, %s::pg_snapshot)",
                               (late_xid, manifest["snapshot"])).fetchone()[0]
    assert visible is False, "the recorded snapshot must not see the late transaction"

    scratch = f"{env.dbname}_scratch"
    with env.connect("postgres") as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
    run_tool("pg_restore", ["--exit-on-error", str(dest)], with_dbname(env.app_dsn, scratch))
    assert counts(env, scratch) == before
    assert counts(env)["users"] == before["users"] + 1  # the live database has them


def test_snapshot_step_records_its_manifest_in_the_done_transaction(env: Env, journal: Journal) -> None:
    migrate_to(env, "0001")
    run = new_release(env, journal)
    run.pb.workdir.chmod(0o755)
    engine.run_step(run, "snapshot", steps.take_snapshot)
    assert run.pb.workdir.stat().st_mode & 0o777 == 0o700, "the workdir holds user data"
    recorded = journal.snapshot(run.release_id)
    assert recorded is not None
    assert recorded["path"] == str(run.snapshot_dir)
    assert recorded["manifest"] == snapshot.verify(run.snapshot_dir)
    detail = journal.step_detail(run.release_id, "snapshot")
    assert detail["revision"] == "0001" and detail["lsn"] == recorded["manifest"]["lsn"]
    with psycopg.connect(env.state_dsn) as conn:
        xmins = conn.execute(
            """SELECT (SELECT xmin::text FROM deployctl.snapshots WHERE release_id = %(r)s),
                      (SELECT xmin::text FROM deployctl.events
                       WHERE release_id = %(r)s AND step = 'snapshot' AND phase = 'done')""",
            {"r": run.release_id}).fetchone()
    assert xmins[0] == xmins[1], "the snapshot row and the done event are one transaction"


def test_snapshot_step_twice_returns_the_same_snapshot(env: Env, journal: Journal) -> None:
    migrate_to(env, "0001")
    run = new_release(env, journal)
    first = steps.take_snapshot(run)
    second = steps.take_snapshot(run)
    assert second.detail == first.detail
    assert [p.name for p in run.snapshot_dir.parent.iterdir()] == [run.snapshot_dir.name]


# -- migrate -------------------------------------------------------------------------------

def test_migrate_step_upgrades_0001_to_0002(env: Env, journal: Journal) -> None:
    migrate_to(env, "0001")
    outcome = steps.migrate(new_release(env, journal))
    assert outcome.detail == {"from_revision": "0001", "to_revision": "0002"}
    assert env.revision() == "0002"
    assert has_table(env, "reactions") and has_column(env, "users", "bio")


def test_migrate_step_twice_is_a_no_op(env: Env, journal: Journal) -> None:
    migrate_to(env, "0001")
    run = new_release(env, journal)
    steps.migrate(run)
    written_by = version_xmin(env)
    again = steps.migrate(run)
    assert again.detail == {"from_revision": "0002", "to_revision": "0002"}
    assert version_xmin(env) == written_by
    alembic(env).upgrade("0002", retries=0)  # the lower level too
    assert version_xmin(env) == written_by


def test_alembic_resolves_head_to_0002_and_refuses_unknown_revisions(env: Env) -> None:
    migrations = alembic(env)
    assert migrations.resolve("head") == "0002"
    assert migrations.resolve("0001") == "0001"
    assert migrations.resolve("base") is None
    with pytest.raises(BadInput, match="unknown Alembic revision 'nope'"):
        migrations.resolve("nope")


def test_upgrade_fails_with_lock_timeout_when_a_table_stays_locked_and_retries_are_0(env: Env) -> None:
    migrate_to(env, "0001")
    with psycopg.connect(env.app_dsn) as holder:
        holder.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        # The reason names PostgreSQL's error, not the link SQLAlchemy prints after it.
        with pytest.raises(LockTimeout, match="alembic upgrade 0002 failed: .*lock timeout"):
            alembic(env, lock_timeout_s=0.2).upgrade("0002", retries=0)
        took = time.monotonic() - started
        holder.rollback()
    assert took < 10
    assert env.revision() == "0001"
    assert not has_column(env, "users", "bio"), "the failed migration left nothing behind"


def test_upgrade_retries_a_lock_timeout_until_the_lock_is_released(env: Env) -> None:
    migrate_to(env, "0001")
    retrying = "migration waited too long for a lock or lost a deadlock; retrying"
    holder = psycopg.connect(env.app_dsn)
    try:
        holder.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        with capture_logs() as logs:
            def release_after_a_retry() -> None:
                # However slow the machine, the lock goes only once an attempt has timed out.
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and not any(e["event"] == retrying for e in logs):
                    time.sleep(0.05)
                holder.rollback()

            releaser, _ = in_thread(release_after_a_retry)
            alembic(env, lock_timeout_s=0.2).upgrade("0002", retries=8)
        releaser.join(10)
    finally:
        holder.close()
    assert env.revision() == "0002"
    retried = [e for e in logs if e["event"] == retrying]
    assert retried, "at least one attempt timed out and was retried"
    assert [e["attempt"] for e in retried] == list(range(1, len(retried) + 1))


def test_upgrade_retries_a_migration_that_postgresql_chose_to_abort_in_a_deadlock(env: Env) -> None:
    # 0002 alters users, then creates reactions, whose foreign key needs a lock on messages. A user
    # transaction holding messages that then reads users closes the circle; the migration, which
    # waited first, is the one PostgreSQL aborts. It must be tried again, not fail the release.
    migrate_to(env, "0001")
    retrying = "migration waited too long for a lock or lost a deadlock; retrying"
    user = psycopg.connect(env.app_dsn)
    try:
        user.execute("LOCK TABLE messages IN ROW EXCLUSIVE MODE")

        def read_users_once_the_migration_waits() -> None:
            with psycopg.connect(env.app_dsn, autocommit=True) as watcher:
                wait_for("the migration to wait for messages", lambda: watcher.execute(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'messages'::regclass"
                ).fetchone()[0] > 0, timeout=30)  # type: ignore[index]
            user.execute("SELECT count(*) FROM users")  # waits until the migration is aborted
            user.commit()

        with capture_logs() as logs:
            reader, outcome = in_thread(read_users_once_the_migration_waits)
            alembic(env, lock_timeout_s=20).upgrade("0002", retries=3)
        reader.join(10)
    finally:
        user.close()
    assert "error" not in outcome, outcome
    assert env.revision() == "0002"
    assert [e["attempt"] for e in logs if e["event"] == retrying] == [1]


def test_downgrade_back_to_0001_removes_0002s_changes(env: Env) -> None:
    migrate_to(env, "0002")
    alembic(env).downgrade("0001", retries=0)
    assert env.revision() == "0001"
    assert not has_table(env, "reactions") and not has_column(env, "users", "bio")


def test_downgrade_twice_is_a_no_op(env: Env) -> None:
    migrate_to(env, "0002")
    migrations = alembic(env)
    migrations.downgrade("0001", retries=0)
    written_by = version_xmin(env)
    migrations.downgrade("0001", retries=0)
    assert env.revision() == "0001"
    assert version_xmin(env) == written_by


# -- deploy --------------------------------------------------------------------------------

def test_deploy_starts_the_app_and_it_answers_health(env: Env, journal: Journal) -> None:
    migrate_to(env, "0002")
    run = new_release(env, journal)
    outcome = steps.deploy(run)
    status, body = get(f"http://127.0.0.1:{env.green_port}/health")
    assert status == 200 and json.loads(body) == {"status": "ok", "version": "2"}
    spec = process.for_playbook(run.pb)
    assert outcome.detail["pid"] == LocalTransport(run.pb.workdir).pid(spec)
    assert processes_running(spec.argv) == [outcome.detail["pid"]]
    # The pidfile and log hold the command line and what the app printed: the owner's alone.
    run_dir = run.pb.workdir / "run"
    assert [oct(p.stat().st_mode & 0o777) for p in (run.pb.workdir, run_dir, run_dir / "social")
            ] == [oct(0o700)] * 3
    assert {oct(p.stat().st_mode & 0o777) for p in (run_dir / "social").iterdir()} == {oct(0o600)}
    assert LocalTransport(run.pb.workdir).stop(spec, 5)


def test_deploy_twice_keeps_the_same_process(env: Env, journal: Journal) -> None:
    migrate_to(env, "0002")
    run = new_release(env, journal)
    first = steps.deploy(run)
    second = steps.deploy(run)
    assert second.detail["pid"] == first.detail["pid"]
    spec = process.for_playbook(run.pb)
    assert processes_running(spec.argv) == [first.detail["pid"]], "no second process was started"
    assert get(f"http://127.0.0.1:{env.green_port}/health")[0] == 200
    assert LocalTransport(run.pb.workdir).stop(spec, 5)


def test_deploy_of_a_command_that_exits_at_once_fails_fast_with_its_status_and_output(
        env: Env, journal: Journal) -> None:
    command = [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]
    run = new_release(env, journal, deploy={"command": command})
    assert run.pb.deploy.health.timeout == 20
    started = time.monotonic()
    with pytest.raises(StepFailed) as failed:
        steps.deploy(run)
    assert time.monotonic() - started < 5, "a dead process must not wait for the health timeout"
    message = str(failed.value)
    assert "exit status 3" in message
    assert "boom" in message


# -- smoke ---------------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    """/ok: 200 with 'messages'; /missing: 404; /slow: 200 after 0.4 s; /flaky: 503, then 200."""

    server: Any

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        self.server.hits[self.path] += 1
        status, body = 200, b'{"messages": []}'
        if self.path == "/missing":
            status, body = 404, b"not here"
        elif self.path == "/slow":
            time.sleep(0.4)
        elif self.path.startswith("/flaky") and self.server.hits[self.path] == 1:
            status, body = 503, b"warming up"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def web() -> Iterator[Any]:
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.hits = Counter()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def http_check(url: str, **http: Any) -> SmokeCheck:
    retries = http.pop("retries", 0)
    return SmokeCheck.model_validate({"name": "probe", "http": {"url": url, **http},
                                      "retries": retries, "interval": "50ms"})


def sql_check(query: str) -> SmokeCheck:
    return SmokeCheck.model_validate({"name": "probe", "sql": query})


def test_smoke_http_check_passes_on_expected_status_and_body(web: Any) -> None:
    result = smoke_checks.run(http_check(f"{web.url}/ok", body_contains="messages",
                                         max_latency="2s"), "unused")
    assert result.ok, result.detail
    assert result.latency_ms is not None and result.latency_ms < 2000


def test_smoke_http_check_fails_on_a_wrong_status(web: Any) -> None:
    result = smoke_checks.run(http_check(f"{web.url}/missing", status=200), "unused")
    assert not result.ok
    assert result.detail == f"{web.url}/missing: status 404, expected 200"


def test_smoke_http_check_fails_when_the_body_lacks_the_text(web: Any) -> None:
    result = smoke_checks.run(http_check(f"{web.url}/ok", body_contains="reactions"), "unused")
    assert not result.ok
    assert "body lacks 'reactions'" in result.detail


def test_smoke_http_check_fails_when_slower_than_max_latency(web: Any) -> None:
    result = smoke_checks.run(http_check(f"{web.url}/slow", max_latency="100ms"), "unused")
    assert not result.ok
    assert result.latency_ms is not None and result.latency_ms >= 400
    assert "more than 100 ms" in result.detail


def test_smoke_http_check_fails_when_nothing_answers() -> None:
    url = f"http://127.0.0.1:{free_port()}/ok"
    result = smoke_checks.run(http_check(url, timeout="2s"), "unused")
    assert not result.ok
    assert result.detail.startswith(f"{url}: no answer")


def test_smoke_http_check_retries_and_passes_on_the_second_attempt(web: Any) -> None:
    without = smoke_checks.run(http_check(f"{web.url}/flaky-a"), "unused")
    assert not without.ok and "status 503" in without.detail
    result = smoke_checks.run(http_check(f"{web.url}/flaky-b", retries=3), "unused")
    assert result.ok, result.detail
    assert web.hits["/flaky-b"] == 2, "retried once, and stopped once it passed"


def test_smoke_sql_check_passes_when_the_query_returns_true(env: Env) -> None:
    result = smoke_checks.run(sql_check("select 1 = 1"), env.app_dsn)
    assert result.ok and result.detail == "query returned true"


def test_smoke_sql_check_fails_when_the_query_returns_false(env: Env) -> None:
    result = smoke_checks.run(sql_check("select to_regclass('public.reactions') is not null"),
                              env.app_dsn)
    assert not result.ok
    assert result.detail == "query returned False, expected true"


def test_smoke_sql_check_fails_with_the_error_of_a_broken_query(env: Env) -> None:
    result = smoke_checks.run(sql_check("select count(*) > 0 from no_such_table"), env.app_dsn)
    assert not result.ok
    assert result.detail.startswith("query failed:") and "no_such_table" in result.detail


def test_smoke_sql_check_cannot_write(env: Env) -> None:
    migrate_to(env, "0001")
    query = "with x as (insert into users (name, email) values ('a', 'a@b') returning 1) select true"
    result = smoke_checks.run(sql_check(query), env.app_dsn)
    assert not result.ok and "read-only" in result.detail
    assert counts(env)["users"] == 0


def test_smoke_step_fails_naming_the_failed_check(env: Env, journal: Journal, web: Any) -> None:
    run = new_release(env, journal, smoke=[
        {"name": "feed answers", "http": {"url": f"{web.url}/ok", "body_contains": "messages"}},
        {"name": "reactions exist", "sql": "select to_regclass('public.reactions') is not null"},
    ])
    with pytest.raises(StepFailed, match=r"^reactions exist: query returned False, expected true$"):
        steps.smoke(run)


def test_smoke_step_twice_gives_the_same_results(env: Env, journal: Journal, web: Any) -> None:
    migrate_to(env, "0002")
    run = new_release(env, journal, smoke=[
        {"name": "feed answers", "http": {"url": f"{web.url}/ok", "body_contains": "messages"}},
        {"name": "reactions exist", "sql": "select to_regclass('public.reactions') is not null"},
    ])
    first = steps.smoke(run).detail["checks"]
    second = steps.smoke(run).detail["checks"]
    assert [(c["name"], c["ok"]) for c in first] == [("feed answers", True), ("reactions exist", True)]
    assert [(c["name"], c["ok"]) for c in second] == [(c["name"], c["ok"]) for c in first]


# -- rollback.database (restore) -------------------------------------------------------------

def migrated_past_a_snapshot(env: Env, journal: Journal) -> tuple[Run, dict[str, int]]:
    """Seed at 0001, snapshot, migrate to 0002 and write rows as users of version 2 would.

    Returns the counts a restore must end with: the snapshot's rows plus the user and the
    message written after it (replayed; the reaction's table does not exist at 0001)."""
    migrate_to(env, "0001")
    seed(env)
    before = counts(env)
    run = new_release(env, journal, database={"rollback": "restore"})
    engine.run_step(run, "snapshot", steps.take_snapshot)
    engine.run_step(run, "migrate", steps.migrate)
    with env.connect() as conn:
        user = conn.execute("INSERT INTO users (name, email, bio) VALUES ('New', 'new@example.com',"
                            " 'after the snapshot') RETURNING id").fetchone()[0]
        message = conn.execute("INSERT INTO messages (user_id, body) VALUES (%s, 'new') RETURNING id",
                               (user,)).fetchone()[0]
        conn.execute("INSERT INTO reactions (user_id, message_id, emoji) VALUES (%s, %s, 'x')",
                     (user, message))
    return run, {**before, "users": before["users"] + 1, "messages": before["messages"] + 1}


AFTER_SNAPSHOT = {"users": 1, "messages": 1}


def without_replay(expected: dict[str, int]) -> dict[str, int]:
    """The counts of the snapshot alone: a restore whose delta was not replayed."""
    return {k: v - AFTER_SNAPSHOT.get(k, 0) for k, v in expected.items()}


def failed_name(env: Env, run: Run) -> str:
    return f"{env.dbname}_failed_{run.release_id}"


def assert_restored(env: Env, run: Run, before: dict[str, int]) -> None:
    assert env.revision() == "0001"
    assert counts(env) == before
    assert not has_column(env, "users", "bio") and not has_table(env, "reactions")
    failed = failed_name(env, run)
    assert database_names(env) == {env.dbname, failed}, "the restore database was swapped in"
    assert revision_of(env, failed) == "0002"
    with env.connect(failed) as conn:
        kept = conn.execute("SELECT count(*) FROM users WHERE email = 'new@example.com'").fetchone()
    assert kept == (1,), "the failed database keeps what users wrote"
    assert allows_connections(env, env.dbname) and allows_connections(env, failed)


def test_rollback_database_restore_brings_back_the_snapshot_and_keeps_the_failed_database(
        env: Env, journal: Journal) -> None:
    run, before = migrated_past_a_snapshot(env, journal)
    outcome = steps.database(run)
    assert outcome.detail["mode"] == "restore"
    assert outcome.detail["action"] == "restored the snapshot at 0001 and replayed the delta"
    assert outcome.detail["kept_as"] == failed_name(env, run)
    assert_restored(env, run, before)
    with env.connect(failed_name(env, run)) as conn:
        assert conn.execute("SELECT count(*) FROM reactions").fetchone()[0] == 1


def test_restore_load_and_swap_again_change_nothing(env: Env, journal: Journal) -> None:
    run, before = migrated_past_a_snapshot(env, journal)
    steps.database(run)
    written_by = version_xmin(env)
    recorded = journal.snapshot(run.release_id)
    assert recorded is not None
    names = restore.load(env.app_dsn, Path(recorded["path"]), run.release_id, jobs=2)
    swapped = restore.swap(env.app_dsn, names)
    assert swapped["kept_as"] == failed_name(env, run) and swapped["connections_closed"] == 0
    assert_restored(env, run, before)
    assert version_xmin(env) == written_by
    again = steps.database(run)
    # Run again, the step reports the restore this release made, and closes nothing.
    assert again.detail["action"] == "restored the snapshot at 0001 and replayed the delta"
    assert again.detail["connections_closed"] == 0
    assert_restored(env, run, before)
    assert version_xmin(env) == written_by


def swap_killed_after_the_first_rename(
        env: Env, journal: Journal) -> tuple[Run, dict[str, int], restore.Names]:
    """A restore loaded, then the state a swap killed after its first rename leaves."""
    run, before = migrated_past_a_snapshot(env, journal)
    recorded = journal.snapshot(run.release_id)
    assert recorded is not None
    names = restore.load(env.app_dsn, Path(recorded["path"]), run.release_id, jobs=2)
    with env.connect("postgres") as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(
            sql.Identifier(names.live)))
        admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
            sql.Identifier(names.live), sql.Identifier(names.failed)))
    return run, before, names


def test_restore_swap_interrupted_after_the_first_rename_is_completed_by_swap_again(
        env: Env, journal: Journal) -> None:
    run, before, names = swap_killed_after_the_first_rename(env, journal)
    restore.swap(env.app_dsn, names)
    assert_restored(env, run, without_replay(before))


def test_rollback_database_step_completes_a_swap_interrupted_after_the_first_rename(
        env: Env, journal: Journal) -> None:
    run, before, _ = swap_killed_after_the_first_rename(env, journal)
    # The step is what `deployctl rollback` runs again after the crash.
    steps.database(run)
    assert_restored(env, run, without_replay(before))


# -- finalize ------------------------------------------------------------------------------

def released_blue_then_green_deployed(env: Env, journal: Journal) -> tuple[Run, Run]:
    migrate_to(env, "0002")
    blue = new_release(env, journal, "1")
    steps.deploy(blue)
    engine.run_step(blue, "finalize", steps.finalize)
    assert journal.get(blue.release_id).status == "released"
    green = new_release(env, journal, "2")
    steps.deploy(green)
    return blue, green


def test_finalize_records_the_live_version_with_its_done_event_and_stops_blue(
        env: Env, journal: Journal) -> None:
    blue, green = released_blue_then_green_deployed(env, journal)
    blue_spec = process.for_playbook(blue.pb)
    assert LocalTransport(blue.pb.workdir).pid(blue_spec) is not None
    engine.run_step(green, "finalize", steps.finalize)

    live = journal.live("social")
    assert live is not None
    assert (live["live_version"], live["release_id"]) == ("2", green.release_id)
    release = journal.get(green.release_id)
    assert release.status == "released" and release.finished_at is not None
    assert journal.step_detail(green.release_id, "finalize")["stopped_version"] == "1"
    with psycopg.connect(env.state_dsn) as conn:
        xmins = conn.execute(
            """SELECT (SELECT xmin::text FROM deployctl.apps WHERE app = 'social'),
                      (SELECT xmin::text FROM deployctl.releases WHERE id = %(r)s),
                      (SELECT xmin::text FROM deployctl.events
                       WHERE release_id = %(r)s AND step = 'finalize' AND phase = 'done')""",
            {"r": green.release_id}).fetchone()
    assert len(set(xmins)) == 1, f"live version, status and done event in one transaction: {xmins}"

    assert LocalTransport(blue.pb.workdir).pid(blue_spec) is None
    assert processes_running(blue_spec.argv) == []
    assert not answers(f"http://127.0.0.1:{env.blue_port}/health")
    assert get(f"http://127.0.0.1:{env.green_port}/health")[0] == 200


def test_finalize_twice_changes_nothing_and_leaves_green_serving(env: Env, journal: Journal) -> None:
    blue, green = released_blue_then_green_deployed(env, journal)
    engine.run_step(green, "finalize", steps.finalize)
    green_pid = LocalTransport(green.pb.workdir).pid(process.for_playbook(green.pb))
    events = journal.events(green.release_id)

    engine.run_step(green, "finalize", steps.finalize)  # the engine skips a done step
    assert journal.events(green.release_id) == events
    again = steps.finalize(green)  # and the step itself, run again, is harmless
    assert again.detail == {"live_version": "2", "stopped_version": None}
    assert again.record is not None
    with journal.transaction():
        again.record(journal)
    live = journal.live("social")
    assert live is not None and (live["live_version"], live["release_id"]) == ("2", green.release_id)
    assert journal.get(green.release_id).status == "released"
    assert LocalTransport(green.pb.workdir).pid(process.for_playbook(green.pb)) == green_pid
    assert get(f"http://127.0.0.1:{env.green_port}/health")[0] == 200
    assert LocalTransport(blue.pb.workdir).pid(process.for_playbook(blue.pb)) is None
    assert not answers(f"http://127.0.0.1:{env.blue_port}/health")
    LocalTransport(green.pb.workdir).stop(process.for_playbook(green.pb), 5)


def test_opening_the_journal_takes_no_lock_a_running_release_holds(env: Env, journal: Journal) -> None:
    # `deployctl status` or `promote` while the release writes its journal: once the schema is
    # in place, opening the journal runs no DDL (its ALTER TABLEs would wait for, or deadlock
    # with, the release's transaction).
    with psycopg.connect(env.state_dsn) as release:
        release.execute("LOCK TABLE deployctl.captures, deployctl.changes, deployctl.events "
                        "IN ROW EXCLUSIVE MODE")
        opened, outcome = in_thread(lambda: Journal(env.state_dsn).close())
        opened.join(10)
        assert not opened.is_alive(), "opening the journal waited for the release's locks"
        release.rollback()
    assert "error" not in outcome, outcome
