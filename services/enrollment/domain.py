"""Pure rules of the training lifecycle: acceptance, attendance, closing, work months.

Standard library only. The handler loads state, calls these functions in event order and
stores what they return; POLICY.md §5 "Facts and dates" is what they implement.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

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
    accepted: dict
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
