"""The pure subsidy engine: one fact in, the person's new state and the subsidy events out.

`decide(policies, state, fact, budgets)` mutates and returns `state` and mutates `budgets`; it
reads no clock, environment or database. Rules, numbers and checks are POLICY.md's; every
decision records the rule id and the policy version in force on its basis date. A decision that
would grant money resting on a flagged enrollment is held for review instead (POLICY §6).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from enum import Enum

from shared.contract.vocabulary import Category, PayeeKind, ReviewDecision, TrainingType

from .cases import (
    Case,
    annual_limit_reached,
    facts_text,
    in_hire_window,
    payee_of,
    program_years,
    rejection_text,
    slot_held,
    slot_of,
)
from .facts import (
    AssessmentResult,
    CertificateIssued,
    CertificateRevoked,
    EnrollmentAccepted,
    EnrollmentFlagged,
    EnrollmentWithdrawn,
    Fact,
    HoldReviewed,
    TrainingCompleted,
    WorkMonthAccepted,
)
from .outputs import (
    Basis,
    BudgetThresholdReached,
    Output,
    PolicyRef,
    RejectionReason,
    ReversalReason,
    Stage,
    SubsidyGranted,
    SubsidyHeld,
    SubsidyRejected,
    SubsidyReversed,
    grant_id_for,
)
from .policy import Policy, PolicySet, RuleKind, Selector
from .rules import Computed, cny, compute, percent_of, percent_text
from .state import (
    BudgetLedger,
    Certificate,
    CertificateStatus,
    Enrollment,
    EnrollmentStatus,
    Flag,
    Grant,
    Hold,
    HoldStatus,
    PendingItem,
    PersonState,
    grants,
    live_grants,
    pending_items,
    rejections,
    reversals,
)

__all__ = [
    "BudgetLedger", "BudgetThresholdReached", "Fact", "Output", "PendingItem",
    "PersonState", "SubsidyGranted", "SubsidyHeld", "SubsidyRejected", "SubsidyReversed", "decide",
    "grants", "live_grants", "pending_items", "rejections", "reversals",
]

SCOPED_KINDS = (RuleKind.PER_DAY, RuleKind.TOPUP_PERCENT)
SCOPE_REASONS = (RejectionReason.PENSION_ELIGIBLE, RejectionReason.INELIGIBLE_CATEGORY)


class Mode(Enum):
    """How a decision is taken: at acceptance (advance), afresh (full), or after an advance."""

    ADVANCE = "advance"
    FULL = "full"
    SETTLEMENT = "settlement"


def decide(
    policies: PolicySet, state: PersonState, fact: Fact, budgets: BudgetLedger
) -> tuple[PersonState, list[Output]]:
    """Apply one fact; returns `state` (updated in place) and the events, in decision order.

    Idempotent: a fact the state already reflects (known enrollment, certificate or month, a
    closed enrollment's closing record) changes nothing and emits nothing.
    """
    if fact.person_id != state.person_id:
        raise ValueError(f"fact for {fact.person_id} applied to the state of {state.person_id}")
    run = _Run(policies, state, budgets)
    run.apply(fact)
    return state, run.outputs


class _Run:
    def __init__(self, policies: PolicySet, state: PersonState, budgets: BudgetLedger) -> None:
        self.policies, self.state, self.budgets = policies, state, budgets
        self.outputs: list[Output] = []

    def apply(self, fact: Fact) -> None:
        if isinstance(fact, EnrollmentAccepted):
            self.on_enrollment_accepted(fact)
        elif isinstance(fact, TrainingCompleted):
            self.on_training_completed(fact)
        elif isinstance(fact, EnrollmentWithdrawn):
            self.on_enrollment_withdrawn(fact)
        elif isinstance(fact, WorkMonthAccepted):
            self.on_work_month_accepted(fact)
        elif isinstance(fact, AssessmentResult):
            self.on_assessment_result(fact)
        elif isinstance(fact, CertificateIssued):
            self.on_certificate_issued(fact)
        elif isinstance(fact, EnrollmentFlagged):
            self.on_enrollment_flagged(fact)
        elif isinstance(fact, HoldReviewed):
            self.on_hold_reviewed(fact)
        else:
            self.on_certificate_revoked(fact)

    # -- facts ---------------------------------------------------------------------------------

    def on_enrollment_accepted(self, fact: EnrollmentAccepted) -> None:
        """Record the enrollment; grant the advance (POLICY §3.7, e.g. BS-PREJOB 50% advance)."""
        if fact.enrollment_ref in self.state.enrollments:
            return
        enrollment = Enrollment(fact)
        self.state.enrollments[fact.enrollment_ref] = enrollment
        self.state.log_fact(fact)
        for cert in list(self.state.certificates.values()):
            if cert.status is CertificateStatus.PENDING and cert.enrollment_ref is None:
                link = self._link(cert.issued.enrollment_ref, cert.issued.occupation_code,
                                  cert.issued.level, cert.issued.issued_on)
                self.state.certificates[cert.issued.certificate_id] = replace(
                    cert, enrollment_ref=link)
        self._advance(enrollment)

    def on_training_completed(self, fact: TrainingCompleted) -> None:
        """Decide completion rules (per_day, e.g. SQ-LIVING; per_person without a pass, e.g.
        BJ-PREJOB), then every certificate that waited for this completion (POLICY §3.10)."""
        enrollment = self.state.enrollments.get(fact.enrollment_ref)
        if enrollment is None or enrollment.status is not EnrollmentStatus.OPEN:
            return
        enrollment = replace(enrollment, status=EnrollmentStatus.COMPLETED,
                             hours_attended=fact.hours_attended,
                             days_attended=fact.days_attended, closed_on=fact.completed_on)
        self.state.enrollments[enrollment.ref] = enrollment
        self.state.log_fact(fact)
        policy = self.policies.for_date(enrollment.accepted.agency, fact.completed_on)
        if policy is not None:
            self._decide_completion(policy, enrollment, fact.completed_on)
        for cert in list(self.state.certificates.values()):
            if cert.status is CertificateStatus.PENDING and cert.enrollment_ref == enrollment.ref:
                self._decide_certificate(cert, enrollment)

    def _decide_completion(self, policy: Policy, enrollment: Enrollment, on: date) -> None:
        course = enrollment.accepted.course
        sector = enrollment.accepted.employer.sector if enrollment.accepted.employer else None
        for rule in policy.rules:
            on_completion = rule.kind is RuleKind.PER_DAY or (
                rule.kind is RuleKind.PER_PERSON and rule.selected_by is Selector.TRAINING_TYPE
                and not rule.requires_pass)
            if not on_completion or not rule.selects_course(course.training_type, sector):
                continue
            if rule.kind is RuleKind.PER_DAY and enrollment.days_attended <= 0:
                continue
            days = enrollment.days_attended if rule.kind is RuleKind.PER_DAY else None
            self._decide(Case(policy, rule, enrollment, Basis(enrollment.ref, days=days), on))

    def on_enrollment_withdrawn(self, fact: EnrollmentWithdrawn) -> None:
        """Close the enrollment and take back its unsettled advance (advance_not_earned)."""
        enrollment = self.state.enrollments.get(fact.enrollment_ref)
        if enrollment is None or enrollment.status is not EnrollmentStatus.OPEN:
            return
        self.state.enrollments[enrollment.ref] = replace(
            enrollment, status=EnrollmentStatus.WITHDRAWN, closed_on=fact.withdrawn_on,
            days_attended=fact.days_attended)
        self.state.log_fact(fact)
        self._reverse_advances(enrollment.ref, f"enrollment withdrawn on {fact.withdrawn_on}")

    def on_work_month_accepted(self, fact: WorkMonthAccepted) -> None:
        """Decide per_month rules (SQ-YGDX, BS-YGDX, BJ-YGDX) for months 1..max_months."""
        enrollment = self.state.enrollments.get(fact.enrollment_ref)
        if (enrollment is None or enrollment.status is not EnrollmentStatus.OPEN
                or fact.month in enrollment.months):
            return
        enrollment = replace(enrollment, months=enrollment.months + (fact.month,))
        self.state.enrollments[enrollment.ref] = enrollment
        self.state.log_fact(fact)
        policy = self.policies.for_date(enrollment.accepted.agency, fact.first_day)
        if policy is None:
            return
        course = enrollment.accepted.course
        for rule in policy.rules:
            if (rule.kind is RuleKind.PER_MONTH and rule.selects_course(course.training_type, None)
                    and rule.max_months is not None and fact.month_index <= rule.max_months):
                self._decide(Case(policy, rule, enrollment,
                                  Basis(enrollment.ref, month=fact.month), fact.first_day,
                                  wages_fen=fact.wages_fen))

    def on_assessment_result(self, fact: AssessmentResult) -> None:
        """A failed assessment takes back its enrollment's unsettled advance; a pass is decided
        on its CertificateIssued."""
        if fact.passed:
            return
        link = self._link(fact.enrollment_ref, fact.occupation_code, fact.level, fact.assessed_on)
        if link is not None:
            self.state.log_fact(fact)
            self._reverse_advances(link, f"assessment {fact.assessment_ref} failed on "
                                         f"{fact.assessed_on}")

    def on_certificate_issued(self, fact: CertificateIssued) -> None:
        """Link the certificate; decide it now if its training completed, else keep it pending."""
        if fact.certificate_id in self.state.certificates:
            return
        self.state.log_fact(fact)
        if self.state.pending_revocations.pop(fact.certificate_id, None) is not None:
            self.state.certificates[fact.certificate_id] = Certificate(
                fact, None, CertificateStatus.REVOKED)
            return
        link = self._link(fact.enrollment_ref, fact.occupation_code, fact.level, fact.issued_on)
        cert = Certificate(fact, link)
        self.state.certificates[fact.certificate_id] = cert
        enrollment = self.state.enrollments.get(link) if link else None
        if enrollment is not None and enrollment.status is EnrollmentStatus.COMPLETED:
            self._decide_certificate(cert, enrollment)

    def on_certificate_revoked(self, fact: CertificateRevoked) -> None:
        """Reverse every live grant resting on the certificate (POLICY §3.8), releasing its
        annual-limit and occupation slots; a revocation before its certificate waits."""
        cert = self.state.certificates.get(fact.certificate_id)
        if cert is None:
            if fact.certificate_id not in self.state.pending_revocations:
                self.state.pending_revocations[fact.certificate_id] = fact
                self.state.log_fact(fact)
            return
        if cert.status is CertificateStatus.REVOKED:
            return
        self.state.log_fact(fact)
        self.state.certificates[fact.certificate_id] = replace(
            cert, status=CertificateStatus.REVOKED)
        why = f"certificate {fact.certificate_id} revoked on {fact.revoked_on}: {fact.reason}"
        for grant in self.state.live_grants():
            if grant.event.basis.certificate_id != fact.certificate_id:
                continue
            self._reverse(grant, ReversalReason.CERTIFICATE_REVOKED, why)
            if grant.event.stage is Stage.SETTLEMENT:
                for advance in self.state.live_grants():
                    if (advance.event.stage is Stage.ADVANCE
                            and advance.event.rule == grant.event.rule
                            and advance.event.basis.enrollment_ref
                            == grant.event.basis.enrollment_ref):
                        self._reverse(advance, ReversalReason.CERTIFICATE_REVOKED, why)

    def on_enrollment_flagged(self, fact: EnrollmentFlagged) -> None:
        """Remember the flag: from now on a decision granting money resting on the enrollment
        is held (POLICY §6); grants published before it stay (first come, first served)."""
        known = self.state.flags.setdefault(fact.enrollment_ref, [])
        if any(f.check == fact.check for f in known):
            return
        known.append(Flag(fact.check, fact.flagged_on, fact.detail))
        self.state.log_fact(fact)

    def on_hold_reviewed(self, fact: HoldReviewed) -> None:
        """Release (the held SubsidyGranted, unchanged but for the explanation naming the
        review) or deny (SubsidyRejected(integrity_denied), freeing limit, slot and budget as a
        reversal does) a held grant of the reviewer's agency, once (POLICY §6). A top-up follows
        its base grant's review; a review of anything not held changes nothing."""
        grant = self.state.find_grant(fact.grant_id)
        if grant is None or not grant.held or grant.event.agency != fact.agency:
            return
        base = self.state.find_grant(grant.base_grant_id) if grant.base_grant_id else None
        if base is not None and base.held:
            return
        self.state.log_fact(fact)
        review = (f"integrity review {fact.review_id} by {fact.reviewer} on "
                  f"{fact.reviewed_on}")
        if fact.decision == ReviewDecision.RELEASE:
            self._release(grant, fact, review)
        else:
            self._end_hold(grant, HoldStatus.DENIED, RejectionReason.INTEGRITY_DENIED,
                           f"denied on {review}", fact)

    # -- selection -----------------------------------------------------------------------------

    def _link(self, enrollment_ref: str | None, occupation: str, level: str | None,
              on: date) -> str | None:
        """POLICY §5 "Linking an assessment": by reference, else latest-starting match."""
        def agrees(e: Enrollment) -> bool:
            course = e.accepted.course
            return course.occupation_code == occupation and course.level == level

        if enrollment_ref is not None:
            known = self.state.enrollments.get(enrollment_ref)
            return enrollment_ref if known is not None and agrees(known) else None
        candidates = [
            (e.accepted.course.start_date, index, e.ref)
            for index, e in enumerate(self.state.enrollments.values())
            if e.status is not EnrollmentStatus.WITHDRAWN and agrees(e)
            and e.accepted.course.start_date <= on
        ]
        return max(candidates)[2] if candidates else None

    def _decide_certificate(self, cert: Certificate, enrollment: Enrollment) -> None:
        """Decide the rules a passed certificate selects: certificate_level (e.g. BJ-CERT-IND),
        per_person on a pass or certificate kind (e.g. BS-PREJOB, BJ-SPECOP), per_program_year
        (e.g. A-APPR)."""
        self.state.certificates[cert.issued.certificate_id] = replace(
            cert, status=CertificateStatus.DECIDED)
        issued = cert.issued
        policy = self.policies.for_date(enrollment.accepted.agency, issued.issued_on)
        if policy is None:
            return
        course = enrollment.accepted.course
        sector = enrollment.accepted.employer.sector if enrollment.accepted.employer else None
        for rule in policy.rules:
            by_course = rule.selects_course(course.training_type, sector)
            if rule.kind is RuleKind.CERTIFICATE_LEVEL:
                selected = by_course and issued.level is not None
            elif rule.kind is RuleKind.PER_PERSON and rule.selected_by is Selector.CERTIFICATE_KIND:
                selected = issued.certificate_kind in rule.certificate_kinds
            elif rule.kind is RuleKind.PER_PERSON:
                selected = by_course and rule.requires_pass
            else:
                selected = rule.kind is RuleKind.PER_PROGRAM_YEAR and by_course
            if selected:
                basis = Basis(enrollment.ref, issued.certificate_id, issued.assessment_ref)
                self._decide(Case(policy, rule, enrollment, basis,
                                  issued.issued_on, certificate=issued))

    def _advance(self, enrollment: Enrollment) -> None:
        """Advance (先行拨付) rate x the main rule's amount to the institution, only if the main
        rule would pay at acceptance (POLICY §5 "Advances and reversals")."""
        accepted = enrollment.accepted
        course = accepted.course
        policy = self.policies.for_date(accepted.agency, accepted.accepted_on)
        if (policy is None or not policy.advance_rate_bp or not course.project_based
                or course.training_type == TrainingType.APPRENTICESHIP):
            return
        sector = accepted.employer.sector if accepted.employer else None
        main = next((r for r in policy.rules
                     if r.kind in (RuleKind.CERTIFICATE_LEVEL, RuleKind.PER_PERSON)
                     and r.selected_by is Selector.TRAINING_TYPE
                     and r.selects_course(course.training_type, sector)), None)
        if main is None:
            return
        case = Case(policy, main, enrollment, Basis(enrollment.ref), accepted.accepted_on)
        computed = compute(main, accepted, level=course.level)
        amount = percent_of(computed.fen, policy.advance_rate_bp) if computed else 0
        if computed is None or amount == 0 or self._failure(case, computed, Mode.ADVANCE, amount):
            return
        formula = (f"advance {percent_text(policy.advance_rate_bp)} of {computed.formula}, "
                   f"paid to the institution for project-based training")
        self._grant(case, Stage.ADVANCE, amount, replace(computed, formula=formula))

    # -- deciding ------------------------------------------------------------------------------

    def _decide(self, case: Case) -> None:
        """Emit exactly one outcome for a selected rule (nothing for an out-of-scope per_day or
        top-up rule, or a zero amount); a rejection after an advance takes the advance back."""
        rule = case.rule
        advance = self.state.unsettled_advance(case.enrollment.ref, rule.id)
        mode = Mode.SETTLEMENT if advance else Mode.FULL
        computed = compute(rule, case.accepted, level=case.level,
                           days=case.enrollment.days_attended, wages_fen=case.wages_fen,
                           base=case.base_amount)
        years = program_years(case)
        total = computed.fen * years if computed else 0
        cost = total - advance.event.amount_fen if advance else total
        if computed is not None and cost <= 0:
            return
        reason = self._failure(case, computed, mode, cost)
        if reason is not None:
            if rule.kind in SCOPED_KINDS and reason in SCOPE_REASONS:
                return
            self._reject(case, reason)
            if advance is not None:
                self._reverse(advance, ReversalReason.ADVANCE_NOT_EARNED,
                              f"{rule.id} rejected at settlement ({reason.value})")
            return
        assert computed is not None
        if rule.kind is RuleKind.PER_PROGRAM_YEAR:
            for year_index in range(1, years + 1):
                self._grant(replace(case, basis=replace(case.basis, year_index=year_index)),
                            Stage.FULL, computed.fen, computed)
            return
        if advance is not None:
            formula = (f"{computed.formula} = {cny(total)}, less the advance "
                       f"{cny(advance.event.amount_fen)} ({advance.grant_id}); paid to the "
                       f"institution for project-based training")
            granted = self._grant(case, Stage.SETTLEMENT, cost, replace(computed, formula=formula))
        else:
            granted = self._grant(case, Stage.FULL, cost, computed)
        for topup in case.policy.rules:
            if topup.kind is RuleKind.TOPUP_PERCENT and topup.base_rule == rule.id:
                self._decide(replace(case, rule=topup, base=granted,
                                     base_amount=replace(computed, fen=total)))

    def _failure(self, case: Case, computed: Computed | None, mode: Mode,
                 cost: int) -> RejectionReason | None:
        """The first failing check, in POLICY §5's order."""
        rule, accepted = case.rule, case.accepted
        counted = rule.counts_toward_annual_limit and mode is not Mode.SETTLEMENT
        if case.policy.excludes_pension_eligible and Category.PENSION_ELIGIBLE in accepted.categories:
            return RejectionReason.PENSION_ELIGIBLE
        if (case.certificate is not None and rule.certificate_kinds
                and case.certificate.certificate_kind not in rule.certificate_kinds):
            return RejectionReason.CERTIFICATE_KIND_NOT_COVERED
        if not self._eligible(case):
            return RejectionReason.INELIGIBLE_CATEGORY
        if rule.min_insured_months is not None and accepted.insured_months < rule.min_insured_months:
            return RejectionReason.INSUFFICIENT_INSURANCE
        if rule.hire_window_months is not None and not in_hire_window(accepted,
                                                                       rule.hire_window_months):
            return RejectionReason.OUTSIDE_HIRE_WINDOW
        if (mode is not Mode.ADVANCE and rule.min_hours is not None
                and case.enrollment.hours_attended < rule.min_hours):
            return RejectionReason.INSUFFICIENT_HOURS
        if computed is None:
            return RejectionReason.AMOUNT_NOT_CONFIGURED
        live = self.state.live_grants()
        if any(g.event.rule == rule.id and g.event.stage is not Stage.ADVANCE
               and g.event.basis.enrollment_ref == case.enrollment.ref
               and g.event.basis.month == case.basis.month for g in live):
            return RejectionReason.DUPLICATE_PROJECT
        if counted and slot_held(live, slot_of(case)):
            return RejectionReason.DUPLICATE_OCCUPATION_LEVEL
        if self._not_stackable(case, live):
            return RejectionReason.NOT_STACKABLE
        if counted and annual_limit_reached(live, case.basis_date.year):
            return RejectionReason.ANNUAL_LIMIT
        year = case.basis_date.year
        if not self.budgets.fits(case.policy.agency, rule.fund, year, cost,
                                 case.policy.budget_fen(rule.fund, year)):
            return RejectionReason.BUDGET_EXHAUSTED
        return None

    def _eligible(self, case: Case) -> bool:
        """Groups, "only when rural", "insured employer", employer conditions, fee payer, the
        certification date and a payee that exists (ineligible_category otherwise)."""
        rule, accepted = case.rule, case.accepted
        employer = accepted.employer
        if rule.categories and not any(
            group.category in accepted.categories
            and (not group.requires_rural or accepted.rural)
            and (not group.requires_insured_employer or (employer is not None and employer.insured))
            for group in rule.categories
        ):
            return False
        if rule.employer_hardship and (employer is None or not employer.hardship_certified):
            return False
        if rule.employer_sectors and (employer is None or employer.sector not in rule.employer_sectors):
            return False
        if rule.fee_payers and (accepted.fee.payer not in rule.fee_payers
                                or (accepted.fee.payer == PayeeKind.EMPLOYER and employer is None)):
            return False
        if (rule.certified_on_or_after is not None and case.certificate is not None
                and case.certificate.issued_on < rule.certified_on_or_after):
            return False
        # Project-based training pays the institution (advance and settlement), but that changes
        # who is paid, not who is eligible: an employer-paid rule still needs an employer
        # (POLICY §5 "Advances and reversals").
        return payee_of(case) is not None

    def _not_stackable(self, case: Case, live: list[Grant]) -> bool:
        """SQ-YGDX / SQ-PREJOB: one excludes the other for the same person and employer."""
        employer = case.accepted.employer
        if employer is None:
            return False
        rivals = set(case.rule.not_stackable_with) | {
            r.id for r in case.policy.rules if case.rule.id in r.not_stackable_with}
        return any(g.event.rule in rivals and g.employer_id == employer.id for g in live)

    # -- outcomes ------------------------------------------------------------------------------

    def _grant(self, case: Case, stage: Stage, amount: int, computed: Computed) -> Grant:
        rule, policy = case.rule, case.policy
        if stage is Stage.FULL:
            payee = payee_of(case)
            assert payee is not None
        else:
            payee = (PayeeKind.INSTITUTION, case.accepted.institution_id)
        holds_slots = rule.counts_toward_annual_limit and stage is not Stage.SETTLEMENT
        assumed = " (assumed amount)" if computed.assumed else ""
        explanation = (
            f"{rule.id} {rule.subsidy_type} {stage.value}: {computed.formula} -> {cny(amount)} "
            f"({amount} fen){assumed}, paid to {payee[0]} {payee[1]} from {rule.fund}; "
            f"policy {policy.agency} version {policy.version}; facts: {facts_text(case)}"
        )
        event = SubsidyGranted(
            grant_id=grant_id_for(policy.agency, rule.id, stage, case.basis),
            person_id=self.state.person_id, agency=policy.agency,
            subsidy_type=rule.subsidy_type, stage=stage, amount_fen=amount,
            payee_kind=payee[0], payee_id=payee[1], fund=rule.fund, policy=_policy_ref(policy),
            rule=rule.id, basis=case.basis, explanation=explanation,
        )
        flags = self.state.flags.get(case.enrollment.ref)
        hold = Hold(tuple(sorted({f.check for f in flags})), case.enrollment.ref,
                    case.basis_date) if flags else None
        grant = Grant(
            event, case.basis_date,
            counted_year=case.basis_date.year if holds_slots else None,
            slot=slot_of(case) if holds_slots else None,
            employer_id=case.accepted.employer.id if case.accepted.employer else None,
            base_grant_id=case.base.grant_id if case.base else None,
            hold=hold,
        )
        self.state.grant_log.append(grant)
        # Held, it counts exactly as the grant would (limit, slot, project, budget, POLICY §6).
        self.outputs.append(event if hold is None else SubsidyHeld(
            event, hold.checks, hold.enrollment_ref, hold.held_on))
        year = case.basis_date.year
        self.outputs.extend(self.budgets.commit(policy.agency, rule.fund, year, amount,
                                                policy.budget_fen(rule.fund, year)))
        return grant

    def _reject(self, case: Case, reason: RejectionReason) -> None:
        rule, policy = case.rule, case.policy
        event = SubsidyRejected(
            person_id=self.state.person_id, agency=policy.agency, subsidy_type=rule.subsidy_type,
            rule=rule.id, basis=case.basis, reason=reason,
            explanation=(f"{rule.id} {rule.subsidy_type} rejected: {reason.value}: "
                         f"{rejection_text(case, reason)}; policy {policy.agency} version "
                         f"{policy.version}; facts: {facts_text(case)}"),
            policy=_policy_ref(policy),
        )
        self.state.rejection_log.append(event)
        self.outputs.append(event)

    def _reverse(self, grant: Grant, reason: ReversalReason, why: str) -> None:
        """Take a live grant back: its slots and its money are released, its top-ups follow.
        A held grant was never paid: its hold ends instead (hold_voided, POLICY §6)."""
        grant = self.state.grant(grant.grant_id)
        if not grant.live:
            return
        if grant.held:
            self._end_hold(grant, HoldStatus.VOIDED, RejectionReason.HOLD_VOIDED,
                           f"{reason.value}: {why}")
            return
        self.state.put_grant(replace(grant, live=False))
        event = SubsidyReversed(
            grant_id=grant.grant_id, person_id=self.state.person_id, agency=grant.event.agency,
            amount_fen=grant.event.amount_fen, reason=reason, rule=grant.event.rule,
            explanation=(f"{grant.event.rule} {grant.event.stage.value} grant {grant.grant_id} "
                         f"of {cny(grant.event.amount_fen)} ({grant.event.amount_fen} fen) "
                         f"reversed: {reason.value}: {why}"),
        )
        self.state.reversal_log.append(event)
        self.outputs.append(event)
        self.budgets.release(grant.event.agency, grant.event.fund, grant.basis_date.year,
                             grant.event.amount_fen)
        for dependant in self.state.live_grants():
            if dependant.base_grant_id == grant.grant_id:
                self._reverse(dependant, reason, f"its base grant {grant.grant_id} was reversed")

    def _release(self, grant: Grant, fact: HoldReviewed, review: str) -> None:
        """Publish the held grant (same grant_id, amount, payee, basis); its held top-ups follow."""
        grant = self.state.grant(grant.grant_id)
        if not grant.held:
            return
        assert grant.hold is not None
        event = replace(grant.event, explanation=(
            f"{grant.event.explanation}; held for integrity review ({', '.join(grant.hold.checks)}"
            f" on enrollment {grant.hold.enrollment_ref}) and released on {review}"))
        self.state.put_grant(replace(grant, event=event, hold=replace(
            grant.hold, status=HoldStatus.RELEASED, review_id=fact.review_id,
            reviewer=fact.reviewer, reviewed_at=fact.reviewed_at)))
        self.outputs.append(event)
        for dependant in self.state.held_grants():
            if dependant.base_grant_id == grant.grant_id:
                self._release(dependant, fact, f"{review} of its base grant {grant.grant_id}")

    def _end_hold(self, grant: Grant, status: HoldStatus, reason: RejectionReason, why: str,
                  review: HoldReviewed | None = None) -> None:
        """End a hold without paying: SubsidyRejected naming the grant and the cause; the
        limit, slot and budget it held are freed as a reversal frees them, its held top-ups
        end with it, and a denied settlement takes its paid advance back."""
        grant = self.state.grant(grant.grant_id)
        if not grant.held:
            return
        assert grant.hold is not None
        hold = replace(grant.hold, status=status)
        if review is not None:
            hold = replace(hold, review_id=review.review_id, reviewer=review.reviewer,
                           reviewed_at=review.reviewed_at)
        self.state.put_grant(replace(grant, live=False, hold=hold))
        event_ = grant.event
        event = SubsidyRejected(
            person_id=self.state.person_id, agency=event_.agency, subsidy_type=event_.subsidy_type,
            rule=event_.rule, basis=event_.basis, reason=reason,
            explanation=(f"{event_.rule} {event_.stage.value} grant {grant.grant_id} of "
                         f"{cny(event_.amount_fen)} ({event_.amount_fen} fen), held for integrity "
                         f"review ({', '.join(grant.hold.checks)} on enrollment "
                         f"{grant.hold.enrollment_ref}), ends: {reason.value}: {why}; nothing "
                         f"was paid, so nothing is reversed"),
            policy=event_.policy, grant_id=grant.grant_id,
        )
        self.state.rejection_log.append(event)
        self.outputs.append(event)
        self.budgets.release(event_.agency, event_.fund, grant.basis_date.year, event_.amount_fen)
        for dependant in self.state.held_grants():
            if dependant.base_grant_id == grant.grant_id:
                self._end_hold(dependant, status, reason,
                               f"its base grant {grant.grant_id} ended ({reason.value})", review)
        if status is HoldStatus.DENIED and event_.stage is Stage.SETTLEMENT:
            advance = self.state.unsettled_advance(event_.basis.enrollment_ref or "", event_.rule)
            if advance is not None:
                self._reverse(advance, ReversalReason.ADVANCE_NOT_EARNED,
                              f"its settlement {grant.grant_id} was {why}")

    def _reverse_advances(self, enrollment_ref: str, why: str) -> None:
        for grant in self.state.live_grants():
            if (grant.event.basis.enrollment_ref == enrollment_ref
                    and self.state.unsettled_advance(enrollment_ref, grant.event.rule) == grant):
                self._reverse(grant, ReversalReason.ADVANCE_NOT_EARNED, why)


def _policy_ref(policy: Policy) -> PolicyRef:
    return PolicyRef(policy.agency, policy.version, policy.content_hash)
