-- A reversal of a grant decided in an earlier batch looks up that grant's fund and payee by
-- grant_id (handlers._resolve_reversed_funds); without this index that was a scan of the whole
-- decision ledger per batch, a cost that grew with every decision ever stored.
CREATE INDEX decision_grant ON decision (grant_id) WHERE event_type = 'granted';
