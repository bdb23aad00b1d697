-- Escalation to a faster model (see src/domain/escalation.rs): the model an
-- attempt was sent as, when its model has an escalation rule (NULL: sent as
-- `model`, or not yet sent). A request's record keeps the last one.
ALTER TABLE requests ADD COLUMN routed_model TEXT;
ALTER TABLE request_results ADD COLUMN routed_model TEXT;
