-- Fair share between owners (see src/domain/schedule.rs): each model's
-- slots are split between the owners with pending work, so the claim reads
-- pending work per (model, owner). Requests carry their batch's owner, and
-- the claim index leads with it so that each owner's work is one range,
-- walked in the order the coalescing work relies on within an owner:
-- earliest deadline, then prefix group, then line.
ALTER TABLE requests ADD COLUMN owner text NOT NULL DEFAULT '';
UPDATE requests q SET owner = b.owner
FROM batches b
WHERE b.id = q.batch_id AND b.owner <> '';

DROP INDEX requests_claim;
CREATE INDEX requests_claim ON requests (model, owner, deadline, prefix_key, id)
    WHERE state = 'pending' AND NOT private;

-- A route (model) paused by an upstream's `Retry-After`: every daemon stops
-- its calls of the model until `until`, not only the one that was told.
CREATE TABLE route_pauses (
    model  text        PRIMARY KEY,
    until  timestamptz NOT NULL
);
