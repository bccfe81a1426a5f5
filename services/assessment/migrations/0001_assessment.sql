-- Enrollments (as far as assessments need them), assessment results and certificates.
-- No national id or name is stored: person_id is the keyed hash (EVENTS.md §3).

CREATE TABLE enrollment (
    enrollment_ref  text PRIMARY KEY,
    person_id       text NOT NULL,
    occupation_code text NOT NULL,
    level           text,
    start_date      date NOT NULL,
    agency          text NOT NULL,
    status          text NOT NULL DEFAULT 'accepted',  -- accepted | withdrawn
    withdrawn_on    date
);
CREATE INDEX enrollment_person ON enrollment (person_id);

-- One row per assessment_ref: the first result stands. ``digest`` is the sha256 of the
-- normalised result (person_id in place of the national id), for conflicting-duplicate checks.
-- status 'waiting' = parked until its enrollment arrives; 'decided' = outcome published.
CREATE TABLE assessment (
    assessment_ref   text PRIMARY KEY,
    digest           bytea NOT NULL,
    status           text NOT NULL,
    person_id        text NOT NULL,
    evaluator_id     text NOT NULL,
    enrollment_ref   text,
    occupation_code  text NOT NULL,
    level            text,
    certificate_kind text NOT NULL,
    passed           boolean NOT NULL,
    assessed_on      date NOT NULL,
    agency           text NOT NULL
);
CREATE INDEX assessment_person ON assessment (person_id);

-- certificate_id = 'CERT-' + first 20 hex digits of sha256(assessment_ref), upper-case:
-- one certificate per passed assessment, the same id on every replay.
CREATE TABLE certificate (
    certificate_id   text PRIMARY KEY,
    assessment_ref   text NOT NULL UNIQUE,
    person_id        text NOT NULL,
    enrollment_ref   text,
    occupation_code  text NOT NULL,
    level            text,
    certificate_kind text NOT NULL,
    issued_on        date NOT NULL,
    status           text NOT NULL DEFAULT 'valid',  -- valid | revoked
    revoked_on       date,
    revoke_reason    text
);
CREATE INDEX certificate_person ON certificate (person_id);
