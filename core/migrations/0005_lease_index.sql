-- Expired leases are looked up on their own (the lease query reads ready items in index order
-- and expired leases through this index, instead of sorting every row of the OR of both).
CREATE INDEX requests_by_lease ON requests (state, lease_until);
-- A lane's oldest unfinished item, without walking its done history.
CREATE INDEX requests_lane ON requests (kind, created_at, id) WHERE state IN ('ready', 'leased');
