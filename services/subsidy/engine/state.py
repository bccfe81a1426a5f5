"""What the engine remembers between facts: per-person state and shared fund ledgers.

`PersonState` and `BudgetLedger` are the only mutable objects of the engine: `decide` updates
them in place (and returns the state), the caller persists them after each batch (as JSON,
through the one serialiser outside the engine: services.subsidy.state_codec).

The engine's dataclasses are slotted (``slots=True``): every batch decodes the state of each
person it touches, and without an instance ``__dict__`` a decoded state takes 8.2 KB instead
of 13.0 and decodes about a quarter faster (tools/microbench.py ``state-codec``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date
from enum import StrEnum
from typing import Any

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
    THRESHOLDS_BP,
    BudgetThresholdReached,
    Stage,
    SubsidyGranted,
    SubsidyRejected,
    SubsidyReversed,
)


class EnrollmentStatus(StrEnum):
    OPEN = "open"
    COMPLETED = "completed"
    WITHDRAWN = "withdrawn"


@dataclass(frozen=True, slots=True)
class Enrollment:
    accepted: EnrollmentAccepted
    status: EnrollmentStatus = EnrollmentStatus.OPEN
    hours_attended: int = 0
    days_attended: int = 0
    closed_on: date | None = None
    months: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return self.accepted.enrollment_ref


class CertificateStatus(StrEnum):
    PENDING = "pending"
    DECIDED = "decided"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class Certificate:
    issued: CertificateIssued
    enrollment_ref: str | None
    status: CertificateStatus = CertificateStatus.PENDING


class HoldStatus(StrEnum):
    OPEN = "open"  # waiting for a reviewer
    RELEASED = "released"  # published as SubsidyGranted
    DENIED = "denied"  # SubsidyRejected(integrity_denied)
    VOIDED = "voided"  # SubsidyRejected(hold_voided): what would have reversed it ended it


@dataclass(frozen=True, slots=True)
class Hold:
    """Why a grant is held (POLICY §6) and how its review ended."""

    checks: tuple[str, ...]
    enrollment_ref: str
    held_on: date
    status: HoldStatus = HoldStatus.OPEN
    review_id: str | None = None
    reviewer: str | None = None
    reviewed_at: str | None = None


@dataclass(frozen=True, slots=True)
class Flag:
    """An integrity check tripped on one of the person's enrollments (EnrollmentFlagged)."""

    check: str
    flagged_on: date
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Grant:
    """A grant and what it holds: its annual-limit year, its occupation slot, its fund year.

    A held grant (``hold`` open) holds all of them exactly as a paid one, but nothing is paid
    until a reviewer releases it; denied or voided it is no longer live."""

    event: SubsidyGranted
    basis_date: date
    counted_year: int | None
    slot: str | None
    employer_id: str | None
    base_grant_id: str | None
    live: bool = True
    hold: Hold | None = None

    @property
    def grant_id(self) -> str:
        return self.event.grant_id

    @property
    def held(self) -> bool:
        """Waiting for review: live, counted, not paid."""
        return self.live and self.hold is not None and self.hold.status is HoldStatus.OPEN

    @property
    def paid(self) -> bool:
        return self.live and (self.hold is None or self.hold.status is HoldStatus.RELEASED)


