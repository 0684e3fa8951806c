-- Who to address in a room (an IRC nick in a channel): replies and reports to a request
-- are addressed to the person who asked. NULL where the room is private or it does not apply.
ALTER TABLE requests ADD COLUMN addressee TEXT;
ALTER TABLE outbox ADD COLUMN addressee TEXT;
ALTER TABLE watches ADD COLUMN addressee TEXT;
