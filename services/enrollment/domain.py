"""Pure rules of the training lifecycle: acceptance, attendance, closing, work months.

Standard library only, no I/O. The handler loads a snapshot through the store, `Decider`
decides the batch on it (these rules, in event order) and the handler records what it returns;
POLICY.md §5 "Facts and dates" and §6 (integrity checks) are what they implement.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_HOURS_PER_DAY = Decimal(12)


class Refusal(Exception):
    """A record that is an error (dead letter), with the service's documented code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass
class Enrollment:
    """What the service knows about one enrollment while deciding a batch."""

    enrollment_ref: str
    agency: str
    person_id: str
    institution_id: str
    course_id: str
    start_date: dt.date
    end_date: dt.date
    planned_hours: int
    accepted: dict[str, object] | None  # the EnrollmentAccepted payload; loaded only when closing
    event_time: dt.datetime
    status: str = "open"
    closed_on: dt.date | None = None
    hours_attended: Decimal | None = None
    days_attended: int | None = None
    attendance: dict[dt.date, Decimal] | None = None  # loaded only when needed
    months: dict[str, tuple[int, int]] | None = None  # month -> (wages_fen, month_index)
    dirty: bool = False
    new: bool = False

    @property
    def is_open(self) -> bool:
        return self.status == "open"


@dataclass(frozen=True)
class Catalogue:
    """An agency's 目录清单; ``None`` means open (everything admitted)."""

    agency: str
    institutions: frozenset[str] | None = None
    courses: frozenset[str] | None = None

    def refusal(self, institution_id: str, course_id: str) -> tuple[str, str] | None:
        if self.institutions is not None and institution_id not in self.institutions:
            return ("institution_not_accredited",
                    f"institution {institution_id} is not in {self.agency}'s catalogue")
        if self.courses is not None and course_id not in self.courses:
            return ("course_not_in_catalogue",
                    f"course {course_id} is not in {self.agency}'s catalogue")
        return None


@dataclass
class Catalogues:
    by_agency: dict[str, Catalogue] = field(default_factory=dict)

    def of(self, agency: str) -> Catalogue:
        return self.by_agency.get(agency, Catalogue(agency))

    @classmethod
    def load(cls, directory: Path) -> Catalogues:
        found = {}
        for path in sorted(directory.glob("*.json")):
            raw = json.loads(path.read_text())
            inst, courses = raw.get("institutions"), raw.get("courses")
            found[raw["agency"]] = Catalogue(
                raw["agency"],
                frozenset(inst) if inst is not None else None,
                frozenset(courses) if courses is not None else None,
            )
        return cls(found)


def overlapping(existing: list[Enrollment], course_id: str, start: dt.date, end: dt.date) -> Enrollment | None:
    """A live enrollment of the same person in the same course over overlapping dates."""
    for other in existing:
        if (
            other.course_id == course_id
            and other.status != "withdrawn"
            and other.start_date <= end
            and start <= other.end_date
        ):
            return other
    return None


def check_attendance(hours: Decimal) -> None:
    """0 < hours <= 12 for one trainee on one date (EVENTS.md §4.1).

    The date is not checked against the course's dates: they are a plan, not a fence (POLICY.md
    §5 "Facts and dates"); a course that slipped is paid for the days really attended.
    """
    if not (Decimal(0) < hours <= MAX_HOURS_PER_DAY):
        raise Refusal("invalid_hours", f"hours {hours} outside 0 < h <= 12")


def check_institution(enrollment: Enrollment, institution_id: str) -> None:
    if institution_id != enrollment.institution_id:
        raise Refusal(
            "institution_mismatch",
            f"enrollment {enrollment.enrollment_ref} belongs to another institution",
        )


DAILY_HOURS_EXCEEDED = "daily_hours_exceeded"
FAR_OUTSIDE_PLAN = "far_outside_plan"


