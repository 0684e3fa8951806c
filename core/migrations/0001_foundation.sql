-- shepherd's foundation schema. Portable SQL: the same file runs on SQLite and PostgreSQL.
-- Ids are UUIDv7 text (time-ordered), times are Unix milliseconds (BIGINT).

-- The durable work queue: a request is stored here before it is acknowledged.
CREATE TABLE requests (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,             -- what runs it, e.g. "command"
    frontend     TEXT NOT NULL,             -- where replies go: front end ...
    room         TEXT NOT NULL,             -- ... and room/thread/MR within it
    identity     TEXT NOT NULL,             -- who asked, e.g. console:alice
    payload      TEXT NOT NULL,             -- JSON
    dedup_key    TEXT UNIQUE,               -- e.g. a webhook delivery id; NULL when none
    state        TEXT NOT NULL,             -- ready | leased | done | dead
    attempts     BIGINT NOT NULL DEFAULT 0,
    available_at BIGINT NOT NULL,
    lease_owner  TEXT,
    lease_until  BIGINT,
    last_error   TEXT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX requests_by_state ON requests (state, available_at, id);
CREATE INDEX requests_by_room ON requests (frontend, state);

-- Side effects already performed for a request (idempotency records): a redelivered
-- request reads these before doing anything twice.
CREATE TABLE effects (
    request_id TEXT NOT NULL,
    name       TEXT NOT NULL,
    value      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (request_id, name)
);

-- Replies and notifications, delivered in order by the front end that owns the room.
CREATE TABLE outbox (
    id           TEXT PRIMARY KEY,
    frontend     TEXT NOT NULL,
    room         TEXT NOT NULL,
    body         TEXT NOT NULL,
    dedup_key    TEXT UNIQUE,               -- never the same message twice for one effect
    request_id   TEXT,
    created_at   BIGINT NOT NULL,
    delivered_at BIGINT
);
CREATE INDEX outbox_pending ON outbox (frontend, delivered_at, created_at, id);

-- Pipelines shepherd started (status/cancel apply to these) and their watches.
CREATE TABLE pipelines (
    project     TEXT NOT NULL,
    pipeline_id BIGINT NOT NULL,
    request_id  TEXT NOT NULL,
    identity    TEXT NOT NULL,
    web_url     TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (project, pipeline_id)
);

CREATE TABLE watches (
    id           TEXT PRIMARY KEY,
    request_id   TEXT NOT NULL,
    project      TEXT NOT NULL,
    pipeline_id  BIGINT NOT NULL,
    web_url      TEXT NOT NULL,
    frontend     TEXT NOT NULL,
    room         TEXT NOT NULL,
    state        TEXT NOT NULL,             -- watching | done
    last_status  TEXT,
    polls        BIGINT NOT NULL DEFAULT 0,
    next_poll_at BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    finished_at  BIGINT,
    UNIQUE (request_id, project, pipeline_id)
);
CREATE INDEX watches_due ON watches (state, next_poll_at);

-- Every command that changes something, and every refusal.
CREATE TABLE audit (
    id       TEXT PRIMARY KEY,
    at       BIGINT NOT NULL,
    identity TEXT NOT NULL,
    person   TEXT,
    frontend TEXT NOT NULL,
    room     TEXT NOT NULL,
    command  TEXT NOT NULL,
    text     TEXT NOT NULL,
    outcome  TEXT NOT NULL,                 -- accepted | refused | done | failed | would
    detail   TEXT
);
CREATE INDEX audit_by_time ON audit (at);
