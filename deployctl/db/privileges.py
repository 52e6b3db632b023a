"""What the release's role may do, checked before a release: managed PostgreSQL (RDS, Cloud SQL,
Azure) gives no superuser, and a missing privilege must stop a release before it starts, not
its rollback halfway.

Without a superuser deployctl needs: for trigger capture, CREATE on the database (the capture's
schema) and TRIGGER on every captured table; for a `restore` rollback, CREATEDB and the
database's ownership (it is renamed), and a way to close other roles' sessions at the swap; for
any replay, ownership of the tables whose own triggers it keeps quiet.
"""

from __future__ import annotations

from typing import Any

import psycopg


def problems(conn: psycopg.Connection[Any], schemas: list[str], capture_mode: str,
             rollback: str) -> tuple[list[str], list[str]]:
    """What fails (each with the statement that grants it) and what to know; none for a superuser."""
    role, database, superuser, createdb = conn.execute(
        "SELECT current_user, current_database(), rolsuper, rolcreatedb FROM pg_roles "
        "WHERE rolname = current_user").fetchone()  # type: ignore[misc]
    if superuser:
        return [], []
    fails: list[str] = []
    warns: list[str] = []
    if capture_mode == "trigger":
        if not conn.execute("SELECT has_database_privilege(current_database(), 'CREATE')").fetchone()[0]:  # type: ignore[index]
            fails.append(f"trigger capture creates a schema in {database}: "
                         f"GRANT CREATE ON DATABASE {database} TO {role}")
        untriggerable = _tables(conn, schemas, "NOT has_table_privilege(c.oid, 'TRIGGER')")
        if untriggerable:
            fails.append(f"trigger capture needs TRIGGER on {', '.join(untriggerable)}: "
                         f"GRANT TRIGGER ON {', '.join(untriggerable)} TO {role}")
    not_owned = _tables(conn, schemas, "NOT pg_has_role(c.relowner, 'USAGE') AND EXISTS "
                        "(SELECT FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal "
                        "AND t.tgname NOT LIKE 'deployctl%%')")
    if not_owned:
        (fails if rollback == "restore" else warns).append(
            f"replay keeps the application's triggers on {', '.join(not_owned)} from firing, as "
            f"their owner: ALTER TABLE … OWNER TO {role}")
    if rollback == "restore":
        if not createdb:
            fails.append(f"a restore rollback restores into a new database: ALTER ROLE {role} CREATEDB")
        if not conn.execute("SELECT pg_has_role(datdba, 'MEMBER') FROM pg_database "
                            "WHERE datname = current_database()").fetchone()[0]:  # type: ignore[index]
            fails.append(f"a restore rollback renames {database}: ALTER DATABASE {database} OWNER TO {role}")
        others = [r[0] for r in conn.execute(
            "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = current_database() "
            "AND usename <> current_user AND NOT pg_has_role(usename, 'MEMBER') "
            "AND NOT pg_has_role('pg_signal_backend', 'MEMBER') ORDER BY 1").fetchall()]
        if others:
            warns.append(f"the swap of a restore closes every session on {database}; sessions of "
                         f"{', '.join(others)} need GRANT pg_signal_backend TO {role}")
    return fails, warns


def _tables(conn: psycopg.Connection[Any], schemas: list[str], condition: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT format('%%I.%%I', n.nspname, c.relname) FROM pg_class c "  # noqa: S608 (a constant)
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE c.relkind IN ('r', 'p') AND n.nspname = ANY(%s) AND {condition} ORDER BY 1",
        (schemas,)).fetchall()]
