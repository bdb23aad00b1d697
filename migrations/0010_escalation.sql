-- Escalation to a faster model (see src/domain/escalation.rs): the model an
-- attempt was sent as, when its model has an escalation rule (NULL: sent as
-- `model`, or not yet sent). Written by the daemon for each attempt it
-- decides, guarded by the attempt; a request's record keeps the last one.
ALTER TABLE requests ADD COLUMN routed_model text;
ALTER TABLE request_results ADD COLUMN routed_model text;
