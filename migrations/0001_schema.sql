-- fusillade's schema. States are words checked here and mirrored by enums in
-- src/domain; every state-changing UPDATE repeats its `from` states in a guard.

CREATE TABLE files (
    id              uuid PRIMARY KEY,
    owner           text        NOT NULL DEFAULT '',
    filename        text        NOT NULL,
    purpose         text        NOT NULL CHECK (purpose IN ('batch', 'batch_output')),
    kind            text        NOT NULL CHECK (kind IN ('input', 'output', 'error')),
    batch_id        uuid,
    bytes           bigint      NOT NULL DEFAULT 0,
    template_count  bigint      NOT NULL DEFAULT 0,
    error_count     bigint      NOT NULL DEFAULT 0,
    -- The first refused lines (at most a configured number), in line order.
    errors          jsonb       NOT NULL DEFAULT '[]',
    -- The distinct `url`s of the valid lines, so batch creation checks the
    -- endpoint without scanning the templates.
    urls            text[]      NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz,
    deleted_at      timestamptz,
    CHECK ((kind = 'input') = (purpose = 'batch')),
    CHECK ((kind = 'input') = (batch_id IS NULL))
);
-- Listing newest first per owner, keyset-paginated on (created_at, id).
CREATE INDEX files_owner_created ON files (owner, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;

-- The original bytes of an input file, in parts of a few MiB, for download.
CREATE TABLE file_parts (
    file_id  uuid    NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    seq      integer NOT NULL,
    data     bytea   NOT NULL,
    PRIMARY KEY (file_id, seq)
);
-- JSONL compresses well but decompressing costs CPU on every download; store raw.
ALTER TABLE file_parts ALTER COLUMN data SET STORAGE EXTERNAL;

-- Tables filled in bulk (request_templates, requests, request_results) carry
-- no foreign keys: a foreign key is a trigger fired per row, and it more than
-- doubled the cost of COPY and of batch creation. Their references are made
-- by set-based statements that read the parent rows they point to.
CREATE TABLE request_templates (
    id              uuid PRIMARY KEY,
    file_id         uuid,
    line_number     bigint,
    custom_id       text,
    -- Upstream base URL for this template; '' routes by the config.
    endpoint        text   NOT NULL DEFAULT '',
    method          text   NOT NULL DEFAULT 'POST',
    -- The line's `url`, e.g. /v1/chat/completions.
    path            text   NOT NULL,
    -- The body exactly as written in the line.
    body            text   NOT NULL,
    model           text   NOT NULL,
    api_key         text   NOT NULL DEFAULT '',
    body_byte_size  bigint NOT NULL DEFAULT 0
);
CREATE INDEX request_templates_file_line ON request_templates (file_id, line_number);

CREATE TABLE batches (
    id                 uuid PRIMARY KEY,
    owner              text        NOT NULL DEFAULT '',
    input_file_id      uuid        NOT NULL REFERENCES files (id),
    endpoint           text        NOT NULL,
    completion_window  text        NOT NULL,
    metadata           jsonb,
    status             text        NOT NULL CHECK (status IN (
        'validating', 'failed', 'in_progress', 'finalizing',
        'completed', 'expired', 'cancelling', 'cancelled')),
    errors             jsonb,
    output_file_id     uuid REFERENCES files (id),
    error_file_id      uuid REFERENCES files (id),
    total              bigint      NOT NULL DEFAULT 0,
    -- Requests ended in each terminal state, kept by every statement that ends
    -- (or, for a user retry, reopens) requests, so a batch's counts cost O(1)
    -- instead of a scan of its requests. Pending and in-progress counts come
    -- from the (batch_id, state) index over the few requests in flight.
    n_completed        bigint      NOT NULL DEFAULT 0,
    n_failed           bigint      NOT NULL DEFAULT 0,
    n_canceled         bigint      NOT NULL DEFAULT 0,
    -- Token usage summed from the answers, added as results are written.
    input_tokens       bigint      NOT NULL DEFAULT 0,
    cached_tokens      bigint      NOT NULL DEFAULT 0,
    output_tokens      bigint      NOT NULL DEFAULT 0,
    reasoning_tokens   bigint      NOT NULL DEFAULT 0,
    total_tokens       bigint      NOT NULL DEFAULT 0,
    idempotency_key    text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    in_progress_at     timestamptz,
    expires_at         timestamptz NOT NULL,
    finalizing_at      timestamptz,
    completed_at       timestamptz,
    failed_at          timestamptz,
    expired_at         timestamptz,
    cancelling_at      timestamptz,
    cancelled_at       timestamptz,
    -- Each status carries the timestamp that says when it was reached.
    CHECK (status <> 'failed'      OR (failed_at IS NOT NULL AND errors IS NOT NULL)),
    CHECK (status <> 'in_progress' OR in_progress_at IS NOT NULL),
    CHECK (status <> 'finalizing'  OR finalizing_at IS NOT NULL),
    CHECK (status <> 'completed'   OR completed_at IS NOT NULL),
    CHECK (status <> 'expired'     OR expired_at IS NOT NULL),
    CHECK (status <> 'cancelling'  OR cancelling_at IS NOT NULL),
    CHECK (status <> 'cancelled'   OR (cancelling_at IS NOT NULL AND cancelled_at IS NOT NULL))
);
CREATE INDEX batches_owner_created ON batches (owner, created_at DESC, id DESC);
-- The finalizer's scan: only batches that are still live.
CREATE INDEX batches_live ON batches (expires_at)
    WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling');
CREATE UNIQUE INDEX batches_idempotency ON batches (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
ALTER TABLE files ADD FOREIGN KEY (batch_id) REFERENCES batches (id) ON DELETE CASCADE;

CREATE TABLE daemons (
    id              uuid PRIMARY KEY,
    hostname        text        NOT NULL,
    pid             integer     NOT NULL,
    version         text        NOT NULL,
    config          jsonb       NOT NULL DEFAULT '{}',
    status          text        NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'stopped', 'dead')),
    started_at      timestamptz NOT NULL DEFAULT now(),
    last_heartbeat  timestamptz NOT NULL DEFAULT now(),
    stopped_at      timestamptz,
    requests_done   bigint      NOT NULL DEFAULT 0,
    requests_failed bigint      NOT NULL DEFAULT 0,
    in_flight       integer     NOT NULL DEFAULT 0,
    CHECK ((status = 'running') = (stopped_at IS NULL))
);

