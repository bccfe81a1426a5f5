"""The enrollment service's database: its tables (the single source of its schema, with the
runtime's tables in ``shared/runtime/tables.py``).

Below them, its unit of work (section "Unit of work"): what a batch loads before deciding
and records after, on PostgreSQL and in memory."""

from __future__ import annotations

import copy
import datetime as dt
import itertools
from collections.abc import Callable, Iterable
from dataclasses import replace
from decimal import Decimal
from typing import Any, Protocol

import asyncpg
import orjson
import sqlalchemy as sa
from cryptography.fernet import Fernet, MultiFernet
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import registry
from sqlmodel import SQLModel

from shared.runtime import db, pending
from shared.runtime.tables import NOW, TIMESTAMPTZ, column, serial
from services.enrollment.domain import (
    CLOSING,
    Attend,
    Changes,
    Command,
    Enrol,
    Enrollment,
    Month,
    Snapshot,
)

# Tables
# Trainees (identity protected), enrollments, attendance, work-for-training months, rejections,
# integrity flags and the lookup audit. Columns in table order; a change here needs an Alembic
# revision (README, "Migrations").

class EnrollmentTable(SQLModel, registry=registry()):
    """The base of this database's tables: a metadata of its own (one per service database, so
    two services may each have a table of the same name)."""

METADATA: sa.MetaData = EnrollmentTable.metadata


class TraineeRow(EnrollmentTable, table=True):
    __tablename__ = "trainee"
    person_id: str = column(sa.Text, primary_key=True)
    national_id_enc: bytes = column(sa.LargeBinary)  # Fernet ciphertext; the plain id never leaves ingress
    name_enc: bytes = column(sa.LargeBinary)
    first_seen: dt.datetime | None = column(TIMESTAMPTZ, server_default=NOW)


class EnrollmentRow(EnrollmentTable, table=True):
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


class AttendanceRow(EnrollmentTable, table=True):
    __tablename__ = "attendance"
    enrollment_ref: str = column(sa.Text, primary_key=True)
    date: dt.date = column(sa.Date, primary_key=True)
    hours: Decimal = column(sa.Numeric)


class WorkMonthRow(EnrollmentTable, table=True):
    __tablename__ = "work_month"
    enrollment_ref: str = column(sa.Text, primary_key=True)
    month: str = column(sa.Text, primary_key=True)
    wages_fen: int = column(sa.BigInteger)
    month_index: int = column(sa.Integer)


class EnrollmentRejectionRow(EnrollmentTable, table=True):
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


class EnrollmentFlagRow(EnrollmentTable, table=True):
    """At most one EnrollmentFlagged per enrollment and check (POLICY.md §6)."""

    __tablename__ = "enrollment_flag"
    __table_args__ = (sa.Index("enrollment_flag_person", "person_id"),)
    enrollment_ref: str = column(sa.Text, primary_key=True)
    integrity_check: str = column(sa.Text, primary_key=True)  # daily_hours_exceeded | far_outside_plan
    person_id: str = column(sa.Text)
    flagged_on: dt.date = column(sa.Date)  # the attendance date that tripped the check
    detail: str = column(sa.Text)


class LookupAuditRow(EnrollmentTable, table=True):
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


# Unit of work
# The enrollment service's unit of work: what a batch loads before deciding and records after.
#
# `EnrollmentStore` is the port the handler sees: `load` locks and reads, in one pass of batched
# statements, everything the batch's commands touch (a `domain.Snapshot`); `record` writes the
# batch's `domain.Changes` with bulk statements. `PostgresEnrollmentStore` is the service's
# (asyncpg, ``unnest``/``COPY``, advisory locks on every ref and person of the batch);
# `MemoryEnrollmentStore` keeps the same tables in dictionaries for fast handler tests, and one
# contract test (tests/unit/enrollment/test_store_contract.py) runs both, so it cannot drift.

# A stored parked record as the command it is (the handler's translation of the record).
Translate = Callable[[Any], Command]

