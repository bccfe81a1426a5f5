"""The enrollment service's database: its tables (the single source of its schema, with the
runtime's tables in ``shared/runtime/tables.py``)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from shared.runtime.tables import NOW, TIMESTAMPTZ, base, column, serial

# Tables
# Trainees (identity protected), enrollments, attendance, work-for-training months, rejections,
# integrity flags and the lookup audit. Columns in table order; a change here needs an Alembic
# revision (README, "Migrations").

EnrollmentTable = base("EnrollmentTable")
METADATA: sa.MetaData = EnrollmentTable.metadata


class TraineeRow(EnrollmentTable, table=True):  # type: ignore[misc,valid-type]
    __tablename__ = "trainee"
    person_id: str = column(sa.Text, primary_key=True)
    national_id_enc: bytes = column(sa.LargeBinary)  # Fernet ciphertext; the plain id never leaves ingress
    name_enc: bytes = column(sa.LargeBinary)
    first_seen: dt.datetime | None = column(TIMESTAMPTZ, server_default=NOW)


class EnrollmentRow(EnrollmentTable, table=True):  # type: ignore[misc,valid-type]
    __tablename__ = "enrollment"
    __table_args__ = (sa.Index("enrollment_person", "person_id"),)
    enrollment_ref: str = column(sa.Text, primary_key=True)
    agency: str = column(sa.Text)
    person_id: str = column(sa.Text)
    institution_id: str = column(sa.Text)
    course_id: str = column(sa.Text)
    start_date: dt.date = column(sa.Date)
    end_date: dt.date = column(sa.Date)
    planned_hours: int = column(sa.Integer)
    accepted: Any = column(postgresql.JSONB)  # the EnrollmentAccepted payload as published
    status: str | None = column(sa.Text, server_default=sa.text("'open'::text"))  # open | completed | withdrawn
    closed_on: dt.date | None = column(sa.Date, nullable=True)
    hours_attended: Decimal | None = column(sa.Numeric, nullable=True)
    days_attended: int | None = column(sa.Integer, nullable=True)
    event_time: dt.datetime = column(TIMESTAMPTZ)


class AttendanceRow(EnrollmentTable, table=True):  # type: ignore[misc,valid-type]
    __tablename__ = "attendance"
    enrollment_ref: str = column(sa.Text, primary_key=True)
    date: dt.date = column(sa.Date, primary_key=True)
    hours: Decimal = column(sa.Numeric)


class WorkMonthRow(EnrollmentTable, table=True):  # type: ignore[misc,valid-type]
    __tablename__ = "work_month"
    enrollment_ref: str = column(sa.Text, primary_key=True)
    month: str = column(sa.Text, primary_key=True)
    wages_fen: int = column(sa.BigInteger)
    month_index: int = column(sa.Integer)


class EnrollmentRejectionRow(EnrollmentTable, table=True):  # type: ignore[misc,valid-type]
    __tablename__ = "enrollment_rejection"
    __table_args__ = (sa.Index("enrollment_rejection_person", "person_id"),)
    source: str = column(sa.Text, primary_key=True)
    id: str = column(sa.Text, primary_key=True)
    enrollment_ref: str = column(sa.Text)
    person_id: str | None = column(sa.Text, nullable=True)
    reason: str = column(sa.Text)
    detail: str = column(sa.Text)
    # The agency whose TraineeEnrolled was rejected (null on rows from before it was recorded).
    agency: str | None = column(sa.Text, nullable=True)


class EnrollmentFlagRow(EnrollmentTable, table=True):  # type: ignore[misc,valid-type]
    """At most one EnrollmentFlagged per enrollment and check (POLICY.md §6)."""

    __tablename__ = "enrollment_flag"
    __table_args__ = (sa.Index("enrollment_flag_person", "person_id"),)
    enrollment_ref: str = column(sa.Text, primary_key=True)
    integrity_check: str = column(sa.Text, primary_key=True)  # daily_hours_exceeded | far_outside_plan
    person_id: str = column(sa.Text)
    flagged_on: dt.date = column(sa.Date)  # the attendance date that tripped the check
    detail: str = column(sa.Text)


class LookupAuditRow(EnrollmentTable, table=True):  # type: ignore[misc,valid-type]
    """Every POST /persons/lookup: who asked, when, about whom (person_id, never the id)."""

    __tablename__ = "lookup_audit"
    __table_args__ = (sa.Index("lookup_audit_at", "at"),)
    seq: int | None = serial(primary_key=True)
    at: dt.datetime | None = column(TIMESTAMPTZ, server_default=NOW)
    role: str = column(sa.Text)
    agency: str | None = column(sa.Text, nullable=True)
    token: str = column(sa.Text)  # first 16 hex digits of the token's sha256
    person_id: str | None = column(sa.Text, nullable=True)  # null when the national id was not valid
    outcome: str = column(sa.Text)  # found | not_found | invalid | rate_limited
