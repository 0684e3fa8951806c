-- Lanes apart from the general queue: the general workers read their next item from an index
-- in which a lane's items sit apart (`lane` right after `state`), so thousands of alert
-- notifications waiting in their lane cost a general lease nothing (before, each lease and each
-- "when is the next item due" walked them).
ALTER TABLE requests ADD COLUMN lane TEXT;
UPDATE requests SET lane = kind WHERE kind = 'alert-notification' AND state IN ('ready', 'leased');
CREATE INDEX requests_general ON requests (state, lane, available_at, id);
