-- `requests` holds live work only (pending, claimed, processing). A request
-- that ends is deleted from it and its whole record moves into
-- `request_results` in the same statement. The hot path then touches the
-- queue row twice (claim: update; end: delete) and appends one result row,
-- instead of updating a row that stays forever and grows every index; the
-- queue stays as small as the work still to do, so its indexes do too.
--
-- A batch's requests are found by their ids, which are the batch id with
-- the last six bytes replaced by the line number: one range of the primary
-- key per batch (see fusillade_batch_lo/hi), so no per-batch index is kept.

CREATE FUNCTION fusillade_batch_lo(batch uuid) RETURNS uuid
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN encode(overlay(uuid_send(batch) PLACING '\x000000000000'::bytea FROM 11), 'hex')::uuid;
CREATE FUNCTION fusillade_batch_hi(batch uuid) RETURNS uuid
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN encode(overlay(uuid_send(batch) PLACING '\xffffffffffff'::bytea FROM 11), 'hex')::uuid;

ALTER TABLE request_results
    ADD COLUMN state       text,
    ADD COLUMN template_id uuid,
    ADD COLUMN model       text,
    ADD COLUMN attempt     integer NOT NULL DEFAULT 0,
    ADD COLUMN retries     integer NOT NULL DEFAULT 0,
    ADD COLUMN not_before  timestamptz,
    ADD COLUMN created_at  timestamptz,
    ADD COLUMN claimed_at  timestamptz,
    ADD COLUMN started_at  timestamptz;

UPDATE request_results x
SET state = q.state, template_id = q.template_id, model = q.model, attempt = q.attempt,
    retries = q.retries, not_before = q.not_before, created_at = q.created_at,
    claimed_at = q.claimed_at, started_at = q.started_at
FROM requests q
WHERE q.id = x.request_id;
UPDATE request_results
SET state = CASE WHEN ok THEN 'completed' ELSE 'failed' END, model = '',
    not_before = finished_at, created_at = finished_at
WHERE state IS NULL;
-- Ended requests that somehow lack a result row keep their record here.
INSERT INTO request_results (request_id, batch_id, custom_id, ok, error, finished_at, state,
                             template_id, model, attempt, retries, not_before, created_at,
                             claimed_at, started_at)
SELECT q.id, q.batch_id, q.custom_id, q.state = 'completed',
       CASE WHEN q.state = 'completed' THEN NULL
            ELSE '{"code":"upstream_error","message":""}'::jsonb END,
       q.finished_at, q.state, q.template_id, q.model, q.attempt, q.retries, q.not_before,
       q.created_at, q.claimed_at, q.started_at
FROM requests q
WHERE q.state IN ('completed', 'failed', 'canceled')
  AND NOT EXISTS (SELECT 1 FROM request_results x WHERE x.request_id = q.id);
DELETE FROM requests WHERE state IN ('completed', 'failed', 'canceled');

ALTER TABLE request_results
    ALTER COLUMN state SET NOT NULL,
    ALTER COLUMN model SET NOT NULL,
    ALTER COLUMN not_before SET NOT NULL,
    ALTER COLUMN created_at SET NOT NULL,
    ADD CONSTRAINT request_results_state_check
        CHECK (state IN ('completed', 'failed', 'canceled')),
    ADD CONSTRAINT request_results_ok_check CHECK (ok = (state = 'completed'));

-- Output downloads read a batch's primary key range; error downloads and
-- user retries read the few failed ones through this small index.
DROP INDEX request_results_batch;
CREATE INDEX request_results_not_ok ON request_results (request_id) WHERE NOT ok;

-- Dropping finished_at drops the CHECK that tied it to the terminal states.
ALTER TABLE requests DROP COLUMN finished_at;
ALTER TABLE requests DROP CONSTRAINT requests_state_check;
ALTER TABLE requests ADD CONSTRAINT requests_state_check
    CHECK (state IN ('pending', 'claimed', 'processing'));
DROP INDEX requests_batch_state;

-- Steps outlive the queue row of their request (it is deleted when the
-- request ends); the store checks that the request exists when a step is
-- created.
ALTER TABLE response_steps DROP CONSTRAINT response_steps_request_id_fkey;

-- Upstream slots per model held by each daemon. A daemon makes at most as
-- many calls of a model at once as it holds slots, and the slots held by
-- running daemons never add up to more than the model's limit (checked under
-- the claim lock whenever a daemon takes more). Slots change when daemons
-- come, go or run out of work, not per request, so the claim no longer counts
-- requests in flight, and a daemon may claim requests ahead of its free
-- slots: a call that ends is replaced at once by one already claimed.
-- Only rows of running daemons count; no foreign key, so that a claim never
-- fails on a daemon row that was removed.
CREATE TABLE model_slots (
    model      text    NOT NULL,
    daemon_id  uuid    NOT NULL,
    held       integer NOT NULL CHECK (held >= 0),
    PRIMARY KEY (model, daemon_id)
);
