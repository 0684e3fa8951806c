-- One bad message must not stall a front end: each send is counted before it is tried, and a
-- message that a network keeps refusing (or after which its acknowledgement never comes) is
-- parked after a bounded number of attempts — kept, with the last reason, but no longer in
-- the way of the messages behind it.
ALTER TABLE outbox ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN parked_at BIGINT;
ALTER TABLE outbox ADD COLUMN last_error TEXT;
-- What a front end delivers next: undelivered, not parked, oldest first.
CREATE INDEX outbox_ready ON outbox (frontend, created_at, id)
    WHERE delivered_at IS NULL AND parked_at IS NULL;
