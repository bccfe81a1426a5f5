"""The subsidy service's database: its tables (the single source of its schema, with the
runtime's tables in ``shared/runtime/tables.py``).

Below them, its unit of work (section "Unit of work"): what a batch loads before deciding
and records after, on PostgreSQL and in memory."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import registry
from sqlmodel import SQLModel

from shared.runtime import db
from shared.runtime.tables import NOW, TIMESTAMPTZ, column, serial
from services.subsidy import budgets, holds, state_codec
from services.subsidy.engine.facts import HoldReviewed
from services.subsidy.engine.outputs import Output, SubsidyGranted, SubsidyHeld, SubsidyRejected
from services.subsidy.engine.state import BudgetLedger, FundYear, PersonState, pending_items

# Tables
# Person states (the engine's input), the decision ledger (台账), fund budgets, the policy audit,
# policy corrections, integrity holds and their reviews, the API audit and console sessions.
# Columns in table order; a change here needs an Alembic revision (README, "Migrations").

class SubsidyTable(SQLModel, registry=registry()):
    """The base of this database's tables: a metadata of its own (one per service database, so
    two services may each have a table of the same name)."""

METADATA: sa.MetaData = SubsidyTable.metadata


class PersonStateRow(SubsidyTable, table=True):
    __tablename__ = "person_state"
    __table_args__ = (
        # Persons with something waiting: the pending-items gauge reads only them.
        sa.Index("person_state_has_pending", "person_id",
                 postgresql_where=sa.text("has_pending")),
    )
    person_id: str = column(sa.Text, primary_key=True)
    # JSON text, not jsonb: jsonb reorders object keys, and the engine's state keeps facts in
    # arrival order (ties such as "latest start first" fall back to that order). Compressed with
    # LZ4 (revision 0002; the column's compression method is not in the model).
    state: str = column(sa.Text)
    updated_at: dt.datetime | None = column(TIMESTAMPTZ, server_default=NOW)
    has_pending: bool | None = column(sa.Boolean, server_default=sa.text("false"))


class DecisionRow(SubsidyTable, table=True):
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


class PolicyLoadRow(SubsidyTable, table=True):
    """Audit trail: every policy file the service loaded, with its hash."""

    __tablename__ = "policy_load"
    content_hash: str = column(sa.Text, primary_key=True)
    agency: str = column(sa.Text, primary_key=True)
    version: str = column(sa.Text, primary_key=True)
    source: str = column(sa.Text)
    loaded_at: dt.datetime | None = column(TIMESTAMPTZ, server_default=NOW)
    # SHA-256 of the file's JSON without valid_to (sorted keys): what a version name stands for.
    rules_hash: str | None = column(sa.Text, nullable=True)


class PolicyCorrectionRow(SubsidyTable, table=True):
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


class FundYearRow(SubsidyTable, table=True):
    """Budgets: one row per (agency, fund, year), locked only by batches that read it."""

    __tablename__ = "fund_year"
    agency: str = column(sa.Text, primary_key=True)
    fund: str = column(sa.Text, primary_key=True)
    year: int = column(sa.Integer, primary_key=True)
    committed_fen: int | None = column(sa.BigInteger, server_default=sa.text("0"))
    # BudgetThresholdReached already published, in basis points (8000, 9000, 10000)
    thresholds_bp: list[int] | None = column(postgresql.ARRAY(sa.Integer),
                                             server_default=sa.text("'{}'::integer[]"))


class HoldRow(SubsidyTable, table=True):
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


class HoldReviewRow(SubsidyTable, table=True):
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


class ApiAuditRow(SubsidyTable, table=True):
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


class ConsoleSessionRow(SubsidyTable, table=True):
    """Console sessions (signed in with an agency token): only the hash of the cookie."""

    __tablename__ = "console_session"
    id_hash: str = column(sa.Text, primary_key=True)
    role: str = column(sa.Text)
    agency: str | None = column(sa.Text, nullable=True)
    principal: str = column(sa.Text)
    csrf: str = column(sa.Text)
    created_at: dt.datetime | None = column(TIMESTAMPTZ, server_default=NOW)
    expires_at: dt.datetime = column(TIMESTAMPTZ)


# Unit of work
# The subsidy service's unit of work: what a batch loads before the engine decides, and what it
# records after.
#
# `SubsidyStore` is the port the handler sees: `load` locks the batch's persons and reads their
# stored states; `decide` runs the batch's (pure, repeatable) decisions against fund budgets that
# hold (services.subsidy.budgets: an unlocked snapshot, then the budgeted fund years the decisions
# read, locked); `record` writes the states, the decision ledger, the holds mirror and the fund
# years with bulk statements. `PostgresSubsidyStore` is the service's (asyncpg, ``unnest``/
# ``COPY``, advisory locks); `MemorySubsidyStore` keeps the same tables in dictionaries for fast
# handler tests, and one contract test (tests/unit/subsidy/test_store_contract.py) runs both.

T = TypeVar("T")

# The states a batch leaves, one statement (tools.microbench times it against other tables).
UPSERT_STATES = (
    "INSERT INTO person_state (person_id, state, has_pending) "
    "SELECT * FROM unnest($1::text[], $2::text[], $3::boolean[]) "
    "ON CONFLICT (person_id) DO UPDATE SET state = excluded.state,"
    " has_pending = excluded.has_pending, updated_at = now()"
)

DECISION_COLUMNS = (
    "event_id", "event_type", "person_id", "agency", "rule", "stage", "reason", "amount_fen",
    "fund", "payee_kind", "grant_id", "decided_on", "payload",
)


@dataclass
class Changes:
    """What a batch writes: the persons' new ``states``, the ledger ``decisions`` (rows of
    `DECISION_COLUMNS`; a reversal of a grant decided in an earlier batch has its fund filled in
    on recording), the ``outputs`` whose holds and hold ends the ``hold`` table mirrors
    (``released``: grant ids a review released in this batch; ``reviews``: the batch's
    HoldReviewed facts) and the fund years: the ``ledger`` the decisions left and the ``start``
    they began from."""

    states: dict[str, PersonState] = field(default_factory=dict)
    decisions: list[tuple[Any, ...]] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    reviews: list[HoldReviewed] = field(default_factory=list)
    ledger: BudgetLedger = field(default_factory=BudgetLedger)
    start: dict[str, FundYear] = field(default_factory=dict)


class SubsidyStore(Protocol):
    async def load(self, conn: Any, persons: list[str]) -> dict[str, str]:
        """The stored states of these persons (JSON text), every one of them locked first."""

    async def decide(self, conn: Any, budgeted: frozenset[str],
                     run: Callable[[BudgetLedger], T]) -> tuple[T, BudgetLedger, dict[str, FundYear]]:
        """``run`` against fund budgets that hold: its result, the ledger it left, the fund
        years it started from."""

    async def record(self, conn: Any, changes: Changes) -> BudgetLedger:
        """Write a batch's changes; return the fund years it changed, as stored."""


