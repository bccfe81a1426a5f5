-- A policy version stands for one content: the SHA-256 of the file's JSON without `valid_to`
-- (sorted keys), so that closing a version's range to introduce the next one (the documented
-- workflow) is allowed and any other change under the same version name refuses the start.
-- Rows loaded before this migration have none and are filled in when the same file loads again.
ALTER TABLE policy_load ADD COLUMN rules_hash text;
