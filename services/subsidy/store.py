"""The subsidy service's database: its tables (the single source of its schema, with the
runtime's tables in ``shared/runtime/tables.py``)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from shared.runtime.tables import NOW, TIMESTAMPTZ, base, column, serial

# Tables
# Person states (the engine's input), the decision ledger (台账), fund budgets, the policy audit,
# policy corrections, integrity holds and their reviews, the API audit and console sessions.
# Columns in table order; a change here needs an Alembic revision (README, "Migrations").

SubsidyTable = base("SubsidyTable")
METADATA: sa.MetaData = SubsidyTable.metadata


class PersonStateRow(SubsidyTable, table=True):  # type: ignore[misc,valid-type]
    __tablename__ = "person_state"
    __table_args__ = (
        # Persons with something waiting: the pending-items gauge reads only them.
        sa.Index("person_state_has_pending", "person_id",
                 postgresql_where=sa.text("has_pending")),
    )
    person_id: str = column(sa.Text, primary_key=True)
    # JSON text, not jsonb: jsonb reorders object keys, and the engine's state keeps facts in
    # arrival order (ties such as "latest start first" fall back to that order).
    state: str = column(sa.Text)
    updated_at: dt.datetime | None = column(TIMESTAMPTZ, server_default=NOW)
    has_pending: bool | None = column(sa.Boolean, server_default=sa.text("false"))


class DecisionRow(SubsidyTable, table=True):  # type: ignore[misc,valid-type]
    """One row per published decision; amount_fen is negative for a reversal."""

    __tablename__ = "decision"
    __table_args__ = (
        sa.Index("decision_agency_date", "agency", "decided_on", "seq"),
        sa.Index("decision_person", "person_id"),
        # A reversal of an earlier batch's grant looks its fund and payee up by grant_id.
        sa.Index("decision_grant", "grant_id", postgresql_where=sa.text("event_type = 'granted'::text")),
    )
    event_id: str = column(sa.Text, primary_key=True)
    event_type: str = column(sa.Text)  # granted | rejected | reversed | held
    person_id: str = column(sa.Text)
    agency: str = column(sa.Text)
    rule: str | None = column(sa.Text, nullable=True)
    stage: str | None = column(sa.Text, nullable=True)
    reason: str | None = column(sa.Text, nullable=True)
    amount_fen: int | None = column(sa.BigInteger, server_default=sa.text("0"))
    fund: str | None = column(sa.Text, nullable=True)
    payee_kind: str | None = column(sa.Text, nullable=True)
    grant_id: str | None = column(sa.Text, nullable=True)
    decided_on: dt.date = column(sa.Date)  # the date of the fact that led to the decision
    seq: int | None = serial(sequence="decision_seq_seq")  # not a key: the ledger's order in a day
    payload: Any = column(postgresql.JSONB)


class PolicyLoadRow(SubsidyTable, table=True):  # type: ignore[misc,valid-type]
    """Audit trail: every policy file the service loaded, with its hash."""

    __tablename__ = "policy_load"
    content_hash: str = column(sa.Text, primary_key=True)
    agency: str = column(sa.Text, primary_key=True)
    version: str = column(sa.Text, primary_key=True)
    source: str = column(sa.Text)
    loaded_at: dt.datetime | None = column(TIMESTAMPTZ, server_default=NOW)
    # SHA-256 of the file's JSON without valid_to (sorted keys): what a version name stands for.
    rules_hash: str | None = column(sa.Text, nullable=True)


class PolicyCorrectionRow(SubsidyTable, table=True):  # type: ignore[misc,valid-type]
    """Corrections published when a corrected policy version is adopted for a past period."""

    __tablename__ = "policy_correction"
    __table_args__ = (
        sa.Index("policy_correction_person", "person_id"),
        sa.Index("policy_correction_policy", "agency", "policy_hash"),
    )
    event_id: str = column(sa.Text, primary_key=True)  # the published SubsidyGranted / SubsidyReversed id
    event_type: str = column(sa.Text)  # granted | reversed
    person_id: str = column(sa.Text)
    agency: str = column(sa.Text)
    rule: str = column(sa.Text)
    grant_id: str = column(sa.Text)  # the grant corrected (a new grant: itself)
    amount_fen: int = column(sa.BigInteger)  # signed: positive paid out, negative taken back
    policy_version: str = column(sa.Text)
    policy_hash: str = column(sa.Text)
    period_from: dt.date = column(sa.Date)
    period_to: dt.date = column(sa.Date)
    applied_at: dt.datetime | None = column(TIMESTAMPTZ, server_default=NOW)


class FundYearRow(SubsidyTable, table=True):  # type: ignore[misc,valid-type]
    """Budgets: one row per (agency, fund, year), locked only by batches that read it."""

    __tablename__ = "fund_year"
    agency: str = column(sa.Text, primary_key=True)
    fund: str = column(sa.Text, primary_key=True)
    year: int = column(sa.Integer, primary_key=True)
    committed_fen: int | None = column(sa.BigInteger, server_default=sa.text("0"))
    # BudgetThresholdReached already published, in basis points (8000, 9000, 10000)
    thresholds_bp: list[int] | None = column(postgresql.ARRAY(sa.Integer),
                                             server_default=sa.text("'{}'::integer[]"))


class HoldRow(SubsidyTable, table=True):  # type: ignore[misc,valid-type]
    """One row per held grant (POLICY.md §6), the reviewers' queue."""

    __tablename__ = "hold"
    __table_args__ = (
        sa.Index("hold_open", "agency", "held_at", postgresql_where=sa.text("status = 'open'::text")),
        sa.Index("hold_person", "person_id"),
    )
    grant_id: str = column(sa.Text, primary_key=True)
    person_id: str = column(sa.Text)
    agency: str = column(sa.Text)
    rule: str = column(sa.Text)
    stage: str = column(sa.Text)
    amount_fen: int = column(sa.BigInteger)
    fund: str = column(sa.Text)
    checks: list[str] = column(postgresql.ARRAY(sa.Text))
    enrollment_ref: str = column(sa.Text)
    held_on: dt.date = column(sa.Date)  # the decision's basis date
    payload: Any = column(postgresql.JSONB)  # the SubsidyHeld as published
    status: str | None = column(sa.Text, server_default=sa.text("'open'::text"))  # open | released | denied | voided
    held_at: dt.datetime | None = column(TIMESTAMPTZ, server_default=NOW)
    ended_at: dt.datetime | None = column(TIMESTAMPTZ, nullable=True)
    ended_by: str | None = column(sa.Text, nullable=True)  # the id of the event that ended the hold