def outside_plan(enrollment: Enrollment, day: dt.date, slack_days: int) -> str | None:
    """far_outside_plan (POLICY.md §6): the flag's detail when ``day`` lies more than
    ``slack_days`` days before the planned start or after the planned end; None otherwise.
    The attendance still counts (the dates are a plan): the check only holds the money."""
    before = (enrollment.start_date - day).days
    after = (day - enrollment.end_date).days
    if before > slack_days:
        return f"attendance on {day} is {before} days before the planned start (more than {slack_days})"
    if after > slack_days:
        return f"attendance on {day} is {after} days after the planned end (more than {slack_days})"
    return None


def over_daily_hours(hours_by_enrollment: dict[str, Decimal], day: dt.date,
                     limit: Decimal) -> tuple[list[str], str] | None:
    """daily_hours_exceeded (POLICY.md §6): one person's hours on one date, summed over every
    enrollment in every institution and agency, above ``limit``. The enrollments involved
    (those with hours that day, by reference) and the flag's detail; None when within."""
    total = sum(hours_by_enrollment.values(), Decimal(0))
    if total <= limit:
        return None
    involved = sorted(ref for ref, hours in hours_by_enrollment.items() if hours > 0)
    return involved, (f"{number(total)} hours attended on {day} over {len(involved)} "
                      f"enrollments (more than {number(limit)})")


@dataclass(frozen=True)
class Totals:
    hours: Decimal
    days: int
    rate: Decimal


def totals(enrollment: Enrollment) -> Totals:
    """Days = distinct dates with hours > 0; hours = their sum; rate = hours / planned, capped at 1."""
    attendance = enrollment.attendance or {}
    hours = sum((h for h in attendance.values() if h > 0), Decimal(0))
    days = sum(1 for h in attendance.values() if h > 0)
    rate = min(Decimal(1), hours / Decimal(enrollment.planned_hours))
    return Totals(hours, days, rate)


def next_month_index(enrollment: Enrollment) -> int:
    """The 1-based position of a new month among the enrollment's months, by first arrival."""
    return len(enrollment.months or {}) + 1


def number(value: Decimal) -> int | float:
    """Hours for JSON: an integer where whole (the common case), otherwise a decimal number."""
    return int(value) if value == value.to_integral_value() else float(value)


# ---- deciding a batch on a loaded snapshot ------------------------------------------------------
#
# The handler turns each record into one of the commands below (validating identity, building the
# contract payloads, which need the contract and the person_id secret), the store loads a
# `Snapshot` of everything the batch's commands touch, and `decide` applies the commands in order
# without reading anything more: it returns the `Changes` to record and the `effects` to send
# (events and dead letters, in order). ``cause`` is the record a command came from: opaque here,
# handed back in effects and parked records.


@dataclass(frozen=True)
class Command:
    cause: Any
    enrollment_ref: str
    institution_id: str


@dataclass(frozen=True)
class Enrol(Command):
    """TraineeEnrolled. ``person_id`` is None and ``refusal`` set when the national id is invalid;
    ``accepted`` is the EnrollmentAccepted payload to publish (opaque), ``accepted_json`` the same
    as JSON (what the enrollment row keeps)."""

    agency: str
    source: str
    id: str
    event_time: dt.datetime
    person_id: str | None
    refusal: tuple[str, str] | None
    national_id: str
    name: str
    course_id: str
    start_date: dt.date
    end_date: dt.date
    planned_hours: int
    accepted: Any
    accepted_json: dict[str, Any] | None


@dataclass(frozen=True)
class Attend(Command):
    date: dt.date
    hours: Decimal


@dataclass(frozen=True)
class Finish(Command):
    finished_on: dt.date


@dataclass(frozen=True)
class Withdraw(Command):
    withdrawn_on: dt.date


@dataclass(frozen=True)
class Month(Command):
    month: str
    wages_fen: int


@dataclass(frozen=True)
class Other(Command):
    """A record type the service does not consume (the decoder admits none today)."""

    type: str


CLOSING = (Finish, Withdraw)


