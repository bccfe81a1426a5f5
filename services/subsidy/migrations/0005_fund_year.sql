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
