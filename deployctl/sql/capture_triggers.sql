-- Trigger capture, the fallback where logical decoding is not possible (wal_level is not
-- `logical`, or the role may not create replication slots). Installed into the application
-- database at the start of a release; deployctl drains `deployctl_capture.changes` into its
-- journal and drops the whole schema (and with it every trigger) when the release ends.
-- Rows carry the writing transaction's id so that transactions already in the snapshot, and
-- migration transactions (those that write alembic_version), can be left out.
CREATE SCHEMA IF NOT EXISTS deployctl_capture;

CREATE TABLE IF NOT EXISTS deployctl_capture.changes (
    id          bigserial PRIMARY KEY,
    txid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    schema_name text NOT NULL,
    table_name  text NOT NULL,
    op          text NOT NULL,
    old         jsonb,
    new         jsonb
);

CREATE OR REPLACE FUNCTION deployctl_capture.record_row() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO deployctl_capture.changes (schema_name, table_name, op, old, new)
    VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, lower(TG_OP),
            CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
            CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION deployctl_capture.record_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO deployctl_capture.changes (schema_name, table_name, op)
    VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, 'truncate');
    RETURN NULL;
END
$$;
