-- An upstream body is stored exactly as it arrived. Text that PostgreSQL
-- can hold (UTF-8 without NUL: nearly every answer) stays in `body`, so it
-- is readable in SQL and existing rows need no rewrite; a body that text
-- cannot hold (a NUL byte, bytes that are not UTF-8) goes to `body_bytes`
-- instead, byte for byte. At most one of the two is set. (`NOT VALID`: the
-- new column is empty, so no existing row needs checking.)
ALTER TABLE request_results
    ADD COLUMN body_bytes bytea,
    ADD CONSTRAINT request_results_one_body CHECK (body IS NULL OR body_bytes IS NULL) NOT VALID;
