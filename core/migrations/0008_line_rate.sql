-- Lanes apart from the general queue: the general workers read their next item from an index
-- that holds no lane items, so thousands of alert notifications waiting in their lane cost a
-- general lease nothing (before, each lease and each "when is the next item due" walked them).
ALTER TABLE requests ADD COLUMN lane TEXT;
UPDATE requests SET lane = kind WHERE kind = 'alert-notification' AND state IN ('ready', 'leased');
CREATE INDEX requests_general ON requests (available_at, id) WHERE state = 'ready' AND lane IS NULL;