def reversal_funds(rows: list[tuple[Any, ...]], funds: dict[str, tuple[str, str]]) -> list[tuple[Any, ...]]:
    """The rows with each reversal's fund and payee kind filled from ``funds`` (by grant)."""
    out = []
    for row in rows:
        if row[1] == "reversed" and row[8] is None and row[10] in funds:
            fund, payee_kind = funds[row[10]]
            row = row[:8] + (fund, payee_kind) + row[10:]
        out.append(row)
    return out


def missing_funds(rows: list[tuple[Any, ...]]) -> list[str]:
    """Grants reversed in these rows whose fund the batch does not know (decided earlier)."""
    return [r[10] for r in rows if r[1] == "reversed" and r[8] is None]


class PostgresSubsidyStore:
    """The unit of work on the service's database (asyncpg; call inside the batch's transaction)."""

    async def load(self, conn: asyncpg.Connection, persons: list[str]) -> dict[str, str]:
        """``FOR UPDATE`` locks only rows that exist: two replicas that both hold a person with
        no row yet (during a rebalance, the old owner's last batch and the new owner's first)
        would both read "no state" and the second commit would erase the first. Advisory locks
        on the persons, taken in one sorted statement before reading, cover persons without a
        row too."""
        await db.lock_keys(conn, [f"person:{p}" for p in persons])
        rows = await conn.fetch(
            "SELECT person_id, state FROM person_state WHERE person_id = ANY($1::text[]) "
            "ORDER BY person_id FOR UPDATE",
            persons,
        )
        return {r["person_id"]: r["state"] for r in rows}

    async def decide(self, conn: asyncpg.Connection, budgeted: frozenset[str],
                     run: Callable[[BudgetLedger], T]) -> tuple[T, BudgetLedger, dict[str, FundYear]]:
        return await budgets.decide_with_budgets(conn, budgeted, run)

    async def record(self, conn: asyncpg.Connection, changes: Changes) -> BudgetLedger:
        rows = await self._resolve_reversed_funds(conn, changes.decisions)
        touched = changes.states
        if touched:
            await conn.execute(
                UPSERT_STATES,
                list(touched), [state_codec.dumps(s) for s in touched.values()],
                [bool(pending_items(s)) for s in touched.values()],
            )
        if rows:
            await conn.copy_records_to_table("decision", records=rows, columns=DECISION_COLUMNS)
        await holds.record(conn, changes.outputs, changes.released, changes.reviews)
        return await budgets.store(conn, changes.ledger, changes.start)

    @staticmethod
    async def _resolve_reversed_funds(conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """Fill the fund of reversals whose grant was decided in an earlier batch (one query)."""
        missing = missing_funds(rows)
        if not missing:
            return rows
        funds = {r["grant_id"]: (r["fund"], r["payee_kind"]) for r in await conn.fetch(
            "SELECT grant_id, fund, payee_kind FROM decision "
            "WHERE event_type = 'granted' AND grant_id = ANY($1::text[])",
            missing,
        )}
        return reversal_funds(rows, funds)


class MemorySubsidyStore:
    """The same tables in dictionaries (no locks: one batch at a time); ``conn`` is ignored."""

    def __init__(self) -> None:
        self.states: dict[str, tuple[str, bool]] = {}  # person -> (state JSON, has_pending)
        self.decisions: list[tuple[Any, ...]] = []
        self.holds: dict[str, dict[str, Any]] = {}  # grant -> the hold row
        self.reviews: dict[str, HoldReviewed] = {}  # grant -> its review
        self.funds: dict[str, FundYear] = {}

    async def load(self, conn: Any, persons: list[str]) -> dict[str, str]:
        return {p: self.states[p][0] for p in sorted(persons) if p in self.states}

    async def decide(self, conn: Any, budgeted: frozenset[str],
                     run: Callable[[BudgetLedger], T]) -> tuple[T, BudgetLedger, dict[str, FundYear]]:
        start = dict(self.funds)
        ledger = BudgetLedger(dict(start))
        return run(ledger), ledger, start

    async def record(self, conn: Any, changes: Changes) -> BudgetLedger:
        granted = {r[10]: (r[8], r[9]) for r in self.decisions if r[1] == "granted"}
        rows = reversal_funds(changes.decisions, {g: granted[g] for g in missing_funds(
            changes.decisions) if g in granted})
        for person, state in changes.states.items():
            self.states[person] = (state_codec.dumps(state), bool(pending_items(state)))
        self.decisions += rows
        for review in changes.reviews:
            self.reviews.setdefault(review.grant_id, review)
        for o in changes.outputs:
            if isinstance(o, SubsidyHeld) and o.grant.grant_id not in self.holds:
                self.holds[o.grant.grant_id] = dict(
                    person_id=o.grant.person_id, agency=o.agency, amount_fen=o.grant.amount_fen,
                    fund=o.grant.fund, checks=list(o.checks), held_on=o.held_on,
                    status="open", ended_by=None)
        for o in changes.outputs:
            end = None
            if isinstance(o, SubsidyGranted) and o.grant_id in changes.released:
                end = (o.grant_id, "released", o.event_id)
            elif isinstance(o, SubsidyRejected) and o.grant_id is not None:
                end = (o.grant_id, "denied" if o.reason.value == "integrity_denied" else "voided",
                       o.event_id)
            if end is not None and self.holds.get(end[0], {}).get("status") == "open":
                self.holds[end[0]].update(status=end[1], ended_by=end[2])
        changed: dict[str, FundYear] = {}
        for key, after in changes.ledger.funds.items():
            before = changes.start.get(key, FundYear())
            if before == after:
                continue
            stored = self.funds.get(key, FundYear())
            self.funds[key] = changed[key] = FundYear(
                stored.committed_fen + after.committed_fen - before.committed_fen,
                tuple(sorted(set(stored.thresholds_emitted_bp) | set(after.thresholds_emitted_bp))))
        return BudgetLedger(changed)

