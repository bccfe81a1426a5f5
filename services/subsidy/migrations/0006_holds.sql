-- Integrity holds (POLICY.md §6). `hold`: one row per held grant, the reviewers' queue, kept
-- by the batch handler in the transaction that publishes the hold and its end; the person's
-- state stays the engine's record. `hold_review`: the reviews submitted through the API, one
-- per hold (the 409), written with their HoldReviewed outbox row. `api_audit`: who read or
-- decided what through the holds routes and the console.

CREATE TABLE hold (
    grant_id       text PRIMARY KEY,
    person_id      text NOT NULL,
    agency         text NOT NULL,
    rule           text NOT NULL,
    stage          text NOT NULL,
    amount_fen     bigint NOT NULL,
    fund           text NOT NULL,
    checks         text[] NOT NULL,
    enrollment_ref text NOT NULL,
    held_on        date NOT NULL,      -- the decision's basis date
    payload        jsonb NOT NULL,     -- the SubsidyHeld as published
    status         text NOT NULL DEFAULT 'open',  -- open | released | denied | voided
    held_at        timestamptz NOT NULL DEFAULT now(),
    ended_at       timestamptz,
    ended_by       text                -- the id of the event that ended the hold
);
CREATE INDEX hold_open ON hold (agency, held_at) WHERE status = 'open';
CREATE INDEX hold_person ON hold (person_id);

CREATE TABLE hold_review (
    grant_id    text PRIMARY KEY,      -- a hold is reviewed once
    review_id   text NOT NULL UNIQUE,  -- the HoldReviewed's CloudEvents id
    person_id   text NOT NULL,
    agency      text NOT NULL,
    decision    text NOT NULL,         -- release | deny
    reviewer    text NOT NULL,         -- the token's name, no personal data
    note        text NOT NULL,
    reviewed_at timestamptz NOT NULL
);
CREATE INDEX hold_review_agency ON hold_review (agency, reviewed_at);

CREATE TABLE api_audit (
    seq       bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    role      text NOT NULL,
    agency    text,
    principal text NOT NULL,           -- the token's name
    action    text NOT NULL,           -- method and route, e.g. GET /agencies/{agency}/holds
    target    text                     -- the agency, grant or person the action was about
);
CREATE INDEX api_audit_at ON api_audit (at);

-- Console sessions (signed in with an agency token): only the hash of the cookie is stored.
CREATE TABLE console_session (
    id_hash    text PRIMARY KEY,
    role       text NOT NULL,
    agency     text,
    principal  text NOT NULL,
    csrf       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
