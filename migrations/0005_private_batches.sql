-- A private batch is run only by the daemon scoped to it (`fusillade run`,
-- with its own routes and keys): other daemons on the same database never
-- claim its requests, and it never takes theirs. Its requests carry the
-- mark so that the claim's index leaves them out; a scoped daemon reads its
-- batch's own range of ids instead.
ALTER TABLE batches ADD COLUMN private boolean NOT NULL DEFAULT false;
ALTER TABLE requests ADD COLUMN private boolean NOT NULL DEFAULT false;
DROP INDEX requests_claim;
CREATE INDEX requests_claim ON requests (model, deadline, id)
    WHERE state = 'pending' AND NOT private;
