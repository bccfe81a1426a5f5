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