CREATE TABLE requests (
    id           uuid PRIMARY KEY,
    batch_id     uuid,
    template_id  uuid        NOT NULL,
    model        text        NOT NULL,
    custom_id    text,
    state        text        NOT NULL DEFAULT 'pending' CHECK (state IN (
        'pending', 'claimed', 'processing', 'completed', 'failed', 'canceled')),
    -- Bumped by every claim; every later write of that claim is guarded by it,
    -- so a stale worker cannot overwrite a newer attempt.
    attempt      integer     NOT NULL DEFAULT 0,
    -- Retries made (attempt counts claims, which rescues and releases also bump).
    retries      integer     NOT NULL DEFAULT 0,
    not_before   timestamptz NOT NULL DEFAULT now(),
    deadline     timestamptz NOT NULL DEFAULT 'infinity',
    daemon_id    uuid,
    created_at   timestamptz NOT NULL DEFAULT now(),
    claimed_at   timestamptz,
    started_at   timestamptz,
    finished_at  timestamptz,
    -- The fields each state requires.
    CHECK (state NOT IN ('claimed', 'processing') OR (daemon_id IS NOT NULL AND claimed_at IS NOT NULL)),
    CHECK (state <> 'processing' OR started_at IS NOT NULL),
    CHECK ((state IN ('completed', 'failed', 'canceled')) = (finished_at IS NOT NULL)),
    CHECK (state IN ('claimed', 'processing') OR daemon_id IS NULL)
);
-- The claim path: pending work by model, earliest deadline first, then in id
-- (line) order.
CREATE INDEX requests_claim ON requests (model, deadline, id)
    WHERE state = 'pending';
-- Per-batch counts by state, and per-batch scans.
CREATE INDEX requests_batch_state ON requests (batch_id, state);
-- In flight: counted per model by the claim (global concurrency), and
-- scanned by daemon for rescue. Small: at most the sum of all limits.
CREATE INDEX requests_in_flight ON requests (model, daemon_id)
    WHERE state IN ('claimed', 'processing');

-- A request's final result, appended once when it reaches a terminal state.
CREATE TABLE request_results (
    request_id         uuid PRIMARY KEY,
    batch_id           uuid,
    custom_id          text,
    ok                 boolean     NOT NULL,
    status_code        integer,
    upstream_request_id text,
    body               text,
    error              jsonb,
    finished_at        timestamptz NOT NULL DEFAULT now(),
    CHECK (ok = (error IS NULL))
);
-- Output and error downloads read one batch's results in request order.
CREATE INDEX request_results_batch ON request_results (batch_id, ok, request_id);

CREATE TABLE response_steps (
    id                uuid PRIMARY KEY,
    request_id        uuid        NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    prev_step_id      uuid REFERENCES response_steps (id),
    parent_step_id    uuid REFERENCES response_steps (id),
    step_kind         text        NOT NULL CHECK (step_kind IN ('model_call', 'tool_call')),
    step_sequence     bigint      NOT NULL,
    state             text        NOT NULL DEFAULT 'pending' CHECK (state IN (
        'pending', 'processing', 'completed', 'failed', 'canceled')),
    request_payload   jsonb       NOT NULL,
    response_payload  jsonb,
    error             jsonb,
    retry_attempt     integer     NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    completed_at      timestamptz,
    failed_at         timestamptz,
    canceled_at       timestamptz,
    CHECK (state <> 'processing' OR started_at IS NOT NULL),
    CHECK (state <> 'completed'  OR (completed_at IS NOT NULL AND response_payload IS NOT NULL)),
    CHECK (state <> 'failed'     OR (failed_at IS NOT NULL AND error IS NOT NULL)),
    CHECK (state <> 'canceled'   OR canceled_at IS NOT NULL)
);
-- One successor per (request, scope, predecessor, kind): re-running a
-- transition after a crash cannot fork the chain. NULL scopes must collide
-- too, hence the COALESCE to the nil uuid.
CREATE UNIQUE INDEX response_steps_successor ON response_steps (
    request_id,
    COALESCE(parent_step_id, '00000000-0000-0000-0000-000000000000'),
    COALESCE(prev_step_id, '00000000-0000-0000-0000-000000000000'),
    step_kind
);
CREATE INDEX response_steps_request_seq ON response_steps (request_id, step_sequence);