@dataclass
class Snapshot:
    """What a batch's decisions read, loaded before deciding (under the batch's locks).

    ``enrollments``: every enrollment the commands name and every enrollment of the persons who
    enrol, in the store's order (the duplicate check names the first overlapping one), with
    ``attendance`` loaded for those a command closes and ``months`` for those a month names;
    ``waiting``: the stored parked commands of the enrollments enrolled now, by ref, in arrival
    order with their ``pending`` seq; ``day_hours``: (person, date) -> enrollment -> stored hours
    over all the person's enrollments for every date the batch records attendance on, empty
    for a person with one enrollment (stored or enrolled by the batch): only that enrollment's
    hours can count for the day, and `Decider.attended` replaces its stored hours of the date
    with the batch's before checking (an attendance it does not apply, after the enrollment
    closed, checks nothing); ``agency_of``: the agency of those enrollments;
    ``flagged``: the (enrollment, check) flags of the persons involved."""

    enrollments: dict[str, Enrollment] = field(default_factory=dict)
    waiting: dict[str, list[tuple[int, Command]]] = field(default_factory=dict)
    day_hours: dict[tuple[str, dt.date], dict[str, Decimal]] = field(default_factory=dict)
    agency_of: dict[str, str] = field(default_factory=dict)
    flagged: set[tuple[str, str]] = field(default_factory=set)


