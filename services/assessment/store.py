"""The assessment service's database: its tables (the single source of its schema, with the
runtime's tables in ``shared/runtime/tables.py``)."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from shared.runtime.tables import base, column

# Tables
# Enrollments (as far as assessments need them), assessment results and certificates. No
# national id or name is stored: person_id is the keyed hash (EVENTS.md §3). Columns in table
# order; a change here needs an Alembic revision (README, "Migrations").

AssessmentTable = base("AssessmentTable")
METADATA: sa.MetaData = AssessmentTable.metadata


class EnrollmentRow(AssessmentTable, table=True):  # type: ignore[misc,valid-type]
    __tablename__ = "enrollment"
    __table_args__ = (sa.Index("enrollment_person", "person_id"),)
    enrollment_ref: str = column(sa.Text, primary_key=True)
    person_id: str = column(sa.Text)
    occupation_code: str = column(sa.Text)
    level: str | None = column(sa.Text, nullable=True)
    start_date: dt.date = column(sa.Date)
    agency: str = column(sa.Text)
    status: str | None = column(sa.Text, server_default=sa.text("'accepted'::text"))  # accepted | withdrawn
    withdrawn_on: dt.date | None = column(sa.Date, nullable=True)


class AssessmentRow(AssessmentTable, table=True):  # type: ignore[misc,valid-type]
    """One row per assessment_ref: the first result stands. ``digest``: sha256 of the normalised
    result; status 'waiting' = parked until its enrollment arrives, 'decided' = published."""

    __tablename__ = "assessment"
    __table_args__ = (sa.Index("assessment_person", "person_id"),)
    assessment_ref: str = column(sa.Text, primary_key=True)
    digest: bytes = column(sa.LargeBinary)
    status: str = column(sa.Text)
    person_id: str = column(sa.Text)
    evaluator_id: str = column(sa.Text)
    enrollment_ref: str | None = column(sa.Text, nullable=True)
    occupation_code: str = column(sa.Text)
    level: str | None = column(sa.Text, nullable=True)
    certificate_kind: str = column(sa.Text)
    passed: bool = column(sa.Boolean)
    assessed_on: dt.date = column(sa.Date)
    agency: str = column(sa.Text)


class CertificateRow(AssessmentTable, table=True):  # type: ignore[misc,valid-type]
    """certificate_id = 'CERT-' + first 20 hex digits of sha256(assessment_ref), upper-case."""

    __tablename__ = "certificate"
    __table_args__ = (
        sa.UniqueConstraint("assessment_ref", name="certificate_assessment_ref_key"),
        sa.Index("certificate_person", "person_id"),
    )
    certificate_id: str = column(sa.Text, primary_key=True)
    assessment_ref: str = column(sa.Text)
    person_id: str = column(sa.Text)
    enrollment_ref: str | None = column(sa.Text, nullable=True)
    occupation_code: str = column(sa.Text)
    level: str | None = column(sa.Text, nullable=True)
    certificate_kind: str = column(sa.Text)
    issued_on: dt.date = column(sa.Date)
    status: str | None = column(sa.Text, server_default=sa.text("'valid'::text"))  # valid | revoked
    revoked_on: dt.date | None = column(sa.Date, nullable=True)
    revoke_reason: str | None = column(sa.Text, nullable=True)