class HoldReviewRow(SubsidyTable, table=True):  # type: ignore[misc,valid-type]
    """The reviews submitted through the API, one per hold."""

    __tablename__ = "hold_review"
    __table_args__ = (
        sa.UniqueConstraint("review_id", name="hold_review_review_id_key"),
        sa.Index("hold_review_agency", "agency", "reviewed_at"),
    )
    grant_id: str = column(sa.Text, primary_key=True)  # a hold is reviewed once
    review_id: str = column(sa.Text)  # the HoldReviewed's CloudEvents id
    person_id: str = column(sa.Text)
    agency: str = column(sa.Text)
    decision: str = column(sa.Text)  # release | deny
    reviewer: str = column(sa.Text)  # the token's name, no personal data
    note: str = column(sa.Text)
    reviewed_at: dt.datetime = column(TIMESTAMPTZ)


class ApiAuditRow(SubsidyTable, table=True):  # type: ignore[misc,valid-type]
    """Who read or decided what through the holds routes and the console."""

    __tablename__ = "api_audit"
    __table_args__ = (sa.Index("api_audit_at", "at"),)
    seq: int | None = serial(primary_key=True)
    at: dt.datetime | None = column(TIMESTAMPTZ, server_default=NOW)
    role: str = column(sa.Text)
    agency: str | None = column(sa.Text, nullable=True)
    principal: str = column(sa.Text)  # the token's name
    action: str = column(sa.Text)  # method and route, e.g. GET /agencies/{agency}/holds
    target: str | None = column(sa.Text, nullable=True)  # the agency, grant or person


class ConsoleSessionRow(SubsidyTable, table=True):  # type: ignore[misc,valid-type]
    """Console sessions (signed in with an agency token): only the hash of the cookie."""

    __tablename__ = "console_session"
    id_hash: str = column(sa.Text, primary_key=True)
    role: str = column(sa.Text)
    agency: str | None = column(sa.Text, nullable=True)
    principal: str = column(sa.Text)
    csrf: str = column(sa.Text)
    created_at: dt.datetime | None = column(TIMESTAMPTZ, server_default=NOW)
    expires_at: dt.datetime = column(TIMESTAMPTZ)
