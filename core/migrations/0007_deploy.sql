-- Deploying MR images: what moved where (history and rollback), confirmations waiting for
-- `confirm <code>`, and locks on environments.

-- One row per request that points (or pointed) an environment at a digest. Written as
-- `started` before the registry is asked to move the tag (or the deploy pipeline is created), so
-- a crash or redelivery finishes the same deployment (same from and to) and records it once.
CREATE TABLE deployments (
    id          TEXT PRIMARY KEY,           -- the request that carried it out
    service     TEXT NOT NULL,
    environment TEXT NOT NULL,
    kind        TEXT NOT NULL,              -- deploy | rollback
    source      TEXT NOT NULL,              -- what was asked for: !12, a tag, a digest, previous
    from_digest TEXT,                       -- what the environment pointed at (NULL: nothing)
    to_digest   TEXT NOT NULL,
    identity    TEXT NOT NULL,
    person      TEXT,
    state       TEXT NOT NULL,              -- started | done | failed
    detail      TEXT,                       -- why it failed
    pipeline_project TEXT,                  -- a pipeline environment: the deploy pipeline run
    pipeline_id BIGINT,
    pipeline_url TEXT,
    created_at  BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX deployments_by_environment ON deployments (service, environment, created_at);

-- A dangerous command asked for and not yet confirmed: its plan, the code, whose it is.
CREATE TABLE deploy_confirmations (
    code        TEXT PRIMARY KEY,
    request_id  TEXT NOT NULL UNIQUE,       -- the deploy or rollback that asked
    identity    TEXT NOT NULL,
    person      TEXT,
    plan        TEXT NOT NULL,              -- JSON: what confirming carries out
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_by     TEXT                        -- the confirm request that carried it out
);

-- A locked environment: only who locked it deploys or rolls back there.
CREATE TABLE deploy_locks (
    environment TEXT PRIMARY KEY,           -- the environment's name in lower case
    identity    TEXT NOT NULL,
    person      TEXT,
    reason      TEXT,
    locked_at   BIGINT NOT NULL
);
