-- Canary pipelines, messages edited in place, and pipeline events from webhooks.

-- A request that waits for another one (the commands of one comment run in order).
ALTER TABLE requests ADD COLUMN after_id TEXT;

-- A message with a slot replaces the earlier messages of the same slot where the front end can
-- edit (a GitLab note is edited in place); elsewhere it is just the next message.
ALTER TABLE outbox ADD COLUMN slot TEXT;
-- Set when a front end begins a create that is not idempotent (a GitLab note): a redelivery then
-- looks for the message's marker before creating again.
ALTER TABLE outbox ADD COLUMN send_started_at BIGINT;

-- What a slot was delivered as (the GitLab note id), so later messages edit it.
CREATE TABLE outbox_slots (
    slot        TEXT PRIMARY KEY,
    frontend    TEXT NOT NULL,
    room        TEXT NOT NULL,
    external_id TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

-- One canary run per `test` / `canary` request: the MR it tests and where its summary goes.
CREATE TABLE canary_runs (
    id          TEXT PRIMARY KEY,           -- the request id of the command
    project     TEXT NOT NULL,              -- the MR's project path
    mr_iid      BIGINT NOT NULL,
    mr_url      TEXT NOT NULL,
    head_sha    TEXT NOT NULL,              -- the commit tested
    overrides   TEXT NOT NULL,              -- JSON [[key, value]]: the user's k=v, kept for retest
    outdated_by TEXT,                       -- a newer head pushed since, if any
    frontend    TEXT NOT NULL,
    room        TEXT NOT NULL,
    addressee   TEXT,
    identity    TEXT NOT NULL,
    state       TEXT NOT NULL,              -- running | done
    revision    BIGINT NOT NULL DEFAULT 0,  -- bumped on every change; names the summary's versions
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX canary_runs_by_mr ON canary_runs (project, mr_iid, created_at);

-- The pipelines of a run, one per reference; a retest replaces a row's pipeline (attempt + 1).
CREATE TABLE canary_pipelines (
    run_id          TEXT NOT NULL,
    idx             BIGINT NOT NULL,
    tree            TEXT NOT NULL,
    ref_project     TEXT NOT NULL,
    ref_pipeline_id BIGINT,                 -- NULL when no reference could be found
    ref_web_url     TEXT,
    pipeline_id     BIGINT,                 -- NULL when it could not be started (see error)
    web_url         TEXT,
    status          TEXT NOT NULL,          -- GitLab's status, or "error"
    error           TEXT,                   -- why it could not be started
    duration_secs   BIGINT,
    failed_jobs     TEXT,                   -- JSON [{name, web_url}] once finished
    attempt         BIGINT NOT NULL DEFAULT 1,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (run_id, idx)
);
CREATE INDEX canary_pipelines_by_pipeline ON canary_pipelines (pipeline_id);

-- A watch that feeds a canary run's summary instead of reporting on its own.
ALTER TABLE watches ADD COLUMN canary_run TEXT;
-- When a Pipeline Hook last told us about the pipeline: polling then only backs it up.
ALTER TABLE watches ADD COLUMN hook_at BIGINT;
CREATE INDEX watches_by_pipeline ON watches (pipeline_id, state);
