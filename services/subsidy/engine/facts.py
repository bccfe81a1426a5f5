"""The facts the subsidy engine decides on, built from the internal events of EVENTS.md §5.1-5.2.

`AssessmentPassed` is informational: each pass is followed (same person, same partition, in
order) by a `CertificateIssued` carrying both `certificate_id` and `assessment_ref`, so every
pass- or certificate-based rule is decided on the certificate. `AssessmentFailed` only takes back
an unsettled advance (POLICY §5 "Advances and reversals").
"""

from __future__ import annotations

import math

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

ENROLLMENT = "skills.enrollment."
ASSESSMENT = "skills.assessment."


class FactError(ValueError):
    """An event payload that does not match the contract (the caller dead-letters it)."""


@dataclass(frozen=True)
class Employer:
    id: str
    insured: bool = False
    hardship_certified: bool = False
    sector: str | None = None
    employee_model_domestic: bool = False


@dataclass(frozen=True)
class Course:
    course_id: str
    occupation_code: str
    occupation_name: str
    level: str | None
    training_type: str
    planned_hours: int
    start_date: date
    end_date: date
    project_based: bool = False
    program_years: int | None = None


@dataclass(frozen=True)
class Fee:
    amount_fen: int
    payer: str


@dataclass(frozen=True)
class EnrollmentAccepted:
    enrollment_ref: str
    person_id: str
    agency: str
    institution_id: str
    categories: tuple[str, ...]
    rural: bool
    hukou_agency: str | None
    insured_months: int
    hired_on: date | None
    employer: Employer | None
    course: Course
    fee: Fee
    accepted_on: date


@dataclass(frozen=True)
class TrainingCompleted:
    enrollment_ref: str
    person_id: str
    hours_attended: int
    days_attended: int
    completed_on: date


@dataclass(frozen=True)
class EnrollmentWithdrawn:
    enrollment_ref: str
    person_id: str
    withdrawn_on: date
    days_attended: int


@dataclass(frozen=True)
class WorkMonthAccepted:
    enrollment_ref: str
    person_id: str
    month: str
    wages_fen: int
    month_index: int

    @property
    def first_day(self) -> date:
        return date.fromisoformat(self.month + "-01")


@dataclass(frozen=True)
class AssessmentResult:
    """An `AssessmentPassed` or `AssessmentFailed`; `passed` tells which."""

    assessment_ref: str
    person_id: str
    enrollment_ref: str | None
    occupation_code: str
    level: str | None
    certificate_kind: str
    assessed_on: date
    passed: bool


@dataclass(frozen=True)
class CertificateIssued:
    certificate_id: str
    assessment_ref: str
    person_id: str
    enrollment_ref: str | None
    occupation_code: str
    level: str | None
    certificate_kind: str
    issued_on: date


@dataclass(frozen=True)
class CertificateRevoked:
    certificate_id: str
    person_id: str
    revoked_on: date
    reason: str


@dataclass(frozen=True)
class EnrollmentFlagged:
    """An integrity check tripped on the enrollment (POLICY §6): its money is held for review."""

    enrollment_ref: str
    person_id: str
    check: str
    flagged_on: date
    detail: str = ""


@dataclass(frozen=True)
class HoldReviewed:
    """A reviewer's decision on a held grant (EVENTS.md §5.4), a fact like any other."""

    grant_id: str
    person_id: str
    agency: str
    decision: str  # release | deny
    reviewer: str
    note: str
    reviewed_at: str  # RFC 3339
    review_id: str

    @property
    def reviewed_on(self) -> date:
        return datetime.fromisoformat(self.reviewed_at).date()


Fact = (
    EnrollmentAccepted
    | TrainingCompleted
    | EnrollmentWithdrawn
    | WorkMonthAccepted
    | AssessmentResult
    | CertificateIssued
    | CertificateRevoked
    | EnrollmentFlagged
    | HoldReviewed
)

IGNORED_TYPES = frozenset({ENROLLMENT + "EnrollmentRejected.v1"})