@dataclass(slots=True)
class PersonState:
    person_id: str
    enrollments: dict[str, Enrollment] = field(default_factory=dict)
    certificates: dict[str, Certificate] = field(default_factory=dict)
    pending_revocations: dict[str, CertificateRevoked] = field(default_factory=dict)
    grant_log: list[Grant] = field(default_factory=list)
    rejection_log: list[SubsidyRejected] = field(default_factory=list)
    reversal_log: list[SubsidyReversed] = field(default_factory=list)
    # Every fact that changed the state, in arrival order, by reference to what the state
    # already holds (see `log_fact`): what a what-if run or a policy correction replays.
    fact_log: list[list[Any]] = field(default_factory=list)
    # Correction events published by `services.subsidy.corrections`, as their payloads.
    corrections: list[dict[str, Any]] = field(default_factory=list)
    # Integrity flags by enrollment (POLICY §6): decisions resting on one are held.
    flags: dict[str, list[Flag]] = field(default_factory=dict)

    @classmethod
    def empty(cls, person_id: str) -> PersonState:
        return cls(person_id)

    def live_grants(self) -> list[Grant]:
        return [g for g in self.grant_log if g.live]

    def held_grants(self) -> list[Grant]:
        return [g for g in self.grant_log if g.held]

    def find_grant(self, grant_id: str) -> Grant | None:
        return next((g for g in self.grant_log if g.grant_id == grant_id), None)

    def grant(self, grant_id: str) -> Grant:
        """The current record of a grant (snapshots taken before a cascade may be stale)."""
        return next(g for g in self.grant_log if g.grant_id == grant_id)

    def put_grant(self, grant: Grant) -> None:
        self.grant_log = [grant if g.grant_id == grant.grant_id else g for g in self.grant_log]

    def unsettled_advance(self, enrollment_ref: str, rule: str) -> Grant | None:
        """The live advance of (enrollment, rule) that no live settlement has completed yet."""
        same = [g for g in self.live_grants()
                if g.event.basis.enrollment_ref == enrollment_ref and g.event.rule == rule]
        if any(g.event.stage is Stage.SETTLEMENT for g in same):
            return None
        return next((g for g in same if g.event.stage is Stage.ADVANCE), None)

    def log_fact(self, fact: Fact) -> None:
        """Remember a fact that took effect, compactly: enrollments, completions, withdrawals
        and certificates by reference (the state holds their content), the rest in full."""
        entry = _compact(fact)
        # A failed assessment leaves no other trace in the state; its redelivery must not
        # log it twice.
        if entry[0] != "f" or entry not in self.fact_log:
            self.fact_log.append(entry)

    def logged_facts(self) -> list[Fact]:
        """The facts of `fact_log`, rebuilt in their original order."""
        return [self._rebuild(entry) for entry in self.fact_log]

    def _rebuild(self, entry: list[Any]) -> Fact:
        code, ref = entry[0], entry[1]
        if code == "a":
            return self.enrollments[ref].accepted
        if code in ("c", "w"):
            enrollment = self.enrollments[ref]
            assert enrollment.closed_on is not None
            if code == "c":
                return TrainingCompleted(ref, self.person_id, enrollment.hours_attended,
                                         enrollment.days_attended, enrollment.closed_on)
            return EnrollmentWithdrawn(ref, self.person_id, enrollment.closed_on,
                                       enrollment.days_attended)
        if code == "m":
            return WorkMonthAccepted(ref, self.person_id, entry[2], entry[3], entry[4])
        if code == "f":
            return AssessmentResult(ref, self.person_id, entry[2], entry[3], entry[4], entry[5],
                                    date.fromisoformat(entry[6]), passed=False)
        if code == "i":
            return self.certificates[ref].issued
        if code == "r":
            return CertificateRevoked(ref, self.person_id, date.fromisoformat(entry[2]), entry[3])
        if code == "g":
            return EnrollmentFlagged(ref, self.person_id, entry[2], date.fromisoformat(entry[3]),
                                     entry[4])
        if code == "h":
            return HoldReviewed(ref, self.person_id, *entry[2:])
        raise ValueError(f"unknown fact log entry {entry!r}")


def _compact(fact: Fact) -> list[Any]:
    if isinstance(fact, EnrollmentAccepted):
        return ["a", fact.enrollment_ref]
    if isinstance(fact, TrainingCompleted):
        return ["c", fact.enrollment_ref]
    if isinstance(fact, EnrollmentWithdrawn):
        return ["w", fact.enrollment_ref]
    if isinstance(fact, WorkMonthAccepted):
        return ["m", fact.enrollment_ref, fact.month, fact.wages_fen, fact.month_index]
    if isinstance(fact, AssessmentResult):
        return ["f", fact.assessment_ref, fact.enrollment_ref, fact.occupation_code, fact.level,
                fact.certificate_kind, fact.assessed_on.isoformat()]
    if isinstance(fact, CertificateIssued):
        return ["i", fact.certificate_id]
    if isinstance(fact, EnrollmentFlagged):
        return ["g", fact.enrollment_ref, fact.check, fact.flagged_on.isoformat(), fact.detail]
    if isinstance(fact, HoldReviewed):
        return ["h", fact.grant_id, fact.agency, fact.decision, fact.reviewer, fact.note,
                fact.reviewed_at, fact.review_id]
    return ["r", fact.certificate_id, fact.revoked_on.isoformat(), fact.reason]


