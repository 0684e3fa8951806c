-- The herder's actions and the failover switches (issue 13).

-- What the herder did or decided, one row per job and kind of action: `herder` in chat lists
-- the newest. The key makes a redelivered hook or a repeated retry record its action once.
CREATE TABLE herder_actions (
    key         TEXT PRIMARY KEY,           -- <action>:<project>:<job id>
    project     TEXT NOT NULL,
    job_id      BIGINT NOT NULL,
    job_name    TEXT NOT NULL,
    job_url     TEXT NOT NULL,
    matcher     TEXT NOT NULL,
    action      TEXT NOT NULL,              -- scheduled | retried | would-retry | given-up |
                                            -- reported | alerted | skipped | failed
    retry       INTEGER,                    -- which retry of the job (1 = the first)
    new_job_id  BIGINT,                     -- the job a retry made
    detail      TEXT,                       -- the matched line, or why it was skipped or failed
    created_at  BIGINT NOT NULL
);
CREATE INDEX herder_actions_recent ON herder_actions (created_at);

-- A switch that is on, or being turned on or off. No row: off. Written before the first
-- variable is touched, so a crash or a redelivery finishes the same change.
CREATE TABLE failover_switches (
    name        TEXT PRIMARY KEY,
    state       TEXT NOT NULL,              -- switching | on | restoring
    request_id  TEXT NOT NULL,              -- the failover or failback carrying it out
    identity    TEXT NOT NULL,
    person      TEXT,
    changed_at  BIGINT NOT NULL
);

-- What a switch's variables were before `failover` set them, restored by `failback`.
CREATE TABLE failover_saved (
    name        TEXT NOT NULL,
    key         TEXT NOT NULL,
    existed     INTEGER NOT NULL,           -- 0: the variable did not exist (failback deletes it)
    value       TEXT,
    PRIMARY KEY (name, key)
);
