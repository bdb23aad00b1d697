-- The request of input line `line` of `batch`: the batch id with the line
-- number in its low six bytes. Batch ids made since this migration have
-- those bytes zero, so the rest of a batch id (timestamp and random bits) is
-- its requests' prefix and the batches' primary key keeps prefixes unique
-- (see src/domain/ids.rs, which holds the same rule).
CREATE FUNCTION fusillade_request_id(batch uuid, line bigint) RETURNS uuid
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN encode(overlay(uuid_send(batch) PLACING substring(int8send(line) FROM 3) FROM 11),
                  'hex')::uuid;