# A person's attendance on given dates over all their enrollments (every institution, agency).
# Driven from the batch's (person, date) pairs through the indexes (enrollment by person,
# attendance by (enrollment_ref, date)): LATERAL keeps the planner from hashing whole tables,
# which made every batch slower as the history grew (2.7 s a batch at 6,000 persons). The
# ``OFFSET 0`` keeps the planner from flattening the attendance subquery: flattened, it probed
# the attendance index by enrollment_ref alone and filtered every date of the enrollment
# afterwards (321 against 122 ms for a 5,000-pair batch, EXPLAIN ANALYZE at 20,000 persons).
# The integrity checks' daily hours (POLICY.md §6), in two steps: the enrollments of the batch's
# persons (one index probe a person, not one per (person, date) pair as before: a batch holds
# a person's attendance for many dates), then the stored hours of the dates of only the persons
# with two or more enrollments (see Snapshot.day_hours). OFFSET 0 keeps the attendance probe on
# its primary key (enrollment_ref, date): the planner flattened such a subquery and probed by
# enrollment_ref alone, filtering every date afterwards.
PERSONS_ENROLLMENTS = (
    "SELECT person_id, enrollment_ref, agency FROM enrollment WHERE person_id = ANY($1::text[])"
)
DAY_HOURS = (
    "SELECT p.enrollment_ref, p.date, a.hours"
    " FROM unnest($1::text[], $2::date[]) AS p(enrollment_ref, date)"
    " CROSS JOIN LATERAL (SELECT attendance.hours FROM attendance"
    "  WHERE attendance.enrollment_ref = p.enrollment_ref AND attendance.date = p.date"
    "  OFFSET 0) AS a"
)


# Every column of the enrollment table but ``accepted`` (loaded only where needed).
ENROLLMENT_COLUMNS = (
    "enrollment_ref, agency, person_id, institution_id, course_id, start_date, end_date,"
    " planned_hours, status, closed_on, hours_attended, days_attended, event_time"
)


class EnrollmentStore(Protocol):
    async def load(self, conn: Any, commands: list[Command], translate: Translate) -> Snapshot:
        """Lock and read what ``commands`` touch (see `domain.Snapshot`); ``translate`` turns
        the stored parked records that wait for an enrollment enrolled now into commands."""

    async def record(self, conn: Any, changes: Changes) -> None:
        """Write a batch's changes (in the batch's transaction)."""


def enrolled_persons(commands: Iterable[Command]) -> dict[str, set[str]]:
    """The persons (valid national ids) each enrolled ref is enrolled for in the batch."""
    found: dict[str, set[str]] = {}
    for c in commands:
        if isinstance(c, Enrol) and c.person_id is not None:
            found.setdefault(c.enrollment_ref, set()).add(c.person_id)
    return found


def day_pairs(snapshot: Snapshot, commands: Iterable[Command],
              enrolled: dict[str, set[str]]) -> set[tuple[str, dt.date]]:
    """Every (person, date) an attendance of the batch (or one waiting) may count for."""
    pairs: set[tuple[str, dt.date]] = set()
    waiting = (c for rows in snapshot.waiting.values() for _, c in rows)
    for c in itertools.chain(commands, waiting):
        if isinstance(c, Attend):
            enr = snapshot.enrollments.get(c.enrollment_ref)
            for pid in ({enr.person_id} if enr is not None else enrolled.get(c.enrollment_ref, ())):
                pairs.add((pid, c.date))
    return pairs


def with_several(stored: dict[str, set[str]], enrolled: dict[str, set[str]]) -> set[str]:
    """The persons with two or more enrollments, stored (person -> refs) or enrolled by the
    batch (ref -> persons): only theirs need stored hours for a day (Snapshot.day_hours)."""
    found = {pid: set(refs) for pid, refs in stored.items()}
    for ref, persons in enrolled.items():
        for pid in persons:
            found.setdefault(pid, set()).add(ref)
    return {pid for pid, refs in found.items() if len(refs) > 1}


def checked_persons(snapshot: Snapshot, pairs: set[tuple[str, dt.date]],
                    enrolled: dict[str, set[str]]) -> set[str]:
    """The persons whose flags the batch needs: those of its attendance, and those who enrol
    an enrollment with parked records (replayed attendance)."""
    persons = {p for p, _ in pairs}
    for ref in snapshot.waiting:
        persons |= enrolled.get(ref, set())
    return persons


