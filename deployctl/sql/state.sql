-- deployctl's state: the journal of releases. Lives in its own database (default `deployctl`
-- on the application's server) so that restoring the application database never touches it.
-- Idempotent: applied at every start.
CREATE SCHEMA IF NOT EXISTS deployctl;

CREATE TABLE IF NOT EXISTS deployctl.releases (
    id              bigserial PRIMARY KEY,
    app             text NOT NULL,
    version         text NOT NULL,
    from_version    text,
    status          text NOT NULL DEFAULT 'running'
                    CONSTRAINT releases_status_check
                    CHECK (status IN ('running', 'rolling_back', 'released', 'rolled_back',
                                      'rollback_failed', 'refused', 'aborted')),
    reason          text,
    playbook_path   text NOT NULL,
    playbook_text   text NOT NULL,
    playbook_sha256 text NOT NULL,
    started_by      text NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at     timestamptz
);
CREATE INDEX IF NOT EXISTS releases_app ON deployctl.releases (app, id DESC);
-- At most one unfinished release per application: the journal half of the lock.
-- `aborted`: users are back on blue, green and the capture are kept until `deployctl rollback`.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_indexes WHERE schemaname = 'deployctl'
               AND indexname = 'releases_one_open_per_app' AND indexdef NOT LIKE '%aborted%') THEN
        ALTER TABLE deployctl.releases DROP CONSTRAINT releases_status_check;
        ALTER TABLE deployctl.releases ADD CONSTRAINT releases_status_check
            CHECK (status IN ('running', 'rolling_back', 'released', 'rolled_back',
                              'rollback_failed', 'refused', 'aborted'));
        DROP INDEX deployctl.releases_one_open_per_app;
    END IF;
END $$;
CREATE UNIQUE INDEX IF NOT EXISTS releases_one_open_per_app ON deployctl.releases (app)
    WHERE status IN ('running', 'rolling_back', 'rollback_failed', 'aborted');
