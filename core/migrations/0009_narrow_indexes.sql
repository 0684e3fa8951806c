-- Fewer index entries to move per request (issue 12). Each state change of a request rewrote
-- its entry in every index that holds `state` (five of them, over every row), and an alert
-- notification changes state twice: most of the pages each one wrote to the log. Now the
-- indexes that hold the state hold only the rows their readers look for, so the lane's rows
-- stay out of the general workers' indexes and finished rows stay out of all but one.
DROP INDEX requests_by_state;
DROP INDEX requests_by_room;
DROP INDEX requests_by_lease;
DROP INDEX requests_general;
-- The general workers' lease, "when is the next item due" and expired leases: ready and
-- leased items outside the lanes. Leased ones are at most one per worker, so their lease
-- times need no index of their own; a lane's front is read from `requests_lane`. The
-- condition says `state = 'ready' OR state = 'leased'`, not IN: SQLite sees that a query's
-- `state = 'ready'` implies this form.
CREATE INDEX requests_general ON requests (state, available_at, id)
    WHERE lane IS NULL AND (state = 'ready' OR state = 'leased');
-- Unfinished work by front end, the queue gauges and the leases a dead process held.
CREATE INDEX requests_unfinished ON requests (state, frontend) WHERE state <> 'done';
-- What pruning deletes, and the dead list.
CREATE INDEX requests_done ON requests (updated_at) WHERE state = 'done';
CREATE INDEX requests_dead ON requests (updated_at, id) WHERE state = 'dead';
-- The outbox: a line's delivery moved its entry in `outbox_pending`, which no reader needed
-- (what is due is read from `outbox_ready`); pruning and the parked list read these instead.
DROP INDEX outbox_pending;
CREATE INDEX outbox_delivered ON outbox (delivered_at) WHERE delivered_at IS NOT NULL;
CREATE INDEX outbox_parked ON outbox (parked_at, id) WHERE parked_at IS NOT NULL;
