"""Batch handler of skills.training.upstream: load the batch's enrollments, decide, store, emit.

One call per Kafka batch inside the batch's transaction (see shared.runtime.consumer). Records
that refer to an enrollment not seen yet are parked in ``pending`` and replayed, in arrival
order, when the enrollment arrives; the sweep dead-letters them after the waiting period.
Attendance runs the integrity checks of POLICY.md §6 (``EnrollmentFlagged``, once per
enrollment and check): the person's hours on other enrollments, which may be on other
partitions and other replicas, are read under a per-person advisory lock.
"""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal

import asyncpg
import orjson
from cryptography.fernet import Fernet, MultiFernet

from shared.contract import events as ev
from shared.contract import topics
from shared.contract.identity import normalise_national_id, person_id
from shared.runtime import crypto, db, pending
from shared.runtime.consumer import Handler, Incoming
from shared.runtime.outbox import Outbox
from services.enrollment import domain
from services.enrollment.config import EnrollmentSettings
from services.enrollment.domain import Enrollment, Refusal

log = logging.getLogger(__name__)

ENROLLED = "skills.training.TraineeEnrolled.v1"
ATTENDANCE = "skills.training.AttendanceRecorded.v1"
FINISHED = "skills.training.TrainingFinished.v1"
WITHDRAWN = "skills.training.EnrollmentWithdrawn.v1"
MONTH = "skills.training.WorkTrainingMonthRecorded.v1"

# Transaction-scoped locks on persons, taken in one order (sorted keys) so that two batches
# never wait on each other in a cycle; the same key as every per-person lock of the services.
# A person's attendance on given dates over all their enrollments (every institution, agency).
# Driven from the batch's (person, date) pairs through the indexes (enrollment by person,
# attendance by (enrollment_ref, date)): LATERAL keeps the planner from hashing whole tables,
# which made every batch slower as the history grew (2.7 s a batch at 6,000 persons).
PERSON_DAYS = (
    "SELECT p.person_id, e.enrollment_ref, e.agency, a.date, a.hours"
    " FROM (SELECT DISTINCT * FROM unnest($1::text[], $2::date[])) AS p(person_id, date)"
    " CROSS JOIN LATERAL (SELECT enrollment_ref, agency FROM enrollment"
    "  WHERE enrollment.person_id = p.person_id) AS e"
    " CROSS JOIN LATERAL (SELECT attendance.date, attendance.hours FROM attendance"
    "  WHERE attendance.enrollment_ref = e.enrollment_ref AND attendance.date = p.date) AS a"
)


