"""Baseline: the subsidy database as the SQL-file migrations before Alembic left it.

Revision ID: 0001
Revises:
Create Date: 2026-12-07

Why SQL and not Alembic operations: this revision executes the former migration files verbatim
(the runtime's, ``schema.RUNTIME_BASELINE``, then the service's, below), in the order the former
runner applied them. A database built here is therefore the same schema, statement for
statement, as every database that runner built, which ``db.migrate`` stamps at this revision
without running it (their ``schema_migrations`` holds ``LEGACY_VERSIONS``). That the models in
``store.py`` / ``shared/runtime/tables.py`` describe exactly this schema is checked by
``tests/integration/test_schema.py`` (compare_metadata, types and server defaults included), on
a fresh database and on one built by the old runner. Later revisions are Alembic operations,
generated from the models (README, "Migrations").
"""

from collections.abc import Sequence

from shared.runtime import schema

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# What the former runner recorded in schema_migrations for a database at this revision.
LEGACY_VERSIONS = (
    '0000_runtime',
    '0000_runtime_outbox_key',
    '0001_dead_letter_event',
    '0002_security_fingerprint',
    '0001_subsidy',
    '0002_policy_correction',
    '0003_pending_flag',
    '0004_decision_grant',
    '0005_fund_year',
    '0006_holds',
    '0007_security_policy_rules_hash',
)

SERVICE_BASELINE: tuple[tuple[str, str], ...] = (
    ('0001_subsidy', '''\
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
'''),
    ('0002_policy_correction', '''\
-- Corrections published when a corrected policy version is adopted for a past period
-- (services.subsidy.corrections). Written in the transaction that updates the person's state
-- and writes the outbox rows, so a correction is published once however often the command runs.

CREATE TABLE policy_correction (
    event_id        text PRIMARY KEY,   -- the published SubsidyGranted / SubsidyReversed id
    event_type      text NOT NULL,      -- granted | reversed
    person_id       text NOT NULL,
    agency          text NOT NULL,
    rule            text NOT NULL,
    grant_id        text NOT NULL,      -- the grant corrected (a new grant: itself)
    amount_fen      bigint NOT NULL,    -- signed: positive paid out, negative taken back
    policy_version  text NOT NULL,
    policy_hash     text NOT NULL,
    period_from     date NOT NULL,
    period_to       date NOT NULL,
    applied_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX policy_correction_person ON policy_correction (person_id);
CREATE INDEX policy_correction_policy ON policy_correction (agency, policy_hash);
'''),
    ('0003_pending_flag', '''\
-- Persons with something waiting (a certificate before its training's completion, a revocation
-- before its certificate), so the pending-items gauge reads only them, not every state.
ALTER TABLE person_state ADD COLUMN has_pending boolean NOT NULL DEFAULT false;
UPDATE person_state SET has_pending = true
 WHERE state LIKE '%"status":"pending"%' OR state NOT LIKE '%"pending_revocations":{}%';
CREATE INDEX person_state_has_pending ON person_state (person_id) WHERE has_pending;
'''),
    ('0004_decision_grant', '''\
-- A reversal of a grant decided in an earlier batch looks up that grant's fund and payee by
-- grant_id (handlers._resolve_reversed_funds); without this index that was a scan of the whole
-- decision ledger per batch, a cost that grew with every decision ever stored.
CREATE INDEX decision_grant ON decision (grant_id) WHERE event_type = 'granted';
'''),
    ('0005_fund_year', '''\
-- Budgets without a global lock: one row per (agency, fund, year) instead of the single
-- budget_ledger document every batch locked. A batch locks (FOR UPDATE, in key order) only the
-- rows of funds with a budget that its decisions read, and adds to the others in one sorted
-- upsert at its end (services/subsidy/budgets.py), so replicas spending from different funds
-- never wait on each other and a batch without a budgeted rule takes no budget lock.
CREATE TABLE fund_year (
    agency         text   NOT NULL,
    fund           text   NOT NULL,
    year           int    NOT NULL,
    committed_fen  bigint NOT NULL DEFAULT 0,
    -- BudgetThresholdReached already published, in basis points (8000, 9000, 10000)
    thresholds_bp  int[]  NOT NULL DEFAULT '{}',
    PRIMARY KEY (agency, fund, year)
);

INSERT INTO fund_year (agency, fund, year, committed_fen, thresholds_bp)
SELECT split_part(f.key, '|', 1), split_part(f.key, '|', 2), split_part(f.key, '|', 3)::int,
       (f.value ->> 'committed_fen')::bigint,
       ARRAY(SELECT t::int FROM jsonb_array_elements_text(f.value -> 'thresholds_emitted_bp') t)
  FROM budget_ledger b, jsonb_each(b.state -> 'funds') f;

DROP TABLE budget_ledger;
'''),
    ('0006_holds', '''\
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
'''),
    ('0007_security_policy_rules_hash', '''\
-- A policy version stands for one content: the SHA-256 of the file's JSON without `valid_to`
-- (sorted keys), so that closing a version's range to introduce the next one (the documented
-- workflow) is allowed and any other change under the same version name refuses the start.
-- Rows loaded before this migration have none and are filled in when the same file loads again.
ALTER TABLE policy_load ADD COLUMN rules_hash text;
'''),
)


def upgrade() -> None:
    # Runtime and service files interleaved by file name, as the former runner applied them.
    schema.execute_files(sorted(schema.RUNTIME_BASELINE + SERVICE_BASELINE))


def downgrade() -> None:
    raise NotImplementedError("the baseline is not undone: drop the database (tools.rebuild)")