-- What ended a release that did not go through (the report's decision): a gate `breach`, no
-- conclusive reading (`inconclusive`), an `operator`, or a step that failed (`step_failed`).
ALTER TABLE deployctl.releases ADD COLUMN IF NOT EXISTS ended_by text;

CREATE TABLE IF NOT EXISTS deployctl.events (
    id          bigserial PRIMARY KEY,
    release_id  bigint NOT NULL REFERENCES deployctl.releases (id) ON DELETE CASCADE,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    step        text NOT NULL,
    phase       text NOT NULL CHECK (phase IN ('started', 'done', 'failed', 'info')),
    detail      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_release ON deployctl.events (release_id, id);

CREATE TABLE IF NOT EXISTS deployctl.snapshots (
    release_id  bigint PRIMARY KEY REFERENCES deployctl.releases (id) ON DELETE CASCADE,
    path        text NOT NULL,
    manifest    jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Who holds an application's release lock (the lock itself is an advisory lock held by the
-- running process's session, so a killed process never keeps it).
CREATE TABLE IF NOT EXISTS deployctl.locks (
    app         text PRIMARY KEY,
    release_id  bigint REFERENCES deployctl.releases (id) ON DELETE SET NULL,
    holder      text NOT NULL,
    version     text NOT NULL,
    since       timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- A deliberate freeze of an application (`deployctl lock acquire -m WHY`): no release of it
-- starts until `deployctl lock release`. Who and why are shown to whoever is refused.
CREATE TABLE IF NOT EXISTS deployctl.freezes (
    app         text PRIMARY KEY,
    message     text NOT NULL,
    holder      text NOT NULL,
    since       timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The version each application runs now, and the release that put it there.
CREATE TABLE IF NOT EXISTS deployctl.apps (
    app         text PRIMARY KEY,
    live_version text NOT NULL,
    release_id  bigint REFERENCES deployctl.releases (id) ON DELETE SET NULL,
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Change capture of a release: where it started, how far it was drained, whether it is whole.
CREATE TABLE IF NOT EXISTS deployctl.captures (
    release_id      bigint PRIMARY KEY REFERENCES deployctl.releases (id) ON DELETE CASCADE,
    mode            text NOT NULL CHECK (mode IN ('logical', 'trigger')),
    slot            text,
    publication     text,
    snapshot        text,            -- pg_current_snapshot() of the exported snapshot
    drained_to      bigint NOT NULL DEFAULT 0,  -- logical: LSN; trigger: last capture row id
    status          text NOT NULL DEFAULT 'active'
                    CHECK (status IN ('active', 'stopped', 'incomplete')),
    problem         text,
    in_snapshot     bigint NOT NULL DEFAULT 0,  -- transactions already in the dump, skipped
    migrations      bigint NOT NULL DEFAULT 0,  -- migration transactions, excluded
    own_writes      bigint NOT NULL DEFAULT 0,  -- deployctl's replays (replication origin)
    started_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    stopped_at      timestamptz
);

-- The schema's history while the capture ran: the Alembic revision at its start (`base`), then
-- one [position, revision] per migration transaction, at the position (as in `changes.pos`)
-- where it wrote alembic_version. A change belongs to the revision in force at its position:
-- that, with the columns it carries, is its shape, which replay maps from.
ALTER TABLE deployctl.captures ADD COLUMN IF NOT EXISTS base_revision text;
ALTER TABLE deployctl.captures ADD COLUMN IF NOT EXISTS revisions jsonb NOT NULL DEFAULT '[]';

-- The delta: every change users made during the release, in commit order (pos, seq).
-- `new`, `old` and `key` are what jsonb_populate_record() takes: strings in PostgreSQL's text
-- form, JSON values for json/jsonb columns. TOASTed values that did not change are listed in
-- `unchanged` and absent from `new`.
CREATE TABLE IF NOT EXISTS deployctl.changes (
    release_id   bigint NOT NULL REFERENCES deployctl.releases (id) ON DELETE CASCADE,
    pos          bigint NOT NULL,   -- logical: commit LSN; trigger: capture row id
    seq          integer NOT NULL,  -- order inside the transaction
    xid          bigint NOT NULL,
    committed_at timestamptz,
    schema_name  text NOT NULL,
    table_name   text NOT NULL,
    op           text NOT NULL CHECK (op IN ('insert', 'update', 'delete', 'truncate')),
    key          jsonb,
    new          jsonb,
    old          jsonb,
    unchanged    text[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (release_id, pos, seq)
);
-- The order changes reached the journal (not their commit order): a side-by-side restore
-- replays, during the pause, exactly what was stored after its first replay. Trigger capture
-- numbers a change when it is written, so a late commit can carry a lower position.
ALTER TABLE deployctl.changes ADD COLUMN IF NOT EXISTS stored bigserial;

-- The shapes changes were captured in (logical capture: the Relation in force): the table's
-- columns, and which of them hold JSON (kept as text in `new` and `old`).
CREATE TABLE IF NOT EXISTS deployctl.shapes (
    id           bigserial PRIMARY KEY,
    release_id   bigint NOT NULL REFERENCES deployctl.releases (id) ON DELETE CASCADE,
    schema_name  text NOT NULL,
    table_name   text NOT NULL,
    columns      text[] NOT NULL,
    json_columns text[] NOT NULL,
    UNIQUE (release_id, schema_name, table_name, columns, json_columns)
);
ALTER TABLE deployctl.changes ADD COLUMN IF NOT EXISTS shape bigint;

-- Requests from other terminals to a running release (`deployctl promote`, `pause`, …): the
-- release's process reads them between gate readings.
CREATE TABLE IF NOT EXISTS deployctl.controls (
    id           bigserial PRIMARY KEY,
    release_id   bigint NOT NULL REFERENCES deployctl.releases (id) ON DELETE CASCADE,
    command      text NOT NULL CHECK (command IN ('promote', 'pause', 'resume', 'abort', 'rollback')),
    requested_by text NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    handled_at   timestamptz
);
CREATE INDEX IF NOT EXISTS controls_pending ON deployctl.controls (release_id) WHERE handled_at IS NULL;

-- Logical capture stores what it reads from the slot as pgoutput's raw messages, one row per
-- batch of whole transactions (`end_lsn`: the last one's end; `messages`: each message after
-- its length as 4 bytes big-endian, compressed with zlib), before the slot lets go of them;
-- decoding a batch into `changes` deletes it in the same transaction. `collected_to`: the
-- commit LSN of the last transaction stored, so that a batch resent after a crash is not
-- stored twice. A capture is `discarded` when the release finalized under lazy capture: its
-- delta was never needed, and never decoded.
CREATE TABLE IF NOT EXISTS deployctl.wal_batches (
    release_id   bigint NOT NULL REFERENCES deployctl.releases (id) ON DELETE CASCADE,
    end_lsn      bigint NOT NULL,
    start_lsn    bigint NOT NULL,
    messages     bytea NOT NULL,
    PRIMARY KEY (release_id, end_lsn)
);
ALTER TABLE deployctl.captures ADD COLUMN IF NOT EXISTS collected_to bigint NOT NULL DEFAULT 0;
ALTER TABLE deployctl.captures DROP CONSTRAINT IF EXISTS captures_status_check;
ALTER TABLE deployctl.captures ADD CONSTRAINT captures_status_check
    CHECK (status IN ('active', 'stopped', 'incomplete', 'discarded'));
-- Compressed already: the server does not try again.
ALTER TABLE deployctl.wal_batches ALTER COLUMN messages SET STORAGE EXTERNAL;
