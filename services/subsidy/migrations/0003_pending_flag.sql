-- Persons with something waiting (a certificate before its training's completion, a revocation
-- before its certificate), so the pending-items gauge reads only them, not every state.
ALTER TABLE person_state ADD COLUMN has_pending boolean NOT NULL DEFAULT false;
UPDATE person_state SET has_pending = true
 WHERE state LIKE '%"status":"pending"%' OR state NOT LIKE '%"pending_revocations":{}%';
CREATE INDEX person_state_has_pending ON person_state (person_id) WHERE has_pending;
