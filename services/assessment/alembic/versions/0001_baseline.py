"""Baseline: the assessment database as the SQL-file migrations before Alembic left it.

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
    '0001_assessment',
)

SERVICE_BASELINE: tuple[tuple[str, str], ...] = (
    ('0001_assessment', '''\
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
'''),
)


def upgrade() -> None:
    # Runtime and service files interleaved by file name, as the former runner applied them.
    schema.execute_files(sorted(schema.RUNTIME_BASELINE + SERVICE_BASELINE))


def downgrade() -> None:
    raise NotImplementedError("the baseline is not undone: drop the database (tools.rebuild)")