@dataclass
class Changes:
    """What a batch writes: ``trainees`` in clear (the store seals them), the new or changed
    ``enrollments``, attendance by (ref, date), months (ref, month, wages, index), rejections
    (source, id, ref, person, reason, detail, agency), flags (ref, check, person, date, detail),
    records ``parked`` as (ref, cause) and the ``replayed`` pending seqs to delete."""

    replayed: list[int] = field(default_factory=list)
    trainees: dict[str, tuple[str, str]] = field(default_factory=dict)
    enrollments: list[Enrollment] = field(default_factory=list)
    attendance: dict[tuple[str, dt.date], Decimal] = field(default_factory=dict)
    months: list[tuple[str, str, int, int]] = field(default_factory=list)
    rejections: list[tuple[str, str, str, str | None, str, str, str]] = field(default_factory=list)
    flags: list[tuple[str, str, str, dt.date, str]] = field(default_factory=list)
    parked: list[tuple[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Publish:
    """An event to publish: the contract payload ``event`` built from ``fields`` (or ``payload``
    when the handler built it already), at the time of its ``cause``."""

    event: str
    fields: dict[str, Any] | None
    payload: Any
    id: str
    subject: str
    agency: str
    cause: Any


@dataclass(frozen=True)
class DeadLetter:
    cause: Any
    code: str
    detail: str


Effect = Publish | DeadLetter


class Decider:
    """One batch's decisions on a snapshot (which it updates as the batch goes)."""

    def __init__(self, snapshot: Snapshot, catalogues: Catalogues, plan_slack_days: int,
                 daily_hours_limit: Decimal) -> None:
        self.snapshot = snapshot
        self.catalogues = catalogues
        self.plan_slack_days = plan_slack_days
        self.daily_hours_limit = daily_hours_limit
        self.enrollments = snapshot.enrollments
        self.by_person: dict[str, list[Enrollment]] = {}
        for enr in snapshot.enrollments.values():
            self.by_person.setdefault(enr.person_id, []).append(enr)
        self.waiting = snapshot.waiting
        self.parked: list[tuple[str, Command]] = []
        self.changes = Changes()
        self.effects: list[Effect] = []

    def decide(self, commands: list[Command]) -> tuple[Changes, list[Effect]]:
        for command in commands:
            self.handle(command)
        self.changes.enrollments = [e for e in self.enrollments.values() if e.dirty]
        self.changes.parked = [(ref, c.cause) for ref, c in self.parked]
        return self.changes, self.effects

    def handle(self, command: Command) -> None:
        try:
            if isinstance(command, Enrol):
                self.enrolled(command)
                return
            enr = self.enrollments.get(command.enrollment_ref)
            if enr is None:
                self.parked.append((command.enrollment_ref, command))
                return
            check_institution(enr, command.institution_id)
            if not enr.is_open:
                log.info("record after the enrollment closed is ignored",
                         extra={"type": type(command).__name__, "enrollment_ref": enr.enrollment_ref})
                return
            if isinstance(command, Attend):
                self.attended(enr, command)
            elif isinstance(command, Finish):
                self.closed(enr, command, "completed", command.finished_on)
            elif isinstance(command, Withdraw):
                self.closed(enr, command, "withdrawn", command.withdrawn_on)
            elif isinstance(command, Month):
                self.month(enr, command)
            else:
                self.effects.append(DeadLetter(
                    command.cause, "unknown_type",
                    f"{getattr(command, 'type', '?')} is not consumed by the enrollment service"))
        except Refusal as refusal:
            self.effects.append(DeadLetter(command.cause, refusal.code, refusal.detail))

    def enrolled(self, c: Enrol) -> None:
        """Validate identity, refuse duplicates and uncatalogued courses, accept the rest."""
        if c.refusal is not None:
            raise Refusal(*c.refusal)
        pid = c.person_id
        assert pid is not None
        if c.enrollment_ref in self.enrollments:
            self.reject(c, pid, "duplicate_enrollment",
                        f"enrollment_ref {c.enrollment_ref} is already known")
            return
        refusal = self.catalogues.of(c.agency).refusal(c.institution_id, c.course_id)
        if refusal is not None:
            self.reject(c, pid, *refusal)
            return
        twin = overlapping(self.by_person.get(pid, []), c.course_id, c.start_date, c.end_date)
        if twin is not None:
            # Another agency's enrollment is never named to this one (docs/SECURITY.md §1).
            whose = f" ({twin.enrollment_ref})" if twin.agency == c.agency else ""
            self.reject(c, pid, "duplicate_enrollment",
                        f"already enrolled in course {c.course_id} over overlapping dates{whose}")
            return
        if pid not in self.changes.trainees:
            self.changes.trainees[pid] = (c.national_id, c.name)
        assert c.accepted_json is not None
        enr = Enrollment(
            enrollment_ref=c.enrollment_ref, agency=c.agency, person_id=pid,
            institution_id=c.institution_id, course_id=c.course_id, start_date=c.start_date,
            end_date=c.end_date, planned_hours=c.planned_hours, accepted=c.accepted_json,
            event_time=c.event_time, attendance={}, months={}, dirty=True, new=True,
        )
        self.enrollments[enr.enrollment_ref] = enr
        self.by_person.setdefault(pid, []).append(enr)
        self.emit(enr, "EnrollmentAccepted", None, f"enrollment-accepted/{enr.enrollment_ref}", c,
                  payload=c.accepted)
        self.replay_parked(enr.enrollment_ref)

    def attended(self, enr: Enrollment, c: Attend) -> None:
        """A second record for the same enrollment and date replaces the first (POLICY §5).
        The attendance counts wherever it is dated; the integrity checks (POLICY §6) flag the
        enrollment (far_outside_plan) or every enrollment of the person with hours that day
        (daily_hours_exceeded) so that the subsidy service holds their money for review."""
        check_attendance(c.hours)
        self.changes.attendance[(enr.enrollment_ref, c.date)] = c.hours
        if enr.attendance is not None:
            enr.attendance[c.date] = c.hours
        day = self.snapshot.day_hours[(enr.person_id, c.date)]  # loaded for every attendance
        day[enr.enrollment_ref] = c.hours
        self.snapshot.agency_of[enr.enrollment_ref] = enr.agency
        detail = outside_plan(enr, c.date, self.plan_slack_days)
        if detail is not None:
            self.flag(enr.enrollment_ref, enr.person_id, FAR_OUTSIDE_PLAN, c.date, detail, c)
        over = over_daily_hours(day, c.date, self.daily_hours_limit)
        if over is not None:
            involved, detail = over
            for ref in involved:
                self.flag(ref, enr.person_id, DAILY_HOURS_EXCEEDED, c.date, detail, c)

    def flag(self, ref: str, pid: str, check: str, on: dt.date, detail: str, c: Command) -> None:
        """EnrollmentFlagged once per enrollment and check (the detail names no person)."""
        if (ref, check) in self.snapshot.flagged:
            return
        self.snapshot.flagged.add((ref, check))
        self.changes.flags.append((ref, check, pid, on, detail))
        self.effects.append(Publish(
            "EnrollmentFlagged",
            dict(enrollment_ref=ref, person_id=pid, check=check, detail=detail, flagged_on=on),
            None, f"enrollment-flagged/{ref}/{check}", pid, self.snapshot.agency_of[ref], c.cause,
        ))

    def closed(self, enr: Enrollment, c: Command, status: str, on: dt.date) -> None:
        """The first closing record closes the enrollment and publishes TrainingCompleted or
        EnrollmentWithdrawn."""
        if enr.attendance is None or enr.accepted is None:
            raise LookupError(f"the snapshot lacks the attendance or payload of {enr.enrollment_ref}")
        t = totals(enr)
        enr.status, enr.closed_on = status, on
        enr.hours_attended, enr.days_attended = t.hours, t.days
        enr.dirty = True
        if status == "completed":
            self.emit(enr, "TrainingCompleted", dict(
                enrollment_ref=enr.enrollment_ref, person_id=enr.person_id,
                course=enr.accepted["course"], hours_attended=number(t.hours),
                days_attended=t.days, attendance_rate=float(round(t.rate, 4)), completed_on=on,
            ), f"training-completed/{enr.enrollment_ref}", c)
        else:
            self.emit(enr, "EnrollmentWithdrawn", dict(
                enrollment_ref=enr.enrollment_ref, person_id=enr.person_id, withdrawn_on=on,
                days_attended=t.days,
            ), f"enrollment-withdrawn/{enr.enrollment_ref}", c)

    def month(self, enr: Enrollment, c: Month) -> None:
        """The first record of a month stands; month_index counts months by first arrival."""
        if enr.months is None:
            enr.months = {}
        if c.month in enr.months:
            return
        index = next_month_index(enr)
        enr.months[c.month] = (c.wages_fen, index)
        self.changes.months.append((enr.enrollment_ref, c.month, c.wages_fen, index))
        self.emit(enr, "WorkTrainingMonthAccepted", dict(
            enrollment_ref=enr.enrollment_ref, person_id=enr.person_id, month=c.month,
            wages_fen=c.wages_fen, month_index=index,
        ), f"work-month-accepted/{enr.enrollment_ref}/{c.month}", c)

    def reject(self, c: Enrol, pid: str | None, reason: str, detail: str) -> None:
        self.changes.rejections.append((c.source, c.id, c.enrollment_ref, pid, reason, detail,
                                        c.agency))
        self.effects.append(Publish(
            "EnrollmentRejected",
            dict(enrollment_ref=c.enrollment_ref, person_id=pid, reason=reason, detail=detail),
            None, f"enrollment-rejected/{c.source}/{c.id}", pid or c.enrollment_ref, c.agency,
            c.cause,
        ))

    def emit(self, enr: Enrollment, event: str, fields: dict[str, Any] | None, event_id: str,
             c: Command, payload: Any = None) -> None:
        self.effects.append(Publish(event, fields, payload, event_id, enr.person_id, enr.agency,
                                    c.cause))

    def replay_parked(self, ref: str) -> None:
        """Apply, in arrival order, the records that waited for this enrollment: stored first,
        then this batch's."""
        earlier = [c for r, c in self.parked if r == ref]
        self.parked = [(r, c) for r, c in self.parked if r != ref]
        stored = self.waiting.pop(ref, [])
        self.changes.replayed.extend(seq for seq, _ in stored)
        for command in [c for _, c in stored] + earlier:
            self.handle(command)
