-- Each template's body is stored once: in request_templates, and no longer
-- again in file_parts. A part holds the original bytes with the bodies of its
-- templates cut out; `holes` says where each goes back on download: per
-- body, its offset in `data` (4 bytes) and its line number (8 bytes), both
-- big-endian, in order. NULL: the part is whole (parts stored before this).
ALTER TABLE file_parts ADD COLUMN holes bytea;
ALTER TABLE file_parts ALTER COLUMN holes SET STORAGE EXTERNAL;
