"""Preflight and `deployctl check`, each check against a real situation that triggers it.

Real certificates served over TLS on loopback, a real replication slot holding real WAL, a real
Alembic migration that drops a column, a real table without a primary key, a real role that may
not see the server's data directory.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from deployctl import preflight
from deployctl.db import capture, slots
from deployctl.journal import Journal
from deployctl.playbook import load
from tests.conftest import Env, migrate_to

pytestmark = pytest.mark.integration


def check(env: Env, playbook: Path) -> tuple[int, dict[str, Any]]:
    """`deployctl check --json`: the exit code and the checks by name (tls: by URL)."""
    done = env.cli("check", "--json", str(playbook))
    assert done.returncode in (0, 2), done.stderr
    data = json.loads(done.stdout)
    assert data["ok"] == (done.returncode == 0)
    return done.returncode, data


def by_name(data: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {c["name"]: c for c in data["checks"] if c["name"] != "tls"}


def statuses(data: dict[str, Any]) -> dict[str, str]:
    return {name: c["status"] for name, c in by_name(data).items()}


def touched_nothing(env: Env) -> None:
    with env.connect(env.state_dbname) as conn:
        assert conn.execute("SELECT to_regclass('deployctl.releases')").fetchone() == (None,), (
            "no journal")
    with env.connect() as conn:
        assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pg_publication").fetchone() == (0,)
    assert not (env.workdir / "snapshots").exists()


# -- certificates served on loopback --------------------------------------------------------------

def make_certificate(folder: Path, name: str, not_after: datetime) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_after - timedelta(days=90)).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class TlsServer:
    """Completes a TLS handshake with the given certificate for whoever connects, then hangs up."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.url = f"https://127.0.0.1:{self.sock.getsockname()[1]}/"
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            try:
                with self.context.wrap_socket(conn, server_side=True):
                    pass
            except OSError:
                conn.close()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def endpoints(tmp_path: Path) -> Iterator[dict[str, tuple[str, datetime]]]:
    """https URLs on loopback serving certificates that expire at the given times."""
    now = datetime.now(UTC).replace(microsecond=0)
    expiries = {"expired": now - timedelta(days=2), "two_days": now + timedelta(days=2),
                "five_days": now + timedelta(days=5), "fine": now + timedelta(days=90)}
    servers = {name: TlsServer(*make_certificate(tmp_path, name, at)) for name, at in expiries.items()}
    try:
        yield {name: (server.url, expiries[name]) for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()


def test_check_passes_a_good_release_with_exit_0_one_line_per_check_and_touches_nothing(
        env: Env, endpoints: dict[str, tuple[str, datetime]]) -> None:
    migrate_to(env, "0001")
    playbook = env.playbook("2", public_urls=[endpoints["fine"][0]])
    done = env.cli("check", str(playbook))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    with env.connect() as conn:
        datadir = conn.execute("SHOW data_directory").fetchone()[0]
    # A server on this machine (the throwaway cluster) has its filesystem measured; one in a
    # container cannot be, and says so.
    local = os.access(Path(datadir) / "postmaster.pid", os.R_OK)
    assert [line.split()[:2] for line in lines[:-1]] == [
        ["pass", "database"], ["pass", "pg_dump"], ["pass", "disk"],
        ["pass" if local else "warn", "restore_disk"], ["pass" if local else "warn", "wal_disk"],
        ["pass", "migrations"],
        ["pass", "migration_lint"], ["pass", "capture"], ["pass", "privileges"], ["pass", "slots"],
        ["pass", "tls"]]
    assert lines[-1] == f"social 2: ready, {0 if local else 2} warning(s)"
    if local:
        assert f"free in {datadir} for a side-by-side restore of about" in done.stdout
        assert "MiB free for WAL, the capture's slot holds at most about 1.0 GiB" in done.stdout
    assert "0001 → 0002 is expand-only" in done.stdout
    assert "rollback by keep, downgrade or restore" in done.stdout
    assert env.revision() == "0001"
    touched_nothing(env)


def test_certificates_expired_or_under_3_days_fail_under_14_days_warn_naming_url_and_date(
        env: Env, endpoints: dict[str, tuple[str, datetime]]) -> None:
    migrate_to(env, "0001")
    closed = socket.create_server(("127.0.0.1", 0))
    unreachable = f"https://127.0.0.1:{closed.getsockname()[1]}/"
    closed.close()
    urls = [url for url, _ in endpoints.values()] + [unreachable]
    code, data = check(env, env.playbook("2", public_urls=urls))
    assert code == 2
    tls = [c for c in data["checks"] if c["name"] == "tls"]
    assert [c["message"].split()[0].rstrip(":") for c in tls] == urls, "one line per URL, in order"
    found = dict(zip(list(endpoints) + ["unreachable"], tls, strict=True))
    for name, (url, expires) in endpoints.items():
        assert found[name]["message"].startswith(url)
        assert f"{expires:%Y-%m-%d %H:%M} UTC" in found[name]["message"]
    assert found["expired"]["status"] == "fail" and "expired on" in found["expired"]["message"]
    assert found["two_days"]["status"] == "fail" and "renew it before releasing" in found["two_days"][
        "message"]
    assert found["five_days"]["status"] == "warn" and "in 5 days" in found["five_days"]["message"]
    assert found["fine"]["status"] == "pass" and "(90 days)" in found["fine"]["message"]
    assert found["unreachable"]["status"] == "fail"
    assert "unreachable" in found["unreachable"]["message"]
    assert all(c["status"] == "pass" for c in by_name(data).values())
    touched_nothing(env)


def test_a_nearly_expired_certificate_only_warns_and_check_exits_0(
        env: Env, endpoints: dict[str, tuple[str, datetime]]) -> None:
    migrate_to(env, "0001")
    done = env.cli("check", str(env.playbook("2", public_urls=[endpoints["five_days"][0]])))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "social 2: ready, 1 warning(s)"
    assert any(line.startswith("warn  tls") for line in done.stdout.splitlines())


# -- replication slots ----------------------------------------------------------------------------

def hold_wal(conn: psycopg.Connection[Any], kib: int) -> None:
    """Write about `kib` KiB of WAL (transactional messages: each commit flushes it)."""
    for _ in range(max(kib // 64, 1)):
        conn.execute("SELECT pg_logical_emit_message(true, 'deployctl-test', repeat('x', 65536))")


def slot_check(env: Env, name: str) -> tuple[int, dict[str, Any]]:
    """`deployctl check` while an unused logical slot `name` holds 256 KiB of WAL."""
    with env.connect() as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,))
        try:
            hold_wal(conn, 256)
            held = {s.name: s.held_bytes for s in slots.list_slots(conn)}
            assert held[name] >= 256 * 1024
            code, data = check(env, env.playbook("2"))
        finally:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
    return code, by_name(data)["slots"]


def test_a_slot_left_behind_warns_with_the_wal_it_holds_and_how_to_drop_it(env: Env) -> None:
    migrate_to(env, "0001")
    code, line = slot_check(env, "gone_replica")
    assert code == 0, "a slot under the limit warns"
    assert line["status"] == "warn"
    assert "gone_replica (inactive, holds " in line["message"]
    assert "KiB of WAL" in line["message"]
    assert "pg_drop_replication_slot" in line["message"]


def test_a_capture_slot_of_an_ended_release_fails_the_check_with_how_to_drop_it(env: Env) -> None:
    # Its next capture would start beside a slot nobody drains, which holds WAL without end.
    migrate_to(env, "0001")
    code, line = slot_check(env, "deployctl_social_7")
    assert code == 2
    assert line["status"] == "fail"
    assert "deployctl_social_7 (left by release #7, finished or unknown to the journal, holds " in (
        line["message"])
    assert "`deployctl cleanup -p PLAYBOOK`" in line["message"]


def test_capture_triggers_no_unfinished_release_owns_fail_the_check_until_cleanup(env: Env) -> None:
    migrate_to(env, "0001")
    playbook = env.playbook("2")
    with env.connect() as conn:
        capture.install_triggers(conn, ["public"])
    code, data = check(env, playbook)
    assert code == 2
    line = by_name(data)["capture"]
    assert line["status"] == "fail"
    assert "capture triggers (schema deployctl_capture)" in line["message"]
    assert "`deployctl cleanup -p PLAYBOOK`" in line["message"]

    cleaned = env.cli("cleanup", "-p", str(playbook))
    assert cleaned.returncode == 0, cleaned.stderr
    assert "dropped schema deployctl_capture and its triggers" in cleaned.stdout
    code, data = check(env, playbook)
    assert code == 0 and by_name(data)["capture"]["status"] == "pass", data
    assert env.leftovers() == []


def test_a_slot_of_an_unfinished_release_is_not_an_orphan(env: Env) -> None:
    migrate_to(env, "0001")
    playbook = env.playbook("2")
    pb = load(playbook)
    with Journal(env.state_dsn) as journal:   # a release that is running (its row says so)
        rid = journal.create_release(app="social", version="2", from_version="1",
                                     playbook_path=str(playbook), playbook_text=pb.source_text,
                                     playbook_sha256=pb.sha256)
    name = f"deployctl_social_{rid}"
    with env.connect() as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,))
        try:
            hold_wal(conn, 64)
            checks = {c.name: c for c in preflight.check(pb)}
        finally:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
    assert checks["slots"].status == "pass"
    assert checks["slots"].message == "1 replication slot(s), all in use"


