-- fusillade's embedded schema. Ids are 16-byte blobs (their bytes sort as
-- PostgreSQL's uuids do, so a batch's requests are one range of the primary
-- key); times are integers, unix microseconds, bound by the store (never
-- SQLite's clock); a deadline of "never" is the largest integer. States are
-- words checked here and mirrored by enums in src/domain.

CREATE TABLE files (
    id              BLOB    PRIMARY KEY,
    owner           TEXT    NOT NULL DEFAULT '',
    filename        TEXT    NOT NULL,
    purpose         TEXT    NOT NULL CHECK (purpose IN ('batch', 'batch_output')),
    kind            TEXT    NOT NULL CHECK (kind IN ('input', 'output', 'error')),
    batch_id        BLOB,
    bytes           INTEGER NOT NULL DEFAULT 0,
    template_count  INTEGER NOT NULL DEFAULT 0,
    error_count     INTEGER NOT NULL DEFAULT 0,
    -- JSON: the first refused lines, in line order.
    errors          TEXT    NOT NULL DEFAULT '[]',
    -- JSON: the distinct `url`s of the valid lines.
    urls            TEXT    NOT NULL DEFAULT '[]',
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER,
    deleted_at      INTEGER,
    CHECK ((kind = 'input') = (purpose = 'batch')),
    CHECK ((kind = 'input') = (batch_id IS NULL))
);
CREATE INDEX files_owner_created ON files (owner, created_at, id) WHERE deleted_at IS NULL;

-- The original bytes of an input file, in parts of about a MiB, for download.
-- Written before the file's row, which makes them visible.
CREATE TABLE file_parts (
    file_id  BLOB    NOT NULL,
    seq      INTEGER NOT NULL,
    data     BLOB    NOT NULL,
    PRIMARY KEY (file_id, seq)
);

CREATE TABLE request_templates (
    id              BLOB    PRIMARY KEY,
    file_id         BLOB    NOT NULL,
    line_number     INTEGER NOT NULL,
    custom_id       TEXT,
    endpoint        TEXT    NOT NULL DEFAULT '',
    path            TEXT    NOT NULL,
    body            TEXT    NOT NULL,
    model           TEXT    NOT NULL,
    body_byte_size  INTEGER NOT NULL DEFAULT 0,
    prefix_key      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX request_templates_file_line ON request_templates (file_id, line_number);

CREATE TABLE batches (
    id                 BLOB    PRIMARY KEY,
    owner              TEXT    NOT NULL DEFAULT '',
    input_file_id      BLOB    NOT NULL REFERENCES files (id),
    endpoint           TEXT    NOT NULL,
    completion_window  TEXT    NOT NULL,
    metadata           TEXT,
    status             TEXT    NOT NULL CHECK (status IN (
        'validating', 'failed', 'in_progress', 'finalizing',
        'completed', 'expired', 'cancelling', 'cancelled')),
    errors             TEXT,
    output_file_id     BLOB,
    error_file_id      BLOB,
    total              INTEGER NOT NULL DEFAULT 0,
    n_completed        INTEGER NOT NULL DEFAULT 0,
    n_failed           INTEGER NOT NULL DEFAULT 0,
    n_canceled         INTEGER NOT NULL DEFAULT 0,
    input_tokens       INTEGER NOT NULL DEFAULT 0,
    cached_tokens      INTEGER NOT NULL DEFAULT 0,
    output_tokens      INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens   INTEGER NOT NULL DEFAULT 0,
    total_tokens       INTEGER NOT NULL DEFAULT 0,
    idempotency_key    TEXT,
    private            INTEGER NOT NULL DEFAULT 0,
    created_at         INTEGER NOT NULL,
    in_progress_at     INTEGER,
    expires_at         INTEGER NOT NULL,
    finalizing_at      INTEGER,
    completed_at       INTEGER,
    failed_at          INTEGER,
    expired_at         INTEGER,
    cancelling_at      INTEGER,
    cancelled_at       INTEGER,
    CHECK (status <> 'failed'      OR (failed_at IS NOT NULL AND errors IS NOT NULL)),
    CHECK (status <> 'in_progress' OR in_progress_at IS NOT NULL),
    CHECK (status <> 'completed'   OR completed_at IS NOT NULL),
    CHECK (status <> 'expired'     OR expired_at IS NOT NULL),
    CHECK (status <> 'cancelling'  OR cancelling_at IS NOT NULL),
    CHECK (status <> 'cancelled'   OR (cancelling_at IS NOT NULL AND cancelled_at IS NOT NULL))
);
CREATE INDEX batches_owner_created ON batches (owner, created_at, id);
CREATE INDEX batches_owner_status_created ON batches (owner, status, created_at, id);
CREATE INDEX batches_live ON batches (expires_at)
    WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling');
CREATE UNIQUE INDEX batches_idempotency ON batches (owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE daemons (
    id              BLOB    PRIMARY KEY,
    hostname        TEXT    NOT NULL,
    pid             INTEGER NOT NULL,
    version         TEXT    NOT NULL,
    config          TEXT    NOT NULL DEFAULT '{}',
    status          TEXT    NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'stopped', 'dead')),
    started_at      INTEGER NOT NULL,
    last_heartbeat  INTEGER NOT NULL,
    stopped_at      INTEGER,
    requests_done   INTEGER NOT NULL DEFAULT 0,
    requests_failed INTEGER NOT NULL DEFAULT 0,
    in_flight       INTEGER NOT NULL DEFAULT 0,
    CHECK ((status = 'running') = (stopped_at IS NULL))
);

-- Live work only: a request that ends is deleted here and its record moves
-- into request_results in the same transaction. Request ids are their
-- batch's id with the line number in the low six bytes.
CREATE TABLE requests (
    id           BLOB    PRIMARY KEY,
    batch_id     BLOB,
    template_id  BLOB    NOT NULL,
    model        TEXT    NOT NULL,
    custom_id    TEXT,
    state        TEXT    NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'claimed', 'processing')),
    attempt      INTEGER NOT NULL DEFAULT 0,
    retries      INTEGER NOT NULL DEFAULT 0,
    not_before   INTEGER NOT NULL,
    deadline     INTEGER NOT NULL,
    daemon_id    BLOB,
    created_at   INTEGER NOT NULL,
    claimed_at   INTEGER,
    started_at   INTEGER,
    private      INTEGER NOT NULL DEFAULT 0,
    prefix_key   INTEGER NOT NULL DEFAULT 0,
    -- Its batch's owner, for sharing a model's slots between owners.
    owner        TEXT    NOT NULL DEFAULT '',
    CHECK (state NOT IN ('claimed', 'processing') OR (daemon_id IS NOT NULL AND claimed_at IS NOT NULL)),
    CHECK (state <> 'processing' OR started_at IS NOT NULL),
    CHECK (state IN ('claimed', 'processing') OR daemon_id IS NULL)
) WITHOUT ROWID;
-- Shared work: earliest deadline first, then prefix group, then line order.
CREATE INDEX requests_claim ON requests (model, deadline, prefix_key, id)
    WHERE state = 'pending' AND NOT private;
