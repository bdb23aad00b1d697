-- Lines answered without a call of their own (see src/daemon/coalesce.rs
-- and src/daemon/pack.rs), counted by the statement that records their
-- results, as the other batch counters are: completed lines that took an
-- identical twin's answer, and completed lines answered by a packed
-- embeddings call. Batches made before this count none.
ALTER TABLE batches
    ADD COLUMN n_coalesced_identical bigint NOT NULL DEFAULT 0,
    ADD COLUMN n_coalesced_packed bigint NOT NULL DEFAULT 0;
