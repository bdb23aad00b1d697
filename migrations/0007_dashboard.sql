-- The dashboard lists an owner's batches in one status (`GET /v1/batches?status=`),
-- newest first: one index range per (owner, status) instead of a walk over
-- all of the owner's batches.
CREATE INDEX batches_owner_status_created ON batches (owner, status, created_at DESC, id DESC);