-- One batch's pending work (a daemon scoped to it), by model and prefix group.
CREATE INDEX requests_pending_batch ON requests (batch_id, model, prefix_key, id)
    WHERE state = 'pending';
CREATE INDEX requests_in_flight ON requests (model, daemon_id)
    WHERE state IN ('claimed', 'processing');

CREATE TABLE request_results (
    request_id          BLOB    PRIMARY KEY,
    batch_id            BLOB,
    template_id         BLOB,
    model               TEXT    NOT NULL,
    custom_id           TEXT,
    state               TEXT    NOT NULL CHECK (state IN ('completed', 'failed', 'canceled')),
    ok                  INTEGER NOT NULL,
    attempt             INTEGER NOT NULL DEFAULT 0,
    retries             INTEGER NOT NULL DEFAULT 0,
    not_before          INTEGER NOT NULL,
    created_at          INTEGER NOT NULL,
    claimed_at          INTEGER,
    started_at          INTEGER,
    finished_at         INTEGER NOT NULL,
    status_code         INTEGER,
    upstream_request_id TEXT,
    -- The upstream's body byte for byte.
    body                BLOB,
    -- JSON.
    error               TEXT,
    CHECK (ok = (error IS NULL)),
    CHECK (ok = (state = 'completed'))
);
CREATE INDEX request_results_not_ok ON request_results (request_id) WHERE NOT ok;

CREATE TABLE response_steps (
    id                BLOB    PRIMARY KEY,
    request_id        BLOB    NOT NULL,
    prev_step_id      BLOB REFERENCES response_steps (id),
    parent_step_id    BLOB REFERENCES response_steps (id),
    step_kind         TEXT    NOT NULL CHECK (step_kind IN ('model_call', 'tool_call')),
    step_sequence     INTEGER NOT NULL,
    state             TEXT    NOT NULL DEFAULT 'pending' CHECK (state IN (
        'pending', 'processing', 'completed', 'failed', 'canceled')),
    request_payload   TEXT    NOT NULL,
    response_payload  TEXT,
    error             TEXT,
    retry_attempt     INTEGER NOT NULL DEFAULT 0,
    created_at        INTEGER NOT NULL,
    started_at        INTEGER,
    completed_at      INTEGER,
    failed_at         INTEGER,
    canceled_at       INTEGER,
    CHECK (state <> 'processing' OR started_at IS NOT NULL),
    CHECK (state <> 'completed'  OR (completed_at IS NOT NULL AND response_payload IS NOT NULL)),
    CHECK (state <> 'failed'     OR (failed_at IS NOT NULL AND error IS NOT NULL)),
    CHECK (state <> 'canceled'   OR canceled_at IS NOT NULL)
);
CREATE UNIQUE INDEX response_steps_successor ON response_steps (
    request_id,
    COALESCE(parent_step_id, x'00000000000000000000000000000000'),
    COALESCE(prev_step_id, x'00000000000000000000000000000000'),
    step_kind
);
CREATE INDEX response_steps_request_seq ON response_steps (request_id, step_sequence);

CREATE TABLE model_slots (
    model      TEXT    NOT NULL,
    daemon_id  BLOB    NOT NULL,
    held       INTEGER NOT NULL CHECK (held >= 0),
    PRIMARY KEY (model, daemon_id)
) WITHOUT ROWID;