def grants(state: PersonState) -> list[SubsidyGranted]:
    """Every grant ever made to the person, in decision order (reversed ones included)."""
    return [g.event for g in state.grant_log]


def live_grants(state: PersonState) -> list[SubsidyGranted]:
    return [g.event for g in state.live_grants()]


def rejections(state: PersonState) -> list[SubsidyRejected]:
    return list(state.rejection_log)


def reversals(state: PersonState) -> list[SubsidyReversed]:
    return list(state.reversal_log)


class PendingKind(StrEnum):
    CERTIFICATE_AWAITING_COMPLETION = "certificate_awaiting_completion"
    CERTIFICATE_UNLINKED = "certificate_unlinked"
    REVOCATION_AWAITING_CERTIFICATE = "revocation_awaiting_certificate"


@dataclass(frozen=True, slots=True)
class PendingItem:
    kind: PendingKind
    reference: str
    enrollment_ref: str | None
    since: date


def pending_items(state: PersonState) -> list[PendingItem]:
    """What waits for a fact still to come (POLICY §3.10), for the query API."""
    items = [
        PendingItem(
            PendingKind.CERTIFICATE_AWAITING_COMPLETION if c.enrollment_ref
            else PendingKind.CERTIFICATE_UNLINKED,
            c.issued.certificate_id, c.enrollment_ref, c.issued.issued_on,
        )
        for c in state.certificates.values() if c.status is CertificateStatus.PENDING
    ]
    items += [
        PendingItem(PendingKind.REVOCATION_AWAITING_CERTIFICATE, r.certificate_id, None,
                    r.revoked_on)
        for r in state.pending_revocations.values()
    ]
    return items


@dataclass(frozen=True, slots=True)
class FundYear:
    committed_fen: int = 0
    thresholds_emitted_bp: tuple[int, ...] = ()


@dataclass(slots=True)
class BudgetLedger:
    """Committed money per (agency, fund, year), shared by every person; budgets come from policy."""

    funds: dict[str, FundYear] = field(default_factory=dict)

    @staticmethod
    def _key(agency: str, fund: str, year: int) -> str:
        return f"{agency}|{fund}|{year}"

    def get(self, agency: str, fund: str, year: int) -> FundYear:
        return self.funds.get(self._key(agency, fund, year), FundYear())

    def committed_fen(self, agency: str, fund: str, year: int) -> int:
        return self.get(agency, fund, year).committed_fen

    def fits(self, agency: str, fund: str, year: int, amount_fen: int, budget: int | None) -> bool:
        return budget is None or self.committed_fen(agency, fund, year) + amount_fen <= budget

    def commit(
        self, agency: str, fund: str, year: int, amount_fen: int, budget: int | None
    ) -> list[BudgetThresholdReached]:
        """Add to the fund year; report each threshold crossed for the first time."""
        entry = self.get(agency, fund, year)
        committed = entry.committed_fen + amount_fen
        crossed = [] if budget is None or budget == 0 else [
            t for t in THRESHOLDS_BP
            if t not in entry.thresholds_emitted_bp and committed * 10_000 >= budget * t
        ]
        self.funds[self._key(agency, fund, year)] = FundYear(
            committed, entry.thresholds_emitted_bp + tuple(crossed)
        )
        return [BudgetThresholdReached(agency, fund, year, budget or 0, committed, t)
                for t in crossed]

    def release(self, agency: str, fund: str, year: int, amount_fen: int) -> None:
        """Give a reversed grant's money back; thresholds already reported stay reported."""
        entry = self.get(agency, fund, year)
        self.funds[self._key(agency, fund, year)] = replace(
            entry, committed_fen=entry.committed_fen - amount_fen
        )
