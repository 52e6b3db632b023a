"""The migration lint on SQL text: what breaks the old version, and what does not."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from deployctl.db.lint import ALL_MODES, CONTRACTING_MODES, lint, statements
from tests.conftest import SOCIAL


def names(sql_text: str) -> list[str]:
    return [str(f) for f in lint(sql_text).findings]


@pytest.mark.parametrize(("sql_text", "expected"), [
    ("ALTER TABLE users DROP COLUMN bio;", "drop column users.bio"),
    ("ALTER TABLE users DROP bio CASCADE;", "drop column users.bio"),
    ("ALTER TABLE IF EXISTS ONLY public.users DROP COLUMN IF EXISTS bio;",
     "drop column public.users.bio"),
    ("ALTER TABLE users RENAME name TO display_name;", "rename column users.name to display_name"),
    ('ALTER TABLE "Users" RENAME COLUMN "Name" TO "displayName";',
     "rename column Users.Name to displayName"),
    ("ALTER TABLE likes RENAME TO hearts;", "rename table likes to hearts"),
    ("ALTER TABLE likes SET SCHEMA archive;", "move table likes to schema archive"),
    ("DROP TABLE likes;", "drop table likes"),
    ("ALTER TABLE messages ALTER COLUMN body TYPE VARCHAR(200) USING body::varchar;",
     "type change messages.body to varchar(200)"),
    ("ALTER TABLE messages ALTER body SET DATA TYPE numeric(10, 2);",
     "type change messages.body to numeric(10, 2)"),
    ("ALTER TABLE users ALTER COLUMN email SET NOT NULL;", "set not null users.email"),
    ("ALTER TABLE users ADD COLUMN age INTEGER NOT NULL;",
     "add column not null without default users.age"),
    ("ALTER TABLE users ADD code TEXT PRIMARY KEY;", "add column not null without default users.code"),
])
def test_each_operation_that_breaks_the_old_version_is_named_with_table_and_column(
        sql_text: str, expected: str) -> None:
    assert names(sql_text) == [expected]
    assert lint(sql_text).rollback_modes == CONTRACTING_MODES


def test_several_tables_in_one_drop_and_several_actions_in_one_alter_are_each_named() -> None:
    found = names("DROP TABLE IF EXISTS a, public.b CASCADE;\n"
                  "ALTER TABLE users DROP COLUMN bio, ALTER COLUMN name TYPE text, "
                  "ADD COLUMN n numeric(10, 2) DEFAULT 0 NOT NULL;")
    assert found == ["drop table a", "drop table public.b", "drop column users.bio",
                     "type change users.name to text"]


@pytest.mark.parametrize("sql_text", [
    "ALTER TABLE users ADD COLUMN bio TEXT;",
    "ALTER TABLE users ADD COLUMN score INTEGER DEFAULT '0' NOT NULL;",
    "ALTER TABLE users ADD COLUMN n BIGSERIAL NOT NULL;",
    "ALTER TABLE users ADD COLUMN id2 bigint GENERATED ALWAYS AS IDENTITY NOT NULL;",
    "ALTER TABLE users ADD COLUMN ok boolean CHECK (ok IS NOT NULL);",
    "ALTER TABLE users ALTER COLUMN email DROP NOT NULL, ALTER COLUMN name SET DEFAULT 'x';",
    "ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE (email);",
    "ALTER TABLE users DROP CONSTRAINT users_email_key;",
    "ALTER TABLE users RENAME CONSTRAINT a TO b;",
    "CREATE INDEX CONCURRENTLY users_name_idx ON users (name);",
    "DROP INDEX users_name_idx;",
    "UPDATE alembic_version SET version_num='0003' WHERE alembic_version.version_num = '0002';",
])
def test_expand_only_operations_leave_every_rollback_mode(sql_text: str) -> None:
    result = lint(sql_text)
    assert result.findings == ()
    assert not result.contracting
    assert result.rollback_modes == ALL_MODES == ("keep", "downgrade", "restore")


def test_what_the_migration_itself_creates_can_change_without_breaking_the_old_version() -> None:
    sql_text = """
        CREATE TABLE staging (id int PRIMARY KEY, tmp text);
        ALTER TABLE staging DROP COLUMN tmp;
        ALTER TABLE staging RENAME TO staged;
        ALTER TABLE staged ADD COLUMN must INTEGER NOT NULL;
        ALTER TABLE users ADD COLUMN flag boolean;
        ALTER TABLE users ALTER COLUMN flag SET DEFAULT false;
        ALTER TABLE users ALTER COLUMN flag SET NOT NULL;
        ALTER TABLE users ADD COLUMN draft text;
        ALTER TABLE users ALTER COLUMN draft TYPE varchar(10);
        ALTER TABLE users DROP COLUMN draft;
    """
    assert names(sql_text) == []


def test_set_not_null_on_a_new_column_without_a_default_breaks_the_old_versions_inserts() -> None:
    assert names("ALTER TABLE users ADD COLUMN region text;\n"
                 "UPDATE users SET region = 'eu';\n"
                 "ALTER TABLE users ALTER COLUMN region SET NOT NULL;") == ["set not null users.region"]


def test_comments_strings_and_function_bodies_are_not_read_as_statements() -> None:
    sql_text = """
        -- ALTER TABLE users DROP COLUMN bio;
        /* ALTER TABLE users DROP COLUMN bio; /* nested */ still a comment; */
        INSERT INTO notes (body) VALUES ('ALTER TABLE users DROP COLUMN bio;');
        INSERT INTO notes (body) VALUES (E'it\\'s; ALTER TABLE users DROP COLUMN bio');
        CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $body$ DROP TABLE users; $body$;
        ALTER TABLE "odd;name" DROP COLUMN "semi;colon";
    """
    assert names(sql_text) == ["drop column odd;name.semi;colon"]
    assert len(statements(sql_text)) == 4


def test_plain_index_builds_on_existing_tables_are_listed_for_their_size_check() -> None:
    result = lint("CREATE TABLE t (id int PRIMARY KEY);\n"
                  "CREATE INDEX t_idx ON t (id);\n"
                  "CREATE UNIQUE INDEX IF NOT EXISTS m_idx ON ONLY public.messages USING btree (body);\n"
                  "CREATE INDEX CONCURRENTLY u_idx ON users (name);")
    assert result.index_builds == ("public.messages",)
    assert not result.contracting


def test_do_blocks_are_counted_as_unread_and_transaction_control_is_not_a_statement() -> None:
    result = lint("BEGIN;\nDO $$ BEGIN EXECUTE 'ALTER TABLE a DROP COLUMN b'; END $$;\nCOMMIT;")
    assert result.opaque == 1
    assert result.statements == 1
    assert result.findings == ()


def test_the_sample_apps_own_upgrade_is_expand_only() -> None:
    # The real offline SQL Alembic writes for examples/social 0001 -> 0002.
    out = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(SOCIAL / "alembic.ini"), "upgrade", "0001:0002",
         "--sql"], env={**os.environ, "DATABASE_URL": "postgresql://lint@127.0.0.1/lint"},
        capture_output=True, text=True, check=True).stdout
    result = lint(out)
    assert result.findings == () and result.index_builds == ()
    assert result.statements == 5   # ADD COLUMN, CREATE TABLE, 2 × CREATE INDEX, UPDATE alembic_version
    assert result.rollback_modes == ALL_MODES
