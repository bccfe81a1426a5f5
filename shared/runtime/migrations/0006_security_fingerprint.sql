-- Which PERSON_ID_SECRET this database was built with: an HMAC of a fixed label keyed with the
-- secret (never the secret). A service refuses to start with another secret
-- (shared.runtime.service.check_fingerprint; docs/SECURITY.md, "Rotating PERSON_ID_SECRET").
CREATE TABLE secret_fingerprint (
    name        text PRIMARY KEY,
    fingerprint text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
