-- Alert notifications already shown: Alertmanager repeats a group's notification (every
-- repeat_interval, or again after a lost answer); within the dedup window it is shown once.
CREATE TABLE alert_notices (
    key      TEXT PRIMARY KEY,              -- receiver, group key, status and the alerts' states
    shown_at BIGINT NOT NULL
);