class PostgresEnrollmentStore:
    """The unit of work on the service's database (asyncpg; call inside the batch's transaction)."""

    def __init__(self, fernet: Fernet | MultiFernet, topic_prefix: str = "") -> None:
        self.fernet = fernet
        self.topic_prefix = topic_prefix

    async def load(self, conn: asyncpg.Connection, commands: list[Command],
                   translate: Translate) -> Snapshot:
        snapshot = Snapshot()
        refs = {c.enrollment_ref for c in commands}
        enrolled_refs = [c.enrollment_ref for c in commands if isinstance(c, Enrol)]
        enrolled = enrolled_persons(commands)
        persons = set().union(*enrolled.values())
        # The persons of known enrollments whose attendance this batch records (a person_id
        # never changes, so it is read before locking): their locks are taken with the rest, in
        # one sorted statement, and the integrity checks need them.
        attending = [c.enrollment_ref for c in commands if isinstance(c, Attend)]
        for row in await db.fetch_for(
            conn, attending,
            "SELECT DISTINCT person_id FROM enrollment WHERE enrollment_ref = ANY($1::text[])",
        ):
            persons.add(row["person_id"])
        # Upstream producers are not ours: one enrollment_ref can arrive on two partitions, one
        # person's enrollments under several refs on several, each held by another replica.
        # Locking every ref and person of the batch (rows or not yet) before reading makes the
        # duplicate rules see every earlier acceptance, whatever partition it came in on, keeps
        # a record from being parked just after its enrollment was stored elsewhere, and lets
        # the daily-hours check see every hour of the person's day (POLICY.md §6).
        await db.lock_keys(conn, [f"ref:{r}" for r in refs] + [f"person:{p}" for p in persons])
        for row in await db.fetch_for(
            conn, enrolled_refs,
            "SELECT seq, ref, topic, partition, \"offset\", key, value FROM pending "
            "WHERE ref = ANY($1::text[]) ORDER BY seq FOR UPDATE",
        ):
            snapshot.waiting.setdefault(row["ref"], []).append(
                (row["seq"], translate(pending.incoming(row, self.topic_prefix))))
        closing = [c.enrollment_ref for c in commands if isinstance(c, CLOSING)]
        # The accepted payload only of the enrollments the batch may close (TrainingCompleted
        # repeats its course): read, sent and decoded for every attended enrollment it was 4 %
        # of the service's CPU.
        rows = await conn.fetch(
            f"SELECT {ENROLLMENT_COLUMNS}, CASE WHEN enrollment_ref = ANY($3::text[])"
            " THEN accepted END AS accepted FROM enrollment WHERE enrollment_ref = ANY($1::text[]) "
            "OR person_id = ANY($2::text[]) ORDER BY enrollment_ref FOR UPDATE",
            list(refs), list(set().union(*enrolled.values())), closing,
        )
        for row in rows:
            snapshot.enrollments[row["enrollment_ref"]] = _from_row(row)
        for ref in closing:
            # Known to be complete once the bulk query below has run.
            if ref in snapshot.enrollments:
                snapshot.enrollments[ref].attendance = {}
        for row in await db.fetch_for(
            conn, closing,
            "SELECT enrollment_ref, date, hours FROM attendance WHERE enrollment_ref = ANY($1::text[])",
        ):
            enr = snapshot.enrollments.get(row["enrollment_ref"])
            if enr is not None and enr.attendance is not None:
                enr.attendance[row["date"]] = row["hours"]
        month_refs = [c.enrollment_ref for c in commands if isinstance(c, Month)]
        for row in await db.fetch_for(
            conn, month_refs,
            "SELECT enrollment_ref, month, wages_fen, month_index FROM work_month "
            "WHERE enrollment_ref = ANY($1::text[])",
        ):
            enr = snapshot.enrollments.get(row["enrollment_ref"])
            if enr is not None:
                if enr.months is None:
                    enr.months = {}
                enr.months[row["month"]] = (row["wages_fen"], row["month_index"])
        # The integrity checks (POLICY.md §6): the flags of the persons involved and their hours
        # on the batch's dates over all their enrollments, under their locks (taken above; a
        # person seen only now is locked the same way). Without the lock two replicas could
        # each record one of a person's enrollments for a date and neither see the other's.
        pairs = day_pairs(snapshot, commands, enrolled)
        checked = checked_persons(snapshot, pairs, enrolled)
        await db.lock_keys(conn, [f"person:{p}" for p in checked - persons])
        if checked:
            for row in await conn.fetch(
                "SELECT enrollment_ref, integrity_check FROM enrollment_flag "
                "WHERE person_id = ANY($1::text[])", list(checked),
            ):
                snapshot.flagged.add((row["enrollment_ref"], row["integrity_check"]))
        for pair in pairs:
            snapshot.day_hours[pair] = {}
        if pairs:
            theirs: dict[str, list[tuple[str, str]]] = {}
            for row in await conn.fetch(PERSONS_ENROLLMENTS, list({pid for pid, _ in pairs})):
                theirs.setdefault(row["person_id"], []).append((row["enrollment_ref"], row["agency"]))
            several = with_several({pid: {r for r, _ in refs} for pid, refs in theirs.items()},
                                   enrolled)
            probes = {(ref, day): (pid, agency) for pid, day in pairs if pid in several
                      for ref, agency in theirs.get(pid, ())}
            if probes:
                keys = list(probes)
                for row in await conn.fetch(DAY_HOURS, [k[0] for k in keys], [k[1] for k in keys]):
                    ref, day = row["enrollment_ref"], row["date"]
                    pid, agency = probes[(ref, day)]
                    snapshot.day_hours[(pid, day)][ref] = row["hours"]
                    snapshot.agency_of[ref] = agency
        return snapshot

    async def record(self, conn: asyncpg.Connection, changes: Changes) -> None:
        if changes.replayed:
            await conn.execute("DELETE FROM pending WHERE seq = ANY($1::bigint[])", changes.replayed)
        if changes.trainees:
            # Sealed at rest: the plain national id and name never reach the database.
            sealed = [(self.fernet.encrypt(nid.encode()), self.fernet.encrypt(name.encode()))
                      for nid, name in changes.trainees.values()]
            await conn.execute(
                "INSERT INTO trainee (person_id, national_id_enc, name_enc) "
                "SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[]) ON CONFLICT DO NOTHING",
                list(changes.trainees), [v[0] for v in sealed], [v[1] for v in sealed],
            )
        dirty = changes.enrollments
        if dirty:
            await conn.execute(
                "INSERT INTO enrollment (enrollment_ref, agency, person_id, institution_id, course_id,"
                " start_date, end_date, planned_hours, accepted, status, closed_on, hours_attended,"
                " days_attended, event_time) "
                "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],"
                " $6::date[], $7::date[], $8::int[], $9::jsonb[], $10::text[], $11::date[],"
                " $12::numeric[], $13::int[], $14::timestamptz[]) "
                "ON CONFLICT (enrollment_ref) DO UPDATE SET status = excluded.status,"
                " closed_on = excluded.closed_on, hours_attended = excluded.hours_attended,"
                " days_attended = excluded.days_attended",
                [e.enrollment_ref for e in dirty], [e.agency for e in dirty],
                [e.person_id for e in dirty], [e.institution_id for e in dirty],
                [e.course_id for e in dirty], [e.start_date for e in dirty],
                [e.end_date for e in dirty], [e.planned_hours for e in dirty],
                [orjson.dumps(e.accepted).decode() for e in dirty], [e.status for e in dirty],
                [e.closed_on for e in dirty], [e.hours_attended for e in dirty],
                [e.days_attended for e in dirty], [e.event_time for e in dirty],
            )
        if changes.attendance:
            keys = list(changes.attendance)
            await conn.execute(
                "INSERT INTO attendance (enrollment_ref, date, hours) "
                "SELECT * FROM unnest($1::text[], $2::date[], $3::numeric[]) "
                "ON CONFLICT (enrollment_ref, date) DO UPDATE SET hours = excluded.hours",
                [k[0] for k in keys], [k[1] for k in keys], [changes.attendance[k] for k in keys],
            )
        if changes.months:
            await conn.copy_records_to_table(
                "work_month", records=changes.months,
                columns=("enrollment_ref", "month", "wages_fen", "month_index"),
            )
        if changes.rejections:
            columns = list(zip(*changes.rejections, strict=True))
            await conn.execute(
                "INSERT INTO enrollment_rejection (source, id, enrollment_ref, person_id, reason,"
                " detail, agency) SELECT * FROM unnest($1::text[], $2::text[], $3::text[],"
                " $4::text[], $5::text[], $6::text[], $7::text[]) ON CONFLICT DO NOTHING",
                *(list(c) for c in columns),
            )
        if changes.flags:
            columns = list(zip(*changes.flags, strict=True))
            await conn.execute(
                "INSERT INTO enrollment_flag (enrollment_ref, integrity_check, person_id,"
                " flagged_on, detail) SELECT * FROM unnest($1::text[], $2::text[], $3::text[],"
                " $4::date[], $5::text[]) ON CONFLICT DO NOTHING",
                *(list(c) for c in columns),
            )
        await pending.park(conn, changes.parked)