class Batch:
    """The state of one batch: enrollments by ref, and the writes collected for the end."""

    def __init__(self, conn: asyncpg.Connection, out: Outbox, settings: EnrollmentSettings,
                 fernet: Fernet | MultiFernet, catalogues: domain.Catalogues) -> None:
        self.conn = conn
        self.out = out
        self.settings = settings
        self.fernet = fernet
        self.catalogues = catalogues
        self.enrollments: dict[str, Enrollment] = {}
        self.by_person: dict[str, list[Enrollment]] = {}
        self.trainees: dict[str, tuple[bytes, bytes]] = {}
        self.attendance: dict[tuple[str, dt.date], Decimal] = {}
        self.months: list[tuple[str, str, int, int]] = []
        self.rejections: list[tuple[str, str, str, str | None, str, str, str]] = []
        self.parked: list[tuple[str, Incoming]] = []
        self.waiting: dict[str, list[asyncpg.Record]] = {}  # stored pending rows by ref
        self.replayed: list[int] = []  # pending rows applied in this batch (deleted at store)
        # Integrity checks: (person, date) -> enrollment ref -> hours, loaded under the person's
        # lock; flags known (stored or new) and the new ones to store.
        self.day_hours: dict[tuple[str, dt.date], dict[str, Decimal]] = {}
        self.agency_of: dict[str, str] = {}
        self.locked: set[str] = set()  # persons whose flags are loaded
        self.advisory: set[str] = set()  # persons whose advisory lock this transaction holds
        self.flagged: set[tuple[str, str]] = set()
        self.flags: list[tuple[str, str, str, dt.date, str]] = []

    # ---- loading ----------------------------------------------------------------------

    async def load(self, items: list[Incoming]) -> None:
        refs = {i.event.data.enrollment_ref for i in items}  # type: ignore[attr-defined]
        enrolled = [i.event.data.enrollment_ref for i in items if i.event.type == ENROLLED]  # type: ignore[attr-defined]
        persons = set()
        enrolled_pid: dict[str, str] = {}
        for item in items:
            if item.event.type == ENROLLED:
                try:
                    nid = normalise_national_id(item.event.data.trainee.national_id)  # type: ignore[attr-defined]
                    pid = person_id(nid, self.settings.person_id_secret)
                except ValueError:
                    continue
                persons.add(pid)
                enrolled_pid[item.event.data.enrollment_ref] = pid  # type: ignore[attr-defined]
        # The persons of known enrollments whose attendance this batch records (a person_id never
        # changes, so it is read before locking): their locks are taken with the rest, in one
        # sorted statement, and the integrity checks need them (load_checks).
        attending = [i.event.data.enrollment_ref for i in items if i.event.type == ATTENDANCE]  # type: ignore[attr-defined]
        for row in await db.fetch_for(
            self.conn, attending,
            "SELECT DISTINCT person_id FROM enrollment WHERE enrollment_ref = ANY($1::text[])",
        ):
            persons.add(row["person_id"])
        # Upstream producers are not ours: one enrollment_ref can arrive on two partitions, one
        # person's enrollments under several refs on several, each held by another replica.
        # Locking every ref and person of the batch (rows or not yet) before reading makes the
        # duplicate rules see every earlier acceptance, whatever partition it came in on, keeps a
        # record from being parked just after its enrollment was stored elsewhere, and lets the
        # daily-hours check see every hour of the person's day (POLICY.md §6).
        await db.lock_keys(self.conn, [f"ref:{r}" for r in refs] + [f"person:{p}" for p in persons])
        self.advisory |= persons
        for row in await db.fetch_for(
            self.conn, enrolled,
            "SELECT seq, ref, topic, partition, \"offset\", key, value FROM pending "
            "WHERE ref = ANY($1::text[]) ORDER BY seq FOR UPDATE",
        ):
            self.waiting.setdefault(row["ref"], []).append(row)
        rows = await self.conn.fetch(
            "SELECT * FROM enrollment WHERE enrollment_ref = ANY($1::text[]) "
            "OR person_id = ANY($2::text[]) ORDER BY enrollment_ref FOR UPDATE",
            list(refs), list(set(enrolled_pid.values())),
        )
        for row in rows:
            self._remember(_from_row(row))
        closing = [i.event.data.enrollment_ref for i in items if i.event.type in (FINISHED, WITHDRAWN)]  # type: ignore[attr-defined]
        for ref in closing:
            # Known to be complete once the bulk query below has run: no per-enrollment query.
            if ref in self.enrollments and self.enrollments[ref].attendance is None:
                self.enrollments[ref].attendance = {}
        for row in await db.fetch_for(
            self.conn, closing,
            "SELECT enrollment_ref, date, hours FROM attendance WHERE enrollment_ref = ANY($1::text[])",
        ):
            enr = self.enrollments.get(row["enrollment_ref"])
            if enr is not None:
                if enr.attendance is None:
                    enr.attendance = {}
                enr.attendance[row["date"]] = row["hours"]
        month_refs = [i.event.data.enrollment_ref for i in items if i.event.type == MONTH]  # type: ignore[attr-defined]
        for row in await db.fetch_for(
            self.conn, month_refs,
            "SELECT enrollment_ref, month, wages_fen, month_index FROM work_month "
            "WHERE enrollment_ref = ANY($1::text[])",
        ):
            enr = self.enrollments.get(row["enrollment_ref"])
            if enr is not None:
                if enr.months is None:
                    enr.months = {}
                enr.months[row["month"]] = (row["wages_fen"], row["month_index"])
        await self.load_checks(items, enrolled_pid)

    async def load_checks(self, items: list[Incoming], enrolled_pid: dict[str, str]) -> None:
        """Lock every person whose attendance this batch may record, then load their hours on
        the batch's dates over all their enrollments and their flags (POLICY.md §6). Without
        the lock two replicas could each record one of a person's enrollments for a date and
        neither see the other's hours."""
        pairs: set[tuple[str, dt.date]] = set()
        for item in items:
            if item.event.type == ATTENDANCE:
                ref = item.event.data.enrollment_ref  # type: ignore[attr-defined]
                enr = self.enrollments.get(ref)
                pid = enr.person_id if enr is not None else enrolled_pid.get(ref)
                if pid is not None:
                    pairs.add((pid, item.event.data.date))  # type: ignore[attr-defined]
        # Parked attendance is replayed when its enrollment arrives in this batch.
        persons = {p for p, _ in pairs} | {p for ref, p in enrolled_pid.items() if ref in self.waiting}
        await self._lock(persons)
        await self._load_days(pairs)

    async def _lock(self, persons: set[str]) -> None:
        persons -= self.locked
        if not persons:
            return
        # Usually locked in load() already; a person seen only now is locked the same way.
        await db.lock_keys(self.conn, [f"person:{p}" for p in persons - self.advisory])
        self.advisory |= persons
        self.locked |= persons
        for row in await self.conn.fetch(
            "SELECT enrollment_ref, integrity_check FROM enrollment_flag "
            "WHERE person_id = ANY($1::text[])", list(persons),
        ):
            self.flagged.add((row["enrollment_ref"], row["integrity_check"]))

    async def _load_days(self, pairs: set[tuple[str, dt.date]]) -> None:
        pairs = {p for p in pairs if p not in self.day_hours}
        if not pairs:
            return
        for pair in pairs:
            self.day_hours[pair] = {}
        keys = list(pairs)
        for row in await self.conn.fetch(PERSON_DAYS, [k[0] for k in keys], [k[1] for k in keys]):
            self.day_hours[(row["person_id"], row["date"])][row["enrollment_ref"]] = row["hours"]
            self.agency_of[row["enrollment_ref"]] = row["agency"]

    def _remember(self, enr: Enrollment) -> None:
        self.enrollments[enr.enrollment_ref] = enr
        self.by_person.setdefault(enr.person_id, []).append(enr)

    # ---- deciding -----------------------------------------------------------------------

    async def handle(self, item: Incoming) -> None:
        try:
            if item.event.type == ENROLLED:
                await self.enrolled(item)
                return
            enr = self.enrollments.get(item.event.data.enrollment_ref)  # type: ignore[attr-defined]
            if enr is None:
                self.parked.append((item.event.data.enrollment_ref, item))  # type: ignore[attr-defined]
                return
            domain.check_institution(enr, item.event.data.institution_id)  # type: ignore[attr-defined]
            if not enr.is_open:
                log.info("record after the enrollment closed is ignored",
                         extra={"type": item.event.type, "enrollment_ref": enr.enrollment_ref})
                return
            if item.event.type == ATTENDANCE:
                await self.attended(enr, item)
            elif item.event.type == FINISHED:
                self.finished(enr, item)
            elif item.event.type == WITHDRAWN:
                self.withdrawn(enr, item)
            elif item.event.type == MONTH:
                self.month(enr, item)
            else:
                self.out.dead_letter(item.record, "unknown_type",
                                     f"{item.event.type} is not consumed by the enrollment service")
        except Refusal as refusal:
            self.out.dead_letter(item.record, refusal.code, refusal.detail)

    async def enrolled(self, item: Incoming) -> None:
        """Validate identity, refuse duplicates and uncatalogued courses, accept the rest."""
        data: ev.TraineeEnrolled = item.event.data  # type: ignore[assignment]
        event = item.event
        try:
            nid = normalise_national_id(data.trainee.national_id)
        except ValueError as exc:
            raise Refusal("invalid_national_id", str(exc)) from None
        pid = person_id(nid, self.settings.person_id_secret)
        known = self.enrollments.get(data.enrollment_ref)
        if known is not None:
            self.reject(item, pid, "duplicate_enrollment",
                        f"enrollment_ref {data.enrollment_ref} is already known")
            return
        refusal = self.catalogues.of(event.agencyid).refusal(data.institution_id, data.course.course_id)
        if refusal is not None:
            self.reject(item, pid, *refusal)
            return
        twin = domain.overlapping(self.by_person.get(pid, []), data.course.course_id,
                                  data.course.start_date, data.course.end_date)
        if twin is not None:
            # Another agency's enrollment is never named to this one (docs/SECURITY.md §1).
            whose = f" ({twin.enrollment_ref})" if twin.agency == event.agencyid else ""
            self.reject(item, pid, "duplicate_enrollment",
                        f"already enrolled in course {data.course.course_id} over overlapping "
                        f"dates{whose}")
            return
        accepted = ev.EnrollmentAccepted(
            enrollment_ref=data.enrollment_ref, person_id=pid,
            institution_id=data.institution_id, categories=data.trainee.categories,
            rural=data.trainee.rural, hukou_agency=data.trainee.hukou_agency,
            insured_months=data.trainee.insured_months, hired_on=data.trainee.hired_on,
            employer=data.employer, course=data.course, fee=data.fee,
            accepted_on=event.time.date(),
        )
        if pid not in self.trainees:
            self.trainees[pid] = (self.fernet.encrypt(nid.encode()),
                                  self.fernet.encrypt(data.trainee.name.encode()))
        enr = Enrollment(
            enrollment_ref=data.enrollment_ref, agency=event.agencyid, person_id=pid,
            institution_id=data.institution_id, course_id=data.course.course_id,
            start_date=data.course.start_date, end_date=data.course.end_date,
            planned_hours=data.course.planned_hours, accepted=ev.dump(accepted),
            event_time=event.time, attendance={}, months={}, dirty=True, new=True,
        )
        self._remember(enr)
        self.emit(enr, accepted, f"enrollment-accepted/{enr.enrollment_ref}", item)
        await self.replay_parked(enr.enrollment_ref)

    async def attended(self, enr: Enrollment, item: Incoming) -> None:
        """A second record for the same enrollment and date replaces the first (POLICY §5).
        The attendance counts wherever it is dated; the integrity checks (POLICY §6) flag the
        enrollment (far_outside_plan) or every enrollment of the person with hours that day
        (daily_hours_exceeded) so that the subsidy service holds their money for review."""
        data: ev.AttendanceRecorded = item.event.data  # type: ignore[assignment]
        hours = Decimal(str(data.hours))
        domain.check_attendance(hours)
        self.attendance[(enr.enrollment_ref, data.date)] = hours
        if enr.attendance is not None:
            enr.attendance[data.date] = hours
        await self._lock({enr.person_id})  # a replayed record of a person not locked yet
        await self._load_days({(enr.person_id, data.date)})
        day = self.day_hours[(enr.person_id, data.date)]
        day[enr.enrollment_ref] = hours
        self.agency_of[enr.enrollment_ref] = enr.agency
        detail = domain.outside_plan(enr, data.date, self.settings.plan_slack_days)
        if detail is not None:
            self.flag(enr.enrollment_ref, enr.person_id, domain.FAR_OUTSIDE_PLAN, data.date,
                      detail, item)
        over = domain.over_daily_hours(day, data.date, self.settings.daily_hours_limit)
        if over is not None:
            involved, detail = over
            for ref in involved:
                self.flag(ref, enr.person_id, domain.DAILY_HOURS_EXCEEDED, data.date, detail, item)

    def flag(self, ref: str, pid: str, check: str, on: dt.date, detail: str,
             item: Incoming) -> None:
        """EnrollmentFlagged once per enrollment and check (the detail names no person)."""
        if (ref, check) in self.flagged:
            return
        self.flagged.add((ref, check))
        self.flags.append((ref, check, pid, on, detail))
        payload = ev.EnrollmentFlagged(enrollment_ref=ref, person_id=pid, check=check,  # type: ignore[arg-type]
                                       detail=detail, flagged_on=on)
        self.out.publish(
            topics.ENROLLMENT_EVENTS, payload, id=f"enrollment-flagged/{ref}/{check}",
            subject=pid, agencyid=self.agency_of[ref], time=item.event.time,
            traceparent=item.event.traceparent,
        )

    async def _ensure_attendance(self, enr: Enrollment) -> None:
        if enr.attendance is None:
            enr.attendance = {
                r["date"]: r["hours"] for r in await self.conn.fetch(
                    "SELECT date, hours FROM attendance WHERE enrollment_ref = $1", enr.enrollment_ref)
            }
            for (ref, day), hours in self.attendance.items():
                if ref == enr.enrollment_ref:
                    enr.attendance[day] = hours

    def finished(self, enr: Enrollment, item: Incoming) -> None:
        """The first closing record closes the enrollment and publishes TrainingCompleted."""
        data: ev.TrainingFinished = item.event.data  # type: ignore[assignment]
        t = domain.totals(enr)
        self.close(enr, "completed", data.finished_on, t)
        payload = ev.TrainingCompleted(
            enrollment_ref=enr.enrollment_ref, person_id=enr.person_id,
            course=enr.accepted["course"], hours_attended=domain.number(t.hours),
            days_attended=t.days, attendance_rate=float(round(t.rate, 4)),
            completed_on=data.finished_on,
        )
        self.emit(enr, payload, f"training-completed/{enr.enrollment_ref}", item)

    def withdrawn(self, enr: Enrollment, item: Incoming) -> None:
        data: ev.EnrollmentWithdrawnUpstream = item.event.data  # type: ignore[assignment]
        t = domain.totals(enr)
        self.close(enr, "withdrawn", data.withdrawn_on, t)
        payload = ev.EnrollmentWithdrawn(
            enrollment_ref=enr.enrollment_ref, person_id=enr.person_id,
            withdrawn_on=data.withdrawn_on, days_attended=t.days,
        )
        self.emit(enr, payload, f"enrollment-withdrawn/{enr.enrollment_ref}", item)

    def month(self, enr: Enrollment, item: Incoming) -> None:
        """The first record of a month stands; month_index counts months by first arrival."""
        data: ev.WorkTrainingMonthRecorded = item.event.data  # type: ignore[assignment]
        if enr.months is None:
            enr.months = {}
        if data.month in enr.months:
            return
        index = domain.next_month_index(enr)
        enr.months[data.month] = (data.wages_fen, index)
        self.months.append((enr.enrollment_ref, data.month, data.wages_fen, index))
        payload = ev.WorkTrainingMonthAccepted(
            enrollment_ref=enr.enrollment_ref, person_id=enr.person_id, month=data.month,
            wages_fen=data.wages_fen, month_index=index,
        )
        self.emit(enr, payload, f"work-month-accepted/{enr.enrollment_ref}/{data.month}", item)

    def close(self, enr: Enrollment, status: str, on: dt.date, t: domain.Totals) -> None:
        enr.status, enr.closed_on = status, on
        enr.hours_attended, enr.days_attended = t.hours, t.days
        enr.dirty = True

    def reject(self, item: Incoming, pid: str | None, reason: str, detail: str) -> None:
        data: ev.TraineeEnrolled = item.event.data  # type: ignore[assignment]
        self.rejections.append((item.event.source, item.event.id, data.enrollment_ref, pid, reason,
                                detail, item.event.agencyid))
        payload = ev.EnrollmentRejected(
            enrollment_ref=data.enrollment_ref, person_id=pid, reason=reason, detail=detail
        )
        self.out.publish(
            topics.ENROLLMENT_EVENTS, payload,
            id=f"enrollment-rejected/{item.event.source}/{item.event.id}",
            subject=pid or data.enrollment_ref, agencyid=item.event.agencyid,
            time=item.event.time, traceparent=item.event.traceparent,
        )

    def emit(self, enr: Enrollment, payload: ev.Payload, event_id: str, item: Incoming) -> None:
        self.out.publish(
            topics.ENROLLMENT_EVENTS, payload, id=event_id, subject=enr.person_id,
            agencyid=enr.agency, time=item.event.time, traceparent=item.event.traceparent,
        )

    async def replay_parked(self, ref: str) -> None:
        """Apply, in arrival order, the records that waited for this enrollment."""
        earlier = [i for r, i in self.parked if r == ref]
        self.parked = [(r, i) for r, i in self.parked if r != ref]
        rows = self.waiting.pop(ref, [])
        self.replayed.extend(r["seq"] for r in rows)
        stored = [pending.incoming(r, self.settings.topic_prefix) for r in rows]
        for item in stored + earlier:
            enr = self.enrollments[ref]
            if enr.attendance is None:
                await self._ensure_attendance(enr)
            await self.handle(item)

    # ---- storing ------------------------------------------------------------------------

    async def store(self) -> None:
        if self.replayed:
            await self.conn.execute("DELETE FROM pending WHERE seq = ANY($1::bigint[])", self.replayed)
        if self.trainees:
            await self.conn.execute(
                "INSERT INTO trainee (person_id, national_id_enc, name_enc) "
                "SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[]) ON CONFLICT DO NOTHING",
                list(self.trainees), [v[0] for v in self.trainees.values()],
                [v[1] for v in self.trainees.values()],
            )
        dirty = [e for e in self.enrollments.values() if e.dirty]
        if dirty:
            await self.conn.execute(
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
        if self.attendance:
            keys = list(self.attendance)
            await self.conn.execute(
                "INSERT INTO attendance (enrollment_ref, date, hours) "
                "SELECT * FROM unnest($1::text[], $2::date[], $3::numeric[]) "
                "ON CONFLICT (enrollment_ref, date) DO UPDATE SET hours = excluded.hours",
                [k[0] for k in keys], [k[1] for k in keys], [self.attendance[k] for k in keys],
            )
        if self.months:
            await self.conn.copy_records_to_table(
                "work_month", records=self.months,
                columns=("enrollment_ref", "month", "wages_fen", "month_index"),
            )
        if self.rejections:
            columns = list(zip(*self.rejections, strict=True))
            await self.conn.execute(
                "INSERT INTO enrollment_rejection (source, id, enrollment_ref, person_id, reason,"
                " detail, agency) SELECT * FROM unnest($1::text[], $2::text[], $3::text[],"
                " $4::text[], $5::text[], $6::text[], $7::text[]) ON CONFLICT DO NOTHING",
                *(list(c) for c in columns),
            )
        if self.flags:
            columns = list(zip(*self.flags, strict=True))
            await self.conn.execute(
                "INSERT INTO enrollment_flag (enrollment_ref, integrity_check, person_id,"
                " flagged_on, detail) SELECT * FROM unnest($1::text[], $2::text[], $3::text[],"
                " $4::date[], $5::text[]) ON CONFLICT DO NOTHING",
                *(list(c) for c in columns),
            )
        await pending.park(self.conn, self.parked)


def _from_row(row: asyncpg.Record) -> Enrollment:
    return Enrollment(
        enrollment_ref=row["enrollment_ref"], agency=row["agency"], person_id=row["person_id"],
        institution_id=row["institution_id"], course_id=row["course_id"],
        start_date=row["start_date"], end_date=row["end_date"],
        planned_hours=row["planned_hours"], accepted=orjson.loads(row["accepted"]),
        event_time=row["event_time"], status=row["status"], closed_on=row["closed_on"],
        hours_attended=row["hours_attended"], days_attended=row["days_attended"],
    )


def make_handler(settings: EnrollmentSettings) -> Handler:
    fernet = crypto.Keyring.of(settings.data_keys).fernet  # current key, previous ones readable
    catalogues = domain.Catalogues.load(settings.catalogue_dir)

    async def handle_batch(conn: asyncpg.Connection, items: list[Incoming], out: Outbox) -> None:
        batch = Batch(conn, out, settings, fernet, catalogues)
        await batch.load(items)
        for item in items:
            enr = batch.enrollments.get(getattr(item.event.data, "enrollment_ref", ""))
            if enr is not None and item.event.type in (FINISHED, WITHDRAWN) and enr.attendance is None:
                await batch._ensure_attendance(enr)
            await batch.handle(item)
        await batch.store()

    return handle_batch


async def expire_pending(pool: asyncpg.Pool, settings: EnrollmentSettings, cutoff: dt.datetime) -> None:
    """Dead-letter records whose enrollment did not arrive in time (unknown_reference)."""
    async with pool.acquire() as conn, conn.transaction():
        out = Outbox(source="/services/enrollment", topic_prefix=settings.topic_prefix,
                     dlq_topic=settings.topic(topics.dlq("enrollment")))
        await pending.expire(conn, cutoff, out, settings.pending_wait_seconds,
                             describe=lambda ref: f"enrollment {ref}")
        await out.flush(conn)
