"""The facts the subsidy engine decides on: the internal events of EVENTS.md §5.1-5.2.

They are built, attribute by attribute, from the contract's validated payload models by
services.subsidy.contract (the engine imports no pydantic); the codes are the contract's
vocabulary (shared.contract.vocabulary).

`AssessmentPassed` is informational: each pass is followed (same person, same partition, in
order) by a `CertificateIssued` carrying both `certificate_id` and `assessment_ref`, so every
pass- or certificate-based rule is decided on the certificate. `AssessmentFailed` only takes back
an unsettled advance (POLICY §5 "Advances and reversals").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from shared.contract.vocabulary import (
    Category,
    CertificateKind,
    IntegrityCheck,
    Level,
    PayeeKind,
    ReviewDecision,
    Sector,
    TrainingType,
)


@dataclass(frozen=True, slots=True)
class Employer:
    id: str
    insured: bool = False
    hardship_certified: bool = False
    sector: Sector | None = None
    employee_model_domestic: bool = False


@dataclass(frozen=True, slots=True)
class Course:
    course_id: str
    occupation_code: str
    occupation_name: str
    level: Level | None
    training_type: TrainingType
    planned_hours: int
    start_date: date
    end_date: date
    project_based: bool = False
    program_years: int | None = None


@dataclass(frozen=True, slots=True)
class Fee:
    amount_fen: int
    payer: PayeeKind


@dataclass(frozen=True, slots=True)
class EnrollmentAccepted:
    enrollment_ref: str
    person_id: str
    agency: str
    institution_id: str
    categories: tuple[Category, ...]
    rural: bool
    hukou_agency: str | None
    insured_months: int
    hired_on: date | None
    employer: Employer | None
    course: Course
    fee: Fee
    accepted_on: date


@dataclass(frozen=True, slots=True)
class TrainingCompleted:
    enrollment_ref: str
    person_id: str
    hours_attended: int
    days_attended: int
    completed_on: date


@dataclass(frozen=True, slots=True)
class EnrollmentWithdrawn:
    enrollment_ref: str
    person_id: str
    withdrawn_on: date
    days_attended: int


@dataclass(frozen=True, slots=True)
class WorkMonthAccepted:
    enrollment_ref: str
    person_id: str
    month: str
    wages_fen: int
    month_index: int

    @property
    def first_day(self) -> date:
        return date.fromisoformat(self.month + "-01")


@dataclass(frozen=True, slots=True)
class AssessmentResult:
    """An `AssessmentPassed` or `AssessmentFailed`; `passed` tells which."""

    assessment_ref: str
    person_id: str
    enrollment_ref: str | None
    occupation_code: str
    level: Level | None
    certificate_kind: CertificateKind
    assessed_on: date
    passed: bool


@dataclass(frozen=True, slots=True)
class CertificateIssued:
    certificate_id: str
    assessment_ref: str
    person_id: str
    enrollment_ref: str | None
    occupation_code: str
    level: Level | None
    certificate_kind: CertificateKind
    issued_on: date


@dataclass(frozen=True, slots=True)
class CertificateRevoked:
    certificate_id: str
    person_id: str
    revoked_on: date
    reason: str


@dataclass(frozen=True, slots=True)
class EnrollmentFlagged:
    """An integrity check tripped on the enrollment (POLICY §6): its money is held for review."""

    enrollment_ref: str
    person_id: str
    check: IntegrityCheck
    flagged_on: date
    detail: str = ""


@dataclass(frozen=True, slots=True)
class HoldReviewed:
    """A reviewer's decision on a held grant (EVENTS.md §5.4), a fact like any other."""

    grant_id: str
    person_id: str
    agency: str
    decision: ReviewDecision
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
