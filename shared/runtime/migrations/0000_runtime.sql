-- The runtime tables every service database carries: the processed-event inbox and the outbox.

CREATE TABLE inbox (
    source      text        NOT NULL,
    id          text        NOT NULL,
    digest      bytea       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, id)
);

CREATE TABLE outbox (
    seq        bigserial   PRIMARY KEY,
    topic      text        NOT NULL,
    key        text        NOT NULL,
    event_type text        NOT NULL,
    value      bytea       NOT NULL,
    headers    jsonb       NOT NULL DEFAULT '[]',
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Records waiting for something they refer to (order tolerance); dead-lettered after the
-- service's waiting period as unknown_reference.
CREATE TABLE pending (
    seq        bigserial   PRIMARY KEY,
    ref        text        NOT NULL,
    event_type text        NOT NULL,
    topic      text        NOT NULL,
    partition  int         NOT NULL,
    "offset"   bigint      NOT NULL,
    key        text,
    value      bytea       NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pending_ref ON pending (ref);
CREATE INDEX pending_received ON pending (received_at);

-- Positions already dead-lettered: a bad record redelivered after a crash is not sent twice.
CREATE TABLE dead_letters (
    topic     text   NOT NULL,
    partition int    NOT NULL,
    "offset"  bigint NOT NULL,
    at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, "offset")
);
