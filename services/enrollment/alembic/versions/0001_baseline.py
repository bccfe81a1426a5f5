"""Baseline: the enrollment database as the SQL-file migrations before Alembic left it.

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
    '0001_enrollment',
    '0002_rejection_agency',
    '0003_integrity_flags',
    '0004_security_lookup_audit',
)

SERVICE_BASELINE: tuple[tuple[str, str], ...] = (
    ('0001_enrollment', '''\
-- Trainees (identity protected), enrollments, attendance and work-for-training months.

CREATE TABLE trainee (
    person_id       text PRIMARY KEY,
    national_id_enc bytea NOT NULL,   -- Fernet ciphertext; the plain id never leaves ingress
    name_enc        bytea NOT NULL,
    first_seen      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE enrollment (
    enrollment_ref text PRIMARY KEY,
    agency         text NOT NULL,
    person_id      text NOT NULL,
    institution_id text NOT NULL,
    course_id      text NOT NULL,
    start_date     date NOT NULL,
    end_date       date NOT NULL,
    planned_hours  int  NOT NULL,
    accepted       jsonb NOT NULL,     -- the EnrollmentAccepted payload as published
    status         text NOT NULL DEFAULT 'open',  -- open | completed | withdrawn
    closed_on      date,
    hours_attended numeric,
    days_attended  int,
    event_time     timestamptz NOT NULL
);
CREATE INDEX enrollment_person ON enrollment (person_id);

CREATE TABLE attendance (
    enrollment_ref text NOT NULL,
    date           date NOT NULL,
    hours          numeric NOT NULL,
    PRIMARY KEY (enrollment_ref, date)
);

CREATE TABLE work_month (
    enrollment_ref text NOT NULL,
    month          text NOT NULL,
    wages_fen      bigint NOT NULL,
    month_index    int NOT NULL,
    PRIMARY KEY (enrollment_ref, month)
);

CREATE TABLE enrollment_rejection (
    source         text NOT NULL,
    id             text NOT NULL,
    enrollment_ref text NOT NULL,
    person_id      text,
    reason         text NOT NULL,
    detail         text NOT NULL,
    PRIMARY KEY (source, id)
);
CREATE INDEX enrollment_rejection_person ON enrollment_rejection (person_id);
'''),
    ('0002_rejection_agency', '''\
-- The agency whose TraineeEnrolled was rejected, so an agency can read its own rejections.
ALTER TABLE enrollment_rejection ADD COLUMN agency text;
'''),
    ('0003_integrity_flags', '''\
-- Integrity flags (POLICY.md §6): at most one EnrollmentFlagged per enrollment and check, so a
-- flag is published once however often its attendance is redelivered or replayed.

CREATE TABLE enrollment_flag (
    enrollment_ref  text NOT NULL,
    integrity_check text NOT NULL,      -- daily_hours_exceeded | far_outside_plan
    person_id       text NOT NULL,
    flagged_on      date NOT NULL,      -- the attendance date that tripped the check
    detail          text NOT NULL,
    PRIMARY KEY (enrollment_ref, integrity_check)
);
CREATE INDEX enrollment_flag_person ON enrollment_flag (person_id);
'''),
    ('0004_security_lookup_audit', '''\
-- Every POST /persons/lookup: who asked (role, agency, a prefix of the token's hash), when, and
-- about whom as the pseudonymous person_id (an HMAC of the national id, never the id in clear).
CREATE TABLE lookup_audit (
    seq        bigserial   PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    role       text        NOT NULL,
    agency     text,
    token      text        NOT NULL,  -- first 16 hex digits of the token's sha256
    person_id  text,                  -- null when the national id was not valid
    outcome    text        NOT NULL   -- found | not_found | invalid | rate_limited
);
CREATE INDEX lookup_audit_at ON lookup_audit (at);
'''),
)


def upgrade() -> None:
    # Runtime and service files interleaved by file name, as the former runner applied them.
    schema.execute_files(sorted(schema.RUNTIME_BASELINE + SERVICE_BASELINE))


def downgrade() -> None:
    raise NotImplementedError("the baseline is not undone: drop the database (tools.rebuild)")
