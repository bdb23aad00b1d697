-- Prefix grouping (see src/domain/prefix.rs): each template carries the key
-- of its prompt's leading part, computed at upload, and its requests copy
-- it. Claims take pending work in key order within a model and deadline, so
-- calls that share a prompt prefix reach the upstream close together, while
-- its prefix cache still holds it. Templates and requests stored before
-- this have key 0: one group, in line order, as before.
ALTER TABLE request_templates ADD COLUMN prefix_key bigint NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN prefix_key bigint NOT NULL DEFAULT 0;

-- Shared work: earliest deadline first (a tight-window batch still goes
-- before a 24 h one), then prefix group, then line order.
DROP INDEX requests_claim;
CREATE INDEX requests_claim ON requests (model, deadline, prefix_key, id)
    WHERE state = 'pending' AND NOT private;

-- A private batch (`fusillade run`) is claimed by its own daemon in prefix
-- group order within the batch.
CREATE INDEX requests_claim_private ON requests (batch_id, model, prefix_key, id)
    WHERE state = 'pending' AND private;