@pytest.fixture
def small_slot_limit(env: Env) -> Iterator[None]:
    """max_slot_wal_keep_size = 2MB for this test: the fail threshold becomes 1 MiB."""
    with env.connect("postgres") as conn:
        conn.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '2MB'")
        conn.execute("SELECT pg_reload_conf()")
        try:
            yield
        finally:
            conn.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
            conn.execute("SELECT pg_reload_conf()")


def test_an_orphan_slot_holding_more_than_half_of_max_slot_wal_keep_size_fails(
        env: Env, small_slot_limit: None) -> None:
    migrate_to(env, "0001")
    with env.connect() as conn:
        # A physical slot reserves WAL from the last checkpoint's redo point: make that now.
        conn.execute("CHECKPOINT")
        conn.execute("SELECT pg_create_physical_replication_slot('gone_replica', true)")
        try:
            # 1.5 MiB: above half the limit, below the limit (the server does not drop it yet).
            hold_wal(conn, 1536)
            code, data = check(env, env.playbook("2"))
        finally:
            conn.execute("SELECT pg_drop_replication_slot('gone_replica')")
    assert code == 2
    line = by_name(data)["slots"]
    assert line["status"] == "fail", line
    assert re.search(r"gone_replica \(inactive, holds 1\.[5-9] MiB of WAL\)", line["message"]), line
    assert "more than 1.0 MiB (half of max_slot_wal_keep_size) puts the server's disk at risk" in (
        line["message"])


