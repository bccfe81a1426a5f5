"""A candidate decision (one rule, one enrollment, the facts it rests on) and what follows from it:
payee, occupation slot, hire window, and the clerk-readable wording of the facts and reasons."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from shared.contract.vocabulary import PayeeKind

from .facts import CertificateIssued, EnrollmentAccepted
from .outputs import Basis, RejectionReason
from .policy import PayeeRule, Policy, Rule, RuleKind, SlotKey
from .rules import Computed, cny
from .state import Enrollment, EnrollmentStatus, Grant

ANNUAL_LIMIT = 3  # POLICY §3.1: at most 3 counted grants per person per calendar year


def annual_limit_reached(live: Iterable[Grant], year: int) -> bool:
    """POLICY §3.1: the live grants already count ANNUAL_LIMIT in ``year`` (one rule for the
    engine's decisions and for policy corrections)."""
    return sum(g.counted_year == year for g in live) >= ANNUAL_LIMIT


def slot_held(live: Iterable[Grant], slot: str) -> bool:
    """POLICY §5 "Slots": a live grant already holds this occupation slot."""
    return any(g.slot == slot for g in live)


@dataclass(frozen=True, slots=True)
class Case:
    """One selected rule applied to one enrollment, with the facts the decision rests on."""

    policy: Policy
    rule: Rule
    enrollment: Enrollment
    basis: Basis
    basis_date: date
    certificate: CertificateIssued | None = None
    wages_fen: int = 0
    base: Grant | None = None
    base_amount: Computed | None = None

    @property
    def accepted(self) -> EnrollmentAccepted:
        return self.enrollment.accepted

    @property
    def level(self) -> str | None:
        return self.certificate.level if self.certificate else self.accepted.course.level


def payee_of(case: Case) -> tuple[str, str] | None:
    """The payee per the rule; `fee_payer` pays whoever paid the fee (谁垫付谁申领)."""
    accepted = case.accepted
    kind = case.rule.payee.value
    if case.rule.payee is PayeeRule.FEE_PAYER:
        kind = accepted.fee.payer
    if kind == PayeeKind.PERSON:
        return (PayeeKind.PERSON, accepted.person_id)
    if kind == PayeeKind.INSTITUTION:
        return (PayeeKind.INSTITUTION, accepted.institution_id)
    return (PayeeKind.EMPLOYER, accepted.employer.id) if accepted.employer else None


def slot_of(case: Case) -> str:
    """The occupation slot (POLICY §5 "Slots"): (occupation, level) for certificate_level rules,
    (occupation, course training type) for per_person rules, SQ-SPECOP included; the certificate
    kind only for a rule whose policy says `"slot": "certificate_kind"` (BJ-SPECOP)."""
    course = case.accepted.course
    if case.rule.slot is SlotKey.CERTIFICATE_KIND and case.certificate is not None:
        return f"kind:{case.certificate.certificate_kind}"
    if case.rule.kind is RuleKind.CERTIFICATE_LEVEL:
        return f"occupation:{course.occupation_code}:{case.level}"
    return f"occupation:{course.occupation_code}:{course.training_type}"


def in_hire_window(accepted: EnrollmentAccepted, months: int) -> bool:
    hired = accepted.hired_on
    if hired is None:
        return False
    return hired <= accepted.course.start_date <= add_months(hired, months)


def add_months(day: date, months: int) -> date:
    month_index = day.month - 1 + months
    year, month = day.year + month_index // 12, month_index % 12 + 1
    for last in (31, 30, 29, 28):
        try:
            return date(year, month, min(day.day, last))
        except ValueError:
            continue
    raise AssertionError("unreachable: day 28 exists in every month")


def program_years(case: Case) -> int:
    if case.rule.kind is not RuleKind.PER_PROGRAM_YEAR:
        return 1
    return case.accepted.course.program_years or 1


def facts_text(case: Case) -> str:
    accepted, enrollment = case.accepted, case.enrollment
    course = accepted.course
    parts = [f"enrollment {enrollment.ref} ({course.training_type} {course.occupation_code} "
             f"{course.occupation_name} {course.level or 'no level'}) accepted "
             f"{accepted.accepted_on}"]
    if enrollment.status is EnrollmentStatus.COMPLETED:
        parts.append(f"completed {enrollment.closed_on}, {enrollment.hours_attended} h over "
                     f"{enrollment.days_attended} days")
    if case.basis.month:
        parts.append(f"work month {case.basis.month} wages {cny(case.wages_fen)}")
    if case.certificate is not None:
        cert = case.certificate
        parts.append(f"certificate {cert.certificate_id} ({cert.certificate_kind} "
                     f"{cert.level or 'no level'}) issued {cert.issued_on} on assessment "
                     f"{cert.assessment_ref}")
    if case.base is not None:
        parts.append(f"base grant {case.base.grant_id} ({case.base.event.rule})")
    return "; ".join(parts)


def rejection_text(case: Case, reason: RejectionReason) -> str:
    rule, accepted = case.rule, case.accepted
    cert = case.certificate
    texts = {
        RejectionReason.PENSION_ELIGIBLE: f"the {case.policy.agency} policy excludes persons "
                                          f"drawing a monthly pension",
        RejectionReason.CERTIFICATE_KIND_NOT_COVERED: (
            f"certificate kind {cert.certificate_kind if cert else None} is not one of "
            f"{', '.join(rule.certificate_kinds)}"),
        RejectionReason.INELIGIBLE_CATEGORY: (
            f"categories {', '.join(accepted.categories) or 'none'} (rural {accepted.rural}), "
            f"employer {accepted.employer.id if accepted.employer else 'none'}, fee paid by "
            f"{accepted.fee.payer} do not meet the rule's groups or conditions"),
        RejectionReason.INSUFFICIENT_INSURANCE: (
            f"insured {accepted.insured_months} months, the rule needs "
            f"{rule.min_insured_months}"),
        RejectionReason.OUTSIDE_HIRE_WINDOW: (
            f"course start {accepted.course.start_date} is not within {rule.hire_window_months} "
            f"months after hire date {accepted.hired_on or 'unknown'}"),
        RejectionReason.INSUFFICIENT_HOURS: (
            f"{case.enrollment.hours_attended} hours attended, the rule needs {rule.min_hours}"),
        RejectionReason.AMOUNT_NOT_CONFIGURED: (
            f"the policy sets no amount for this case (level {case.level or 'none'})"),
        RejectionReason.DUPLICATE_PROJECT: "this rule already paid for this enrollment",
        RejectionReason.DUPLICATE_OCCUPATION_LEVEL: (
            f"occupation slot {slot_of(case)} was already used by an earlier grant"),
        RejectionReason.NOT_STACKABLE: (
            f"not stackable with {', '.join(rule.not_stackable_with) or 'a rival rule'} already "
            f"granted for the same employer"),
        RejectionReason.ANNUAL_LIMIT: (
            f"{ANNUAL_LIMIT} counted subsidies already granted in {case.basis_date.year}"),
        RejectionReason.BUDGET_EXHAUSTED: (
            f"fund {rule.fund} budget for {case.basis_date.year} would be exceeded"),
    }
    return texts[reason]
