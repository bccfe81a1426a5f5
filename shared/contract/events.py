"""Pydantic models of every v1 event payload (the CloudEvents ``data``), upstream and output.

EVENTS.md is binding: field names and meanings here follow it exactly. Models ignore unknown
fields (forward compatibility); anything added here must be optional.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    model_serializer,
    model_validator,
)

from shared.contract.vocabulary import (  # re-exported: the models' field types
    Category,
    CertificateKind,
    IntegrityCheck,
    Level,
    PayeeKind,
    RejectionReason,
    ReversalReason,
    ReviewDecision,
    Sector,
    SubsidyStage,
    TrainingType,
)


class Payload(BaseModel):
    """Base of every payload: unknown fields are ignored, known ones validated."""

    model_config = ConfigDict(extra="ignore", frozen=True)


Ref = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Month = Annotated[str, StringConstraints(pattern=r"^\d{4}-(0[1-9]|1[0-2])$")]
Fen = Annotated[int, Field(ge=0, strict=True)]


PersonId = Annotated[str, StringConstraints(pattern=r"^p_[0-9a-f]{32}$")]


# ---- upstream: skills.training.upstream -------------------------------------------------


class Trainee(Payload):
    national_id: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    categories: list[Category] = Field(default_factory=list)
    rural: bool | None = None
    hukou_agency: str | None = None
    insured_months: Annotated[int, Field(ge=0)] | None = None
    hired_on: dt.date | None = None


class Employer(Payload):
    id: Ref
    insured: bool = False
    hardship_certified: bool = False
    sector: Sector | None = None
    employee_model_domestic: bool = False


class Course(Payload):
    course_id: Ref
    occupation_code: Ref
    occupation_name: str = ""
    level: Level | None = None
    training_type: TrainingType
    planned_hours: Annotated[int, Field(gt=0)]
    start_date: dt.date
    end_date: dt.date
    project_based: bool = False
    program_years: Annotated[int, Field(ge=1, le=3)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Course:
        if self.end_date < self.start_date:
            raise ValueError("course.end_date is before course.start_date")
        if self.training_type is TrainingType.APPRENTICESHIP and self.program_years is None:
            raise ValueError("course.program_years (1 to 3) is required for apprenticeship")
        return self


class Fee(Payload):
    amount_fen: Fen
    payer: PayeeKind


class TraineeEnrolled(Payload):
    enrollment_ref: Ref
    institution_id: Ref
    trainee: Trainee
    employer: Employer | None = None
    course: Course
    fee: Fee


class AttendanceRecorded(Payload):
    enrollment_ref: Ref
    institution_id: Ref
    date: dt.date
    hours: int | float  # range (0, 12] is a business check with its own DLQ code


class TrainingFinished(Payload):
    enrollment_ref: Ref
    institution_id: Ref
    finished_on: dt.date


class EnrollmentWithdrawnUpstream(Payload):
    enrollment_ref: Ref
    institution_id: Ref
    withdrawn_on: dt.date
    reason: str = ""


class WorkTrainingMonthRecorded(Payload):
    enrollment_ref: Ref
    institution_id: Ref
    month: Month
    wages_fen: Fen


# ---- upstream: skills.assessment.upstream -----------------------------------------------


class AssessmentResultRecorded(Payload):
    assessment_ref: Ref
    evaluator_id: Ref
    national_id: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    enrollment_ref: Ref | None = None
    occupation_code: Ref
    level: Level | None = None
    certificate_kind: CertificateKind
    passed: bool
    theory_score: float | None = None
    practical_score: float | None = None
    assessed_on: dt.date


class CertificateRevokedUpstream(Payload):
    certificate_id: Ref
    revoked_on: dt.date
    reason: str = ""


# ---- output: skills.enrollment.events -----------------------------------------------------


class EnrollmentAccepted(Payload):
    enrollment_ref: Ref
    person_id: PersonId
    institution_id: Ref
    categories: list[Category]
    rural: bool | None = None
    hukou_agency: str | None = None
    insured_months: int | None = None
    hired_on: dt.date | None = None
    employer: Employer | None = None
    course: Course
    fee: Fee
    accepted_on: dt.date


class EnrollmentRejected(Payload):
    enrollment_ref: Ref
    person_id: PersonId | None = None
    reason: str
    detail: str = ""


class TrainingCompleted(Payload):
    enrollment_ref: Ref
    person_id: PersonId
    course: Course
    hours_attended: int | float  # whole hours stay integers in JSON
    days_attended: int
    attendance_rate: Annotated[float, Field(ge=0, le=1)]
    completed_on: dt.date


class EnrollmentWithdrawn(Payload):
    enrollment_ref: Ref
    person_id: PersonId
    withdrawn_on: dt.date
    days_attended: int


class WorkTrainingMonthAccepted(Payload):
    enrollment_ref: Ref
    person_id: PersonId
    month: Month
    wages_fen: Fen
    month_index: Annotated[int, Field(ge=1)]


class EnrollmentFlagged(Payload):
    """An integrity signal (POLICY.md §6): at most one per enrollment and check."""

    enrollment_ref: Ref
    person_id: PersonId
    check: IntegrityCheck
    detail: str = ""  # no personal data
    flagged_on: dt.date  # the date of the attendance that tripped the check


# ---- output: skills.assessment.events -----------------------------------------------------


class AssessmentOutcome(Payload):
    assessment_ref: Ref
    person_id: PersonId
    enrollment_ref: Ref | None = None
    occupation_code: Ref
    level: Level | None = None
    certificate_kind: CertificateKind
    assessed_on: dt.date


class AssessmentPassed(AssessmentOutcome):
    pass


class AssessmentFailed(AssessmentOutcome):
    pass


class CertificateIssued(Payload):
    certificate_id: Ref
    assessment_ref: Ref
    person_id: PersonId
    enrollment_ref: Ref | None = None
    occupation_code: Ref
    level: Level | None = None
    certificate_kind: CertificateKind
    issued_on: dt.date


class CertificateRevoked(Payload):
    certificate_id: Ref
    person_id: PersonId
    revoked_on: dt.date
    reason: str = ""


# ---- output: skills.subsidy.events --------------------------------------------------------


class _Additive(Payload):
    """An output payload whose additive fields (``ADDITIVE``) are written only when they were
    given, a null included: an event made without them is byte for byte the JSON of the first
    version, and one made with them (a policy correction's) keeps them as given."""

    ADDITIVE: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _given_additive_fields(  # type: ignore[no-untyped-def]
        self, handler: SerializerFunctionWrapHandler
    ):  # no return annotation: the serialization schema stays the model's
        data: dict[str, Any] = handler(self)
        for name in self.ADDITIVE - self.model_fields_set:
            data.pop(name, None)
        return data


class Payee(Payload):
    kind: PayeeKind
    id: str


class PolicyRef(Payload):
    agency: str
    version: str
    hash: str | None = None  # additive: sha256 of the policy file the decision used


class Basis(Payload):
    enrollment_ref: str | None = None
    certificate_id: str | None = None
    assessment_ref: str | None = None
    days: int | None = None
    month: Month | None = None
    year_index: int | None = None


class PolicyCorrection(Payload):
    """Additive: marks an event published by a correction run (docs/POLICY_OPERATIONS.md)."""

    policy: PolicyRef
    period: dict[str, str]
    paid_fen: Fen
    entitled_fen: Fen


class SubsidyGranted(_Additive):
    grant_id: str
    person_id: PersonId
    agency: str
    subsidy_type: str
    stage: SubsidyStage
    amount_fen: Fen
    payee: Payee
    fund: str
    policy: PolicyRef
    rule: str
    basis: Basis
    explanation: str
    corrects_grant_id: str | None = None  # additive: the grant a correction top-up completes
    correction: PolicyCorrection | None = None  # additive
    ADDITIVE = frozenset({"corrects_grant_id", "correction"})


class SubsidyRejected(_Additive):
    person_id: PersonId
    agency: str
    subsidy_type: str
    rule: str
    basis: Basis
    reason: RejectionReason
    explanation: str
    policy: PolicyRef | None = None  # additive
    grant_id: str | None = None  # additive: the held grant an integrity_denied / hold_voided ends
    ADDITIVE = frozenset({"grant_id"})


class SubsidyReversed(_Additive):
    grant_id: str
    person_id: PersonId
    agency: str
    amount_fen: Annotated[int, Field(gt=0, strict=True)]
    reason: ReversalReason
    explanation: str
    rule: str | None = None  # additive: the rule of the reversed grant
    correction: PolicyCorrection | None = None  # additive
    ADDITIVE = frozenset({"correction"})


class Hold(Payload):
    checks: list[IntegrityCheck]
    enrollment_ref: Ref
    held_on: dt.date


class SubsidyHeld(SubsidyGranted):
    """Every field of the SubsidyGranted it would have been, same grant_id, plus ``hold``
    (POLICY.md §6). Nothing is paid on a hold."""

    hold: Hold


class BudgetThresholdReached(_Additive):
    agency: str
    fund: str
    year: int
    budget_fen: Fen
    committed_fen: Fen
    threshold: float  # a ratio (0.8, 0.9, 1.0), not money
    threshold_bp: int | None = None  # additive: the same ratio, exact, in basis points (8000, ...)
    ADDITIVE = frozenset({"threshold_bp"})


# ---- the subsidy service's command topic: skills.subsidy.reviews ---------------------------


class HoldReviewed(Payload):
    """A reviewer's decision on a held grant (EVENTS.md §5.4), source /services/subsidy/reviews."""

    grant_id: str
    person_id: PersonId
    agency: str
    decision: ReviewDecision
    reviewer: Annotated[str, StringConstraints(min_length=1, max_length=100)]  # the token's name
    note: Annotated[str, StringConstraints(max_length=2000)] = ""
    reviewed_at: dt.datetime
    review_id: str | None = None  # additive: the CloudEvents id the API answered with


# ---- the registry: topic -> CloudEvents type -> payload model ---------------------------
# Keyed by topic because one type name, skills.assessment.CertificateRevoked.v1, is used with
# two payloads: the auditor's upstream record and the assessment service's output event.

TOPIC_TYPES: dict[str, dict[str, type[Payload]]] = {
    "skills.training.upstream": {
        "skills.training.TraineeEnrolled.v1": TraineeEnrolled,
        "skills.training.AttendanceRecorded.v1": AttendanceRecorded,
        "skills.training.TrainingFinished.v1": TrainingFinished,
        "skills.training.EnrollmentWithdrawn.v1": EnrollmentWithdrawnUpstream,
        "skills.training.WorkTrainingMonthRecorded.v1": WorkTrainingMonthRecorded,
    },
    "skills.assessment.upstream": {
        "skills.assessment.AssessmentResultRecorded.v1": AssessmentResultRecorded,
        "skills.assessment.CertificateRevoked.v1": CertificateRevokedUpstream,
    },
    "skills.enrollment.events": {
        "skills.enrollment.EnrollmentAccepted.v1": EnrollmentAccepted,
        "skills.enrollment.EnrollmentRejected.v1": EnrollmentRejected,
        "skills.enrollment.TrainingCompleted.v1": TrainingCompleted,
        "skills.enrollment.EnrollmentWithdrawn.v1": EnrollmentWithdrawn,
        "skills.enrollment.WorkTrainingMonthAccepted.v1": WorkTrainingMonthAccepted,
        "skills.enrollment.EnrollmentFlagged.v1": EnrollmentFlagged,
    },
    "skills.assessment.events": {
        "skills.assessment.AssessmentPassed.v1": AssessmentPassed,
        "skills.assessment.AssessmentFailed.v1": AssessmentFailed,
        "skills.assessment.CertificateIssued.v1": CertificateIssued,
        "skills.assessment.CertificateRevoked.v1": CertificateRevoked,
    },
    "skills.subsidy.events": {
        "skills.subsidy.SubsidyGranted.v1": SubsidyGranted,
        "skills.subsidy.SubsidyRejected.v1": SubsidyRejected,
        "skills.subsidy.SubsidyReversed.v1": SubsidyReversed,
        "skills.subsidy.BudgetThresholdReached.v1": BudgetThresholdReached,
        "skills.subsidy.SubsidyHeld.v1": SubsidyHeld,
    },
    "skills.subsidy.reviews": {
        "skills.subsidy.HoldReviewed.v1": HoldReviewed,
    },
}

TYPE_OF: dict[type[Payload], str] = {
    model: name for types in TOPIC_TYPES.values() for name, model in types.items()
}


def dump(payload: Payload) -> dict[str, Any]:
    """A payload as the JSON object the contract shows (dates as ISO strings)."""
    return payload.model_dump(mode="json")