# -- capture: primary keys ------------------------------------------------------------------------

def test_a_table_without_a_primary_key_fails_the_check_and_is_named(env: Env) -> None:
    migrate_to(env, "0001")
    with env.connect() as conn:
        conn.execute("CREATE TABLE audit_log (at timestamptz, what text)")
    done = env.cli("check", str(env.playbook("2")))
    assert done.returncode == 2, done.stdout + done.stderr
    line = next(line for line in done.stdout.splitlines() if line.split()[1] == "capture")
    assert line.startswith("fail  capture")
    assert "tables without a primary key: public.audit_log" in line
    assert done.stdout.splitlines()[-1] == "social 2: not ready: 1 failed, 0 warning(s)"
    touched_nothing(env)


@pytest.mark.parametrize("env", ["managed"], indirect=True)
def test_a_managed_role_passes_and_a_privilege_it_lacks_is_named_with_its_grant(
        env: Env, pg_server: str) -> None:
    migrate_to(env, "0001")
    code, data = check(env, env.playbook("2"))
    assert code == 0, data
    assert by_name(data)["privileges"]["status"] == "pass"

    # A table someone else owns, with a trigger of the application on it.
    with psycopg.connect(pg_server, dbname=env.dbname, autocommit=True) as admin:
        admin.execute("CREATE TABLE audit (id int PRIMARY KEY)")
        admin.execute("CREATE FUNCTION audit_touch() RETURNS trigger LANGUAGE plpgsql AS "
                      "'BEGIN RETURN NEW; END'")
        admin.execute("CREATE TRIGGER audit_touch BEFORE INSERT ON audit FOR EACH ROW "
                      "EXECUTE FUNCTION audit_touch()")
    code, data = check(env, env.playbook("2"))
    assert code == 2
    message = by_name(data)["privileges"]["message"]
    assert f"GRANT TRIGGER ON public.audit TO {env.user}" in message
    assert "triggers on public.audit from firing, as their owner" in message
    touched_nothing(env)


def test_a_wal_budget_the_servers_disk_cannot_hold_is_a_warning(env: Env) -> None:
    migrate_to(env, "0001")
    code, data = check(env, env.playbook("2", capture={"max_retained_wal": "900TB"}))
    assert code == 0, data
    line = by_name(data)["wal_disk"]
    assert line["status"] == "warn"
    assert re.fullmatch(r"\d+ MiB free for WAL in \S+/pg_wal, the capture's slot may hold up to "
                        r"921600\.0 GiB: lower capture.max_retained_wal or free space on the "
                        r"database server", line["message"]), line["message"]


# -- side-by-side restore on a server this role cannot look into ---------------------------------

def test_restore_disk_warns_when_the_servers_disk_cannot_be_measured(env: Env) -> None:
    migrate_to(env, "0001")
    role, password = f"preflight_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with env.connect() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(password)))
        conn.execute(sql.SQL("GRANT SELECT ON alembic_version TO {}").format(sql.Identifier(role)))
    try:
        server = conninfo_to_dict(env.app_dsn)
        dsn = f"postgresql://{role}:{password}@{server['host']}:{server.get('port', 5432)}/{env.dbname}"
        code, data = check(env, env.playbook("2", database={"dsn": dsn}))
    finally:
        with env.connect() as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    # A role that may only read cannot capture nor restore either: that, and only that, fails.
    assert code == 2
    assert [c["name"] for c in data["checks"] if c["status"] == "fail"] == ["privileges"]
    assert f"ALTER ROLE {role} CREATEDB" in by_name(data)["privileges"]["message"]
    line = by_name(data)["restore_disk"]
    assert line["status"] == "warn"
    assert line["message"].startswith("cannot measure free space on the database server (this role "
                                      "may not read data_directory")
    assert "a side-by-side restore needs about" in line["message"]


