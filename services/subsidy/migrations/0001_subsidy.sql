-- Person states (the engine's input), the decision ledger (台账), budgets and the policy audit.

CREATE TABLE person_state (
    person_id  text PRIMARY KEY,
    -- JSON text, not jsonb: jsonb reorders object keys, and the engine's state keeps facts in
    -- arrival order (ties such as "latest start first" fall back to that order).
    state      text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One row per published decision; amount_fen is negative for a reversal.
CREATE TABLE decision (
    event_id    text PRIMARY KEY,
    event_type  text NOT NULL,      -- granted | rejected | reversed
    person_id   text NOT NULL,
    agency      text NOT NULL,
    rule        text,
    stage       text,
    reason      text,
    amount_fen  bigint NOT NULL DEFAULT 0,
    fund        text,
    payee_kind  text,
    grant_id    text,
    decided_on  date NOT NULL,      -- the date of the fact that led to the decision
    seq         bigserial,
    payload     jsonb NOT NULL
);
CREATE INDEX decision_agency_date ON decision (agency, decided_on, seq);
CREATE INDEX decision_person ON decision (person_id);

-- The budget ledger of every (agency, fund, year), one JSON document, locked per batch.
CREATE TABLE budget_ledger (
    id    int PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    state jsonb NOT NULL
);
INSERT INTO budget_ledger (id, state) VALUES (1, '{}');

-- Audit trail: every policy file the service loaded, with its hash.
CREATE TABLE policy_load (
    content_hash text NOT NULL,
    agency       text NOT NULL,
    version      text NOT NULL,
    source       text NOT NULL,
    loaded_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (content_hash, agency, version)
);
