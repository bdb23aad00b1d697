-- A stored part of an input file has the bodies of its templates cut out
-- (each body is stored once, in request_templates): for each, where it goes
-- back in `data` (4 bytes) and its line number (8 bytes), big-endian. NULL
-- (parts stored before): the part is whole.
ALTER TABLE file_parts ADD COLUMN holes BLOB;