def _from_row(row: asyncpg.Record) -> Enrollment:
    return Enrollment(
        enrollment_ref=row["enrollment_ref"], agency=row["agency"], person_id=row["person_id"],
        institution_id=row["institution_id"], course_id=row["course_id"],
        start_date=row["start_date"], end_date=row["end_date"],
        planned_hours=row["planned_hours"],
        accepted=orjson.loads(row["accepted"]) if row["accepted"] is not None else None,
        event_time=row["event_time"], status=row["status"], closed_on=row["closed_on"],
        hours_attended=row["hours_attended"], days_attended=row["days_attended"],
    )


class MemoryEnrollmentStore:
    """The same tables in dictionaries (no locks: one batch at a time); ``conn`` is ignored.
    ``trainees`` keeps the clear values (nothing is at rest here)."""

    def __init__(self) -> None:
        self.enrollments: dict[str, Enrollment] = {}
        self.attendance: dict[tuple[str, dt.date], Decimal] = {}
        self.months: dict[tuple[str, str], tuple[int, int]] = {}
        self.trainees: dict[str, tuple[str, str]] = {}
        self.rejections: dict[tuple[str, str], tuple[str, str, str, str | None, str, str, str]] = {}
        self.flags: dict[tuple[str, str], tuple[str, str, str, dt.date, str]] = {}
        self.pending: list[tuple[int, str, Any]] = []  # (seq, ref, record as it came)
        self.seq = itertools.count(1)

    async def load(self, conn: Any, commands: list[Command], translate: Translate) -> Snapshot:
        snapshot = Snapshot()
        refs = {c.enrollment_ref for c in commands}
        enrolled_refs = {c.enrollment_ref for c in commands if isinstance(c, Enrol)}
        enrolled = enrolled_persons(commands)
        persons = set().union(*enrolled.values())
        for seq, ref, cause in self.pending:
            if ref in enrolled_refs:
                snapshot.waiting.setdefault(ref, []).append((seq, translate(cause)))
        closing = {c.enrollment_ref for c in commands if isinstance(c, CLOSING)}
        for ref in sorted(self.enrollments):
            enr = self.enrollments[ref]
            if ref in refs or enr.person_id in persons:
                snapshot.enrollments[ref] = replace(
                    enr, accepted=copy.deepcopy(enr.accepted) if ref in closing else None)
        for ref in closing:
            if ref in snapshot.enrollments:
                snapshot.enrollments[ref].attendance = {
                    d: h for (r, d), h in self.attendance.items() if r == ref}
        for ref in {c.enrollment_ref for c in commands if isinstance(c, Month)}:
            if ref in snapshot.enrollments:
                snapshot.enrollments[ref].months = {
                    m: v for (r, m), v in self.months.items() if r == ref} or None
        pairs = day_pairs(snapshot, commands, enrolled)
        checked = checked_persons(snapshot, pairs, enrolled)
        snapshot.flagged = {k for k, f in self.flags.items() if f[2] in checked}
        stored: dict[str, set[str]] = {}
        for e in self.enrollments.values():
            stored.setdefault(e.person_id, set()).add(e.enrollment_ref)
        several = with_several(stored, enrolled)
        for pid, day in pairs:
            snapshot.day_hours[(pid, day)] = hours = {}
            if pid not in several:
                continue  # one enrollment: no stored hours of the day can count (Snapshot.day_hours)
            for enr in self.enrollments.values():
                if enr.person_id == pid and (enr.enrollment_ref, day) in self.attendance:
                    hours[enr.enrollment_ref] = self.attendance[(enr.enrollment_ref, day)]
                    snapshot.agency_of[enr.enrollment_ref] = enr.agency
        return snapshot

    async def record(self, conn: Any, changes: Changes) -> None:
        replayed = set(changes.replayed)
        self.pending = [p for p in self.pending if p[0] not in replayed]
        for pid, values in changes.trainees.items():
            self.trainees.setdefault(pid, values)
        for enr in changes.enrollments:
            known = self.enrollments.get(enr.enrollment_ref)
            if known is None:
                known = replace(enr, accepted=copy.deepcopy(enr.accepted))
            known.status, known.closed_on = enr.status, enr.closed_on
            known.hours_attended, known.days_attended = enr.hours_attended, enr.days_attended
            known.attendance = known.months = None
            known.dirty = known.new = False
            self.enrollments[enr.enrollment_ref] = known
        self.attendance.update(changes.attendance)
        for ref, month, wages, index in changes.months:
            if (ref, month) in self.months:
                raise KeyError(f"work_month ({ref}, {month}) exists")  # the primary key
            self.months[(ref, month)] = (wages, index)
        for row in changes.rejections:
            self.rejections.setdefault((row[0], row[1]), row)
        for flag in changes.flags:
            self.flags.setdefault((flag[0], flag[1]), flag)
        self.pending += [(next(self.seq), ref, cause) for ref, cause in changes.parked]