# -- migration lint -------------------------------------------------------------------------------

ENV_PY = '''
import os
from alembic import context
from sqlalchemy import create_engine

url = os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1)
if context.is_offline_mode():
    context.configure(url=url, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    with create_engine(url).connect() as connection:
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
'''

NOTES_0001 = '''
import sqlalchemy as sa
from alembic import op

revision, down_revision, branch_labels, depends_on = "0001", None, None, None


def upgrade():
    op.create_table("notes", sa.Column("id", sa.BigInteger, primary_key=True),
                    sa.Column("title", sa.Text, nullable=False), sa.Column("body", sa.Text))


def downgrade():
    op.drop_table("notes")
'''

NOTES_0002 = '''
import sqlalchemy as sa
from alembic import op

revision, down_revision, branch_labels, depends_on = "0002", "0001", None, None


def upgrade():
    op.add_column("notes", sa.Column("tags", sa.Text))
    op.drop_column("notes", "body")


def downgrade():
    op.add_column("notes", sa.Column("body", sa.Text))
    op.drop_column("notes", "tags")
'''


@pytest.fixture
def notes_migrations(env: Env) -> Path:
    """An Alembic project whose 0002 drops notes.body; the database at 0001."""
    root = env.dir / "notes"
    (root / "migrations" / "versions").mkdir(parents=True)
    (root / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s/migrations\n")
    (root / "migrations" / "env.py").write_text(ENV_PY)
    (root / "migrations" / "versions" / "0001_notes.py").write_text(NOTES_0001)
    (root / "migrations" / "versions" / "0002_drop_body.py").write_text(NOTES_0002)
    subprocess.run([sys.executable, "-m", "alembic", "-c", str(root / "alembic.ini"), "upgrade", "0001"],
                   env={**os.environ, "DATABASE_URL": env.app_dsn}, check=True, capture_output=True)
    return root / "alembic.ini"


def has_column(env: Env, table: str, column: str) -> bool:
    with env.connect() as conn:
        return conn.execute("SELECT 1 FROM information_schema.columns WHERE table_name = %s "
                            "AND column_name = %s", (table, column)).fetchone() is not None


def test_a_migration_that_drops_a_column_fails_with_rollback_keep_and_names_table_column(
        env: Env, notes_migrations: Path) -> None:
    playbook = env.playbook("2", database={"rollback": "keep"},
                            migrations={"alembic_ini": str(notes_migrations), "target": "0002"})
    code, data = check(env, playbook)
    assert code == 2
    line = by_name(data)["migration_lint"]
    assert line == {"name": "migration_lint", "status": "fail", "message": (
        "0001 → 0002 breaks the old version while both run: drop column notes.body; rollback `keep` "
        "is impossible after it (possible: downgrade, restore): set database.rollback to restore or "
        "downgrade, or ship the contraction in a later release")}
    assert [n for n, s in statuses(data).items() if s != "pass"] == ["migration_lint"]
    assert has_column(env, "notes", "body")
    touched_nothing(env)


@pytest.mark.parametrize("mode", ["restore", "downgrade"])
def test_a_migration_that_drops_a_column_warns_when_the_rollback_can_bring_it_back(
        env: Env, notes_migrations: Path, mode: str) -> None:
    playbook = env.playbook("2", database={"rollback": mode},
                            migrations={"alembic_ini": str(notes_migrations), "target": "0002"})
    code, data = check(env, playbook)
    assert code == 0
    line = by_name(data)["migration_lint"]
    assert line["status"] == "warn"
    assert "drop column notes.body" in line["message"]
    assert f"rollback by downgrade or restore (this playbook: {mode}), not keep" in line["message"]


def test_a_release_with_rollback_keep_and_a_contracting_migration_is_refused_untouched(
        env: Env, notes_migrations: Path) -> None:
    playbook = env.playbook("2", database={"rollback": "keep"},
                            migrations={"alembic_ini": str(notes_migrations), "target": "0002"})
    done = env.cli("release", "--json", str(playbook))
    assert done.returncode == 2, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "refused"
    assert "migration_lint: 0001 → 0002 breaks the old version while both run: drop column notes.body" in (
        result["reason"])
    assert [(s["step"], s["outcome"]) for s in result["steps"]] == [("preflight", "failed")]
    assert env.revision() == "0001"
    assert has_column(env, "notes", "body") and not has_column(env, "notes", "tags")
    assert not (env.workdir / "snapshots").exists()
    with env.connect() as conn:
        assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone() == (0,)
