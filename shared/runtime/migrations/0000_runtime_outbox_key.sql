-- Outbox keys as bytes: a dead letter keeps the key of the record it carries exactly as it came,
-- which text cannot hold when the key has a 0x00 byte or is not UTF-8.
ALTER TABLE outbox ALTER COLUMN key TYPE bytea USING convert_to(key, 'UTF8');
