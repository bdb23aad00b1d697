-- Fair share between owners (see src/domain/schedule.rs): the claim takes
-- each owner's share of a model as one range of the claim index, so the
-- index leads with (model, owner), then the order within an owner:
-- earliest deadline, then prefix group, then line.
DROP INDEX requests_claim;
CREATE INDEX requests_claim ON requests (model, owner, deadline, prefix_key, id)
    WHERE state = 'pending' AND NOT private;

-- A route (model) paused by an upstream's `Retry-After` until `until`
-- (microseconds since the epoch, as every time here).
CREATE TABLE route_pauses (
    model TEXT    PRIMARY KEY,
    until INTEGER NOT NULL
);
