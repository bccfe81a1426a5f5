-- Every POST /persons/lookup: who asked (role, agency, a prefix of the token's hash), when, and
-- about whom as the pseudonymous person_id (an HMAC of the national id, never the id in clear).
CREATE TABLE lookup_audit (
    seq        bigserial   PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    role       text        NOT NULL,
    agency     text,
    token      text        NOT NULL,  -- first 16 hex digits of the token's sha256
    person_id  text,                  -- null when the national id was not valid
    outcome    text        NOT NULL   -- found | not_found | invalid | rate_limited
);
CREATE INDEX lookup_audit_at ON lookup_audit (at);