def fact_from_event(event_type: str, data: dict[str, Any], agency: str, time: str) -> Fact | None:
    """Build the fact of one internal event; None for an event that has no subsidy effect.

    Raises FactError for an unknown type or a payload that breaks the contract.
    """
    if event_type in IGNORED_TYPES:
        return None
    build = _BUILDERS.get(event_type)
    if build is None:
        raise FactError(f"unknown event type {event_type!r}")
    try:
        return build(data, agency, time)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FactError(f"{event_type}: bad payload: {exc!r}") from exc


def _date(value: Any) -> date:
    if not isinstance(value, str):
        raise TypeError(f"date expected, got {value!r}")
    return date.fromisoformat(value)


def _opt_date(value: Any) -> date | None:
    return None if value is None else _date(value)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"integer expected, got {value!r}")
    return value


def _opt_int(value: Any) -> int:
    return 0 if value is None else _int(value)


def _whole_hours(value: Any) -> int:
    """Hours attended, rounded down to whole hours: every threshold (min_hours) is a whole
    number, and floor(h) >= n exactly when h >= n for a whole n, so no decision changes."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise TypeError(f"a non-negative number of hours expected, got {value!r}")
    return math.floor(value)


def _opt_str(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"string expected, got {value!r}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"string expected, got {value!r}")
    return value


def _employer(raw: Any) -> Employer | None:
    if raw is None:
        return None
    return Employer(
        id=_str(raw["id"]),
        insured=bool(raw.get("insured") or False),
        hardship_certified=bool(raw.get("hardship_certified") or False),
        sector=_opt_str(raw.get("sector")),
        employee_model_domestic=bool(raw.get("employee_model_domestic") or False),
    )


def _course(raw: dict[str, Any]) -> Course:
    program_years = raw.get("program_years")
    return Course(
        course_id=_str(raw["course_id"]),
        occupation_code=_str(raw["occupation_code"]),
        occupation_name=_str(raw.get("occupation_name") or ""),
        level=_opt_str(raw.get("level")),
        training_type=_str(raw["training_type"]),
        planned_hours=_opt_int(raw.get("planned_hours")),
        start_date=_date(raw["start_date"]),
        end_date=_date(raw["end_date"]),
        project_based=bool(raw.get("project_based") or False),
        program_years=None if program_years is None else _int(program_years),
    )


def _accepted(data: dict[str, Any], agency: str, time: str) -> EnrollmentAccepted:
    accepted_on = data.get("accepted_on")
    return EnrollmentAccepted(
        enrollment_ref=_str(data["enrollment_ref"]),
        person_id=_str(data["person_id"]),
        agency=agency,
        institution_id=_str(data["institution_id"]),
        categories=tuple(_str(c) for c in data.get("categories") or ()),
        rural=bool(data.get("rural") or False),
        hukou_agency=_opt_str(data.get("hukou_agency")),
        insured_months=_opt_int(data.get("insured_months")),
        hired_on=_opt_date(data.get("hired_on")),
        employer=_employer(data.get("employer")),
        course=_course(data["course"]),
        fee=Fee(amount_fen=_int(data["fee"]["amount_fen"]), payer=_str(data["fee"]["payer"])),
        accepted_on=(
            _date(accepted_on) if accepted_on is not None else datetime.fromisoformat(time).date()
        ),
    )


def _completed(data: dict[str, Any], agency: str, time: str) -> TrainingCompleted:
    return TrainingCompleted(
        enrollment_ref=_str(data["enrollment_ref"]),
        person_id=_str(data["person_id"]),
        hours_attended=_whole_hours(data.get("hours_attended")),
        days_attended=_opt_int(data.get("days_attended")),
        completed_on=_date(data["completed_on"]),
    )


def _withdrawn(data: dict[str, Any], agency: str, time: str) -> EnrollmentWithdrawn:
    return EnrollmentWithdrawn(
        enrollment_ref=_str(data["enrollment_ref"]),
        person_id=_str(data["person_id"]),
        withdrawn_on=_date(data["withdrawn_on"]),
        days_attended=_opt_int(data.get("days_attended")),
    )


def _month(data: dict[str, Any], agency: str, time: str) -> WorkMonthAccepted:
    month = _str(data["month"])
    date.fromisoformat(month + "-01")
    return WorkMonthAccepted(
        enrollment_ref=_str(data["enrollment_ref"]),
        person_id=_str(data["person_id"]),
        month=month,
        wages_fen=_opt_int(data.get("wages_fen")),
        month_index=_int(data["month_index"]),
    )


Builder = Callable[[dict[str, Any], str, str], "Fact"]


def _assessment(passed: bool) -> Builder:
    def build(data: dict[str, Any], agency: str, time: str) -> AssessmentResult:
        return AssessmentResult(
            assessment_ref=_str(data["assessment_ref"]),
            person_id=_str(data["person_id"]),
            enrollment_ref=_opt_str(data.get("enrollment_ref")),
            occupation_code=_str(data["occupation_code"]),
            level=_opt_str(data.get("level")),
            certificate_kind=_str(data["certificate_kind"]),
            assessed_on=_date(data["assessed_on"]),
            passed=passed,
        )

    return build


def _issued(data: dict[str, Any], agency: str, time: str) -> CertificateIssued:
    return CertificateIssued(
        certificate_id=_str(data["certificate_id"]),
        assessment_ref=_str(data["assessment_ref"]),
        person_id=_str(data["person_id"]),
        enrollment_ref=_opt_str(data.get("enrollment_ref")),
        occupation_code=_str(data["occupation_code"]),
        level=_opt_str(data.get("level")),
        certificate_kind=_str(data["certificate_kind"]),
        issued_on=_date(data["issued_on"]),
    )


def _revoked(data: dict[str, Any], agency: str, time: str) -> CertificateRevoked:
    return CertificateRevoked(
        certificate_id=_str(data["certificate_id"]),
        person_id=_str(data["person_id"]),
        revoked_on=_date(data["revoked_on"]),
        reason=_str(data.get("reason") or ""),
    )


def _flagged(data: dict[str, Any], agency: str, time: str) -> EnrollmentFlagged:
    return EnrollmentFlagged(
        enrollment_ref=_str(data["enrollment_ref"]),
        person_id=_str(data["person_id"]),
        check=_str(data["check"]),
        flagged_on=_date(data["flagged_on"]),
        detail=_str(data.get("detail") or ""),
    )


def _reviewed(data: dict[str, Any], agency: str, time: str) -> HoldReviewed:
    decision = _str(data["decision"])
    if decision not in ("release", "deny"):
        raise ValueError(f"decision must be release or deny, got {decision!r}")
    reviewed_at = _str(data["reviewed_at"])
    datetime.fromisoformat(reviewed_at)
    return HoldReviewed(
        grant_id=_str(data["grant_id"]),
        person_id=_str(data["person_id"]),
        agency=_str(data["agency"]),
        decision=decision,
        reviewer=_str(data["reviewer"]),
        note=_str(data.get("note") or ""),
        reviewed_at=reviewed_at,
        review_id=_str(data.get("review_id") or ""),
    )


_BUILDERS: dict[str, Builder] = {
    ENROLLMENT + "EnrollmentAccepted.v1": _accepted,
    ENROLLMENT + "TrainingCompleted.v1": _completed,
    ENROLLMENT + "EnrollmentWithdrawn.v1": _withdrawn,
    ENROLLMENT + "WorkTrainingMonthAccepted.v1": _month,
    ASSESSMENT + "AssessmentPassed.v1": _assessment(True),
    ASSESSMENT + "AssessmentFailed.v1": _assessment(False),
    ASSESSMENT + "CertificateIssued.v1": _issued,
    ASSESSMENT + "CertificateRevoked.v1": _revoked,
    ENROLLMENT + "EnrollmentFlagged.v1": _flagged,
    "skills.subsidy.HoldReviewed.v1": _reviewed,
}
