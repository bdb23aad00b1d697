-- Lines answered without a call of their own, counted when their results
-- are recorded (see migrations/0011_coalesced.sql for PostgreSQL).
ALTER TABLE batches ADD COLUMN n_coalesced_identical INTEGER NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN n_coalesced_packed INTEGER NOT NULL DEFAULT 0;
