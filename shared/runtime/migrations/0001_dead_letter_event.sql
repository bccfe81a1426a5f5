-- Records already dead-lettered, by (source, id) and the sha256 of their bytes: the same bad
-- record sent twice (at another offset) is one dead letter, not two (EVENTS.md §1 idempotency).
CREATE TABLE dead_letter_event (
    source text  NOT NULL,
    id     text  NOT NULL,
    digest bytea NOT NULL,
    at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, id, digest)
);
