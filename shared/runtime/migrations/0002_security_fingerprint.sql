-- Which PERSON_ID_SECRET this database was built with: an HMAC of a fixed label keyed with the
-- secret (never the secret). A service refuses to start with another secret
-- (shared.runtime.service.check_fingerprint; docs/SECURITY.md §4).
CREATE TABLE secret_fingerprint (
    name        text PRIMARY KEY,
    fingerprint text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()  -- when it was first recorded
);
