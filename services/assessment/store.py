"""The assessment service's database: its tables (the single source of its schema, with the
runtime's tables in ``shared/runtime/tables.py``).

Below them, its unit of work (section "Unit of work"): what a batch loads before deciding
and records after, on PostgreSQL and in memory."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, Protocol

import asyncpg
import sqlalchemy as sa
from sqlalchemy.orm import registry
from sqlmodel import SQLModel

from shared.runtime import db, pending
from shared.runtime.tables import column
from services.assessment.domain import (
    CERTIFICATE,
    ENROLLMENT,
    Assessment,
    Certificate,
    Changes,
    Command,
    Enrollment,
    RecordResult,
    Snapshot,
    awaited,
    keys,
)

# Tables
# Enrollments (as far as assessments need them), assessment results and certificates. No
# national id or name is stored: person_id is the keyed hash (EVENTS.md §3). Columns in table
# order; a change here needs an Alembic revision (README, "Migrations").

class AssessmentTable(SQLModel, registry=registry()):
    """The base of this database's tables: a metadata of its own (one per service database, so
    two services may each have a table of the same name)."""

METADATA: sa.MetaData = AssessmentTable.metadata


class EnrollmentRow(AssessmentTable, table=True):
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


class AssessmentRow(AssessmentTable, table=True):
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


class CertificateRow(AssessmentTable, table=True):
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


# Unit of work
# The assessment service's unit of work: what a batch loads before deciding and records after.
#
# `AssessmentStore` is the port the handler sees: `load` locks the batch's keys, takes the parked
# records its commands release and reads every enrollment, assessment and certificate they (and
# the released ones) touch, as a `domain.Snapshot`; `record` writes the batch's `domain.Changes`
# with bulk statements. `PostgresAssessmentStore` is the service's (asyncpg, ``unnest``/``COPY``,
# transaction-scoped advisory locks); `MemoryAssessmentStore` keeps the same tables in
# dictionaries for fast handler tests, and one contract test
# (tests/unit/assessment/test_store_contract.py) runs both, so it cannot drift.

# A stored parked record as the command it is (the handler's translation of the record).
Translate = Callable[[Any], Command]

# Batches hold it shared, the expiry sweep exclusively: a record is never replayed and expired
# at the same time.
SWEEP_LOCK = 7261003


class AssessmentStore(Protocol):
    async def load(self, conn: Any, commands: list[Command], translate: Translate) -> Snapshot:
        """Lock what ``commands`` touch, take the parked records they release (``translate``
        turns a stored record into its command) and read the state of all of them."""

    async def record(self, conn: Any, changes: Changes) -> None:
        """Write a batch's changes (in the batch's transaction)."""


def _split(found: Iterable[str]) -> tuple[list[str], list[str]]:
    found = list(found)
    return ([k.removeprefix(ENROLLMENT) for k in found if k.startswith(ENROLLMENT)],
            [k.removeprefix(CERTIFICATE) for k in found if k.startswith(CERTIFICATE)])


class PostgresAssessmentStore:
    """The unit of work on the service's database (asyncpg; call inside the batch's transaction)."""

    def __init__(self, topic_prefix: str = "") -> None:
        self.topic_prefix = topic_prefix

    async def load(self, conn: asyncpg.Connection, commands: list[Command],
                   translate: Translate) -> Snapshot:
        snapshot = Snapshot()
        await self._lock(conn, keys(commands), sweep=True)
        waiting = await self._take(conn, snapshot, awaited(commands), translate)
        # Results waiting for an enrollment that arrives now may issue certificates whose
        # revocations wait too.
        more = [k for k in awaited(c for c in waiting if isinstance(c, RecordResult))
                if k.startswith(CERTIFICATE) and k not in snapshot.waiting]
        if more:
            await self._lock(conn, more)
            waiting += await self._take(conn, snapshot, more, translate)
        everything = commands + waiting
        enrollment_refs, certificate_ids = _split(keys(everything))
        assessment_refs = [c.assessment_ref for c in everything if isinstance(c, RecordResult)]
        for row in await db.fetch_for(
            conn, enrollment_refs,
            "SELECT * FROM enrollment WHERE enrollment_ref = ANY($1::text[])",
        ):
            snapshot.enrollments[row["enrollment_ref"]] = Enrollment(
                row["enrollment_ref"], row["person_id"], row["occupation_code"], row["level"],
                row["start_date"], row["agency"], row["status"], row["withdrawn_on"],
            )
        for row in await db.fetch_for(
            conn, assessment_refs,
            "SELECT assessment_ref, digest, status, agency FROM assessment "
            "WHERE assessment_ref = ANY($1::text[])",
        ):
            snapshot.assessments[row["assessment_ref"]] = Assessment(
                row["assessment_ref"], bytes(row["digest"]), row["status"], row["agency"]
            )
        for row in await db.fetch_for(
            conn, certificate_ids,
            "SELECT * FROM certificate WHERE certificate_id = ANY($1::text[])",
        ):
            snapshot.certificates[row["certificate_id"]] = Certificate(
                row["certificate_id"], row["assessment_ref"], row["person_id"],
                row["enrollment_ref"], row["occupation_code"], row["level"],
                row["certificate_kind"], row["issued_on"], row["status"], row["revoked_on"],
                row["revoke_reason"],
            )
        return snapshot

    @staticmethod
    async def _lock(conn: asyncpg.Connection, found: Iterable[str], sweep: bool = False) -> None:
        # Consumers of other partitions may touch the same enrollment or certificate; per-key
        # locks, taken in one sorted pass, keep a record from being parked just after the
        # thing it waits for was stored and its waiting records taken. ``sweep``: first the
        # shared side of the sweep's lock, in the same statement (one round trip).
        per_key = (
            "(SELECT count(pg_advisory_xact_lock(k)) FROM "
            "(SELECT DISTINCT hashtextextended(x, 0) AS k FROM unnest($1::text[]) x ORDER BY 1) s)"
        )
        if sweep:
            await conn.execute(
                f"SELECT pg_advisory_xact_lock_shared($2), {per_key}", sorted(set(found)), SWEEP_LOCK
            )
        else:
            await conn.execute(f"SELECT {per_key}", sorted(set(found)))

    async def _take(self, conn: asyncpg.Connection, snapshot: Snapshot, refs: list[str],
                    translate: Translate) -> list[Command]:
        if not refs:
            return []
        rows = await conn.fetch(
            "SELECT seq, ref, topic, partition, \"offset\", key, value FROM pending "
            "WHERE ref = ANY($1::text[]) ORDER BY seq FOR UPDATE",
            refs,
        )
        taken = []
        for r in rows:
            command = translate(pending.incoming(r, self.topic_prefix))
            snapshot.waiting.setdefault(r["ref"], []).append((r["seq"], command))
            taken.append(command)
        for ref in refs:
            snapshot.waiting.setdefault(ref, [])
        return taken

    async def record(self, conn: asyncpg.Connection, changes: Changes) -> None:
        if changes.enrollments:
            await conn.execute(
                "INSERT INTO enrollment (enrollment_ref, person_id, occupation_code, level,"
                " start_date, agency, status, withdrawn_on) "
                "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::date[],"
                " $6::text[], $7::text[], $8::date[]) "
                "ON CONFLICT (enrollment_ref) DO UPDATE SET status = excluded.status,"
                " withdrawn_on = excluded.withdrawn_on",
                *_columns(changes.enrollments, "enrollment_ref", "person_id", "occupation_code",
                          "level", "start_date", "agency", "status", "withdrawn_on"),
            )
        if changes.assessments:
            results = [a.result for a in changes.assessments]
            assert all(r is not None for r in results)
            await conn.execute(
                "INSERT INTO assessment (assessment_ref, digest, status, agency, person_id,"
                " evaluator_id, enrollment_ref, occupation_code, level, certificate_kind, passed,"
                " assessed_on) "
                "SELECT * FROM unnest($1::text[], $2::bytea[], $3::text[], $4::text[], $5::text[],"
                " $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::bool[],"
                " $12::date[]) "
                "ON CONFLICT (assessment_ref) DO UPDATE SET status = excluded.status",
                *_columns(changes.assessments, "assessment_ref", "digest", "status", "agency"),
                *_columns(results, "person_id", "evaluator_id", "enrollment_ref",
                          "occupation_code", "level", "certificate_kind", "passed", "assessed_on"),
            )
        if changes.certificates:
            await conn.execute(
                "INSERT INTO certificate (certificate_id, assessment_ref, person_id, enrollment_ref,"
                " occupation_code, level, certificate_kind, issued_on, status, revoked_on,"
                " revoke_reason) "
                "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],"
                " $6::text[], $7::text[], $8::date[], $9::text[], $10::date[], $11::text[]) "
                "ON CONFLICT (certificate_id) DO UPDATE SET status = excluded.status,"
                " revoked_on = excluded.revoked_on, revoke_reason = excluded.revoke_reason",
                *_columns(changes.certificates, "certificate_id", "assessment_ref", "person_id",
                          "enrollment_ref", "occupation_code", "level", "certificate_kind",
                          "issued_on", "status", "revoked_on", "revoke_reason"),
            )
        if changes.consumed:
            await conn.execute("DELETE FROM pending WHERE seq = ANY($1::bigint[])", changes.consumed)
        await pending.park(conn, changes.parked)


def _columns(rows: list[Any], *names: str) -> list[list[Any]]:
    return [[getattr(r, n) for r in rows] for n in names]


class MemoryAssessmentStore:
    """The same tables in dictionaries (no locks: one batch at a time); ``conn`` is ignored."""

    def __init__(self) -> None:
        self.enrollments: dict[str, Enrollment] = {}
        self.assessments: dict[str, Assessment] = {}  # with the result that was stored
        self.certificates: dict[str, Certificate] = {}
        self.pending: list[tuple[int, str, Any]] = []  # (seq, key, record as it came)
        self.seq = itertools.count(1)

    async def load(self, conn: Any, commands: list[Command], translate: Translate) -> Snapshot:
        snapshot = Snapshot()
        waiting = self._take(snapshot, awaited(commands), translate)
        more = [k for k in awaited(c for c in waiting if isinstance(c, RecordResult))
                if k.startswith(CERTIFICATE) and k not in snapshot.waiting]
        waiting += self._take(snapshot, more, translate)
        everything = commands + waiting
        enrollment_refs, certificate_ids = _split(keys(everything))
        for ref in enrollment_refs:
            if ref in self.enrollments:
                snapshot.enrollments[ref] = replace(self.enrollments[ref], dirty=False)
        for c in everything:
            if isinstance(c, RecordResult) and c.assessment_ref in self.assessments:
                snapshot.assessments[c.assessment_ref] = replace(
                    self.assessments[c.assessment_ref], result=None, dirty=False)
        for cid in certificate_ids:
            if cid in self.certificates:
                snapshot.certificates[cid] = replace(self.certificates[cid], dirty=False)
        return snapshot

    def _take(self, snapshot: Snapshot, refs: list[str], translate: Translate) -> list[Command]:
        taken = []
        for seq, ref, cause in self.pending:
            if ref in refs and all(s != seq for s, _ in snapshot.waiting.get(ref, [])):
                command = translate(cause)
                snapshot.waiting.setdefault(ref, []).append((seq, command))
                taken.append(command)
        for ref in refs:
            snapshot.waiting.setdefault(ref, [])
        return taken

    async def record(self, conn: Any, changes: Changes) -> None:
        for enr in changes.enrollments:
            known = self.enrollments.get(enr.enrollment_ref)
            self.enrollments[enr.enrollment_ref] = (
                replace(enr, dirty=False) if known is None
                else replace(known, status=enr.status, withdrawn_on=enr.withdrawn_on))
        for a in changes.assessments:
            assert a.result is not None
            known_a = self.assessments.get(a.assessment_ref)
            self.assessments[a.assessment_ref] = (
                replace(a, dirty=False) if known_a is None else replace(known_a, status=a.status))
        for cert in changes.certificates:
            known_c = self.certificates.get(cert.certificate_id)
            self.certificates[cert.certificate_id] = (
                replace(cert, dirty=False) if known_c is None
                else replace(known_c, status=cert.status, revoked_on=cert.revoked_on,
                             revoke_reason=cert.revoke_reason))
        consumed = set(changes.consumed)
        self.pending = [p for p in self.pending if p[0] not in consumed]
        self.pending += [(next(self.seq), ref, cause) for ref, cause in changes.parked]
