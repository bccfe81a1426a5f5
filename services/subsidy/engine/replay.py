"""Offline replay: facts through the engine in order, and a recorded person decided afresh."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from .domain import BudgetLedger, Fact, Output, PersonState, decide
from .outputs import SubsidyRejected
from .policy import PolicySet
from .state import CertificateStatus, EnrollmentStatus, Grant


@dataclass(slots=True)
class Replay:
    """The outcome of a replay: every output in decision order, final states and ledger."""

    outputs: list[Output] = field(default_factory=list)
    states: dict[str, PersonState] = field(default_factory=dict)
    budgets: BudgetLedger = field(default_factory=BudgetLedger)


def replay(
    policies: PolicySet,
    facts: Iterable[Fact],
    *,
    states: dict[str, PersonState] | None = None,
    budgets: BudgetLedger | None = None,
) -> Replay:
    """Decide every fact in the given order, each against its person's state."""
    result = Replay(states=dict(states or {}), budgets=budgets or BudgetLedger())
    for fact in facts:
        state = result.states.get(fact.person_id) or PersonState.empty(fact.person_id)
        result.states[fact.person_id], outputs = decide(policies, state, fact, result.budgets)
        result.outputs.extend(outputs)
    return result


def replay_person(policies: PolicySet, recorded: PersonState, budgets: BudgetLedger) -> PersonState:
    """The person's logged facts decided afresh under `policies`, in their original order.

    The recorded grants' money is first given back to `budgets`, so the person competes for
    budgets against everyone else's recorded commitments, as the live pipeline did.
    """
    for grant in recorded.live_grants():
        budgets.release(grant.event.agency, grant.event.fund, grant.basis_date.year,
                        grant.event.amount_fen)
    state = PersonState.empty(recorded.person_id)
    for fact in recorded.logged_facts():
        state, _ = decide(policies, state, fact, budgets)
    return state


def unlogged(state: PersonState) -> bool:
    """A state whose fact log misses facts it reflects (decided, at least in part, before the
    engine kept the log, or damaged): replaying it would forget them, so what-if runs and
    corrections refuse it. Every enrollment needs its acceptance, its closing (completion or
    withdrawal) and each of its months; every certificate its issue and, when revoked, its
    revocation; every waiting revocation itself; every integrity flag."""
    logged = {(entry[0], entry[1]) for entry in state.fact_log}
    months = {(entry[1], entry[2]) for entry in state.fact_log if entry[0] == "m"}
    closing = {EnrollmentStatus.COMPLETED: "c", EnrollmentStatus.WITHDRAWN: "w"}
    for ref, enrollment in state.enrollments.items():
        code = closing.get(enrollment.status)
        if (("a", ref) not in logged or (code is not None and (code, ref) not in logged)
                or any((ref, month) not in months for month in enrollment.months)):
            return True
    for certificate_id, certificate in state.certificates.items():
        if ("i", certificate_id) not in logged or (
                certificate.status is CertificateStatus.REVOKED
                and ("r", certificate_id) not in logged):
            return True
    if any(("g", ref) not in logged for ref in state.flags):
        return True
    return any(("r", ref) not in logged for ref in state.pending_revocations)


class ChangeKind(StrEnum):
    CHANGED = "changed"
    NEWLY_GRANTED = "newly_granted"
    NEWLY_REJECTED = "newly_rejected"


@dataclass(frozen=True, slots=True)
class GrantChange:
    """One grant whose money differs between the record and a replay (0 when not granted or
    reversed), with the rejection that replaces it on either side."""

    person_id: str
    recorded: Grant | None
    replayed: Grant | None
    recorded_rejection: SubsidyRejected | None = None
    replayed_rejection: SubsidyRejected | None = None

    @property
    def grant(self) -> Grant:
        grant = self.replayed or self.recorded
        assert grant is not None
        return grant

    @property
    def paid_fen(self) -> int:
        return _net(self.recorded)

    @property
    def entitled_fen(self) -> int:
        return _net(self.replayed)

    @property
    def delta_fen(self) -> int:
        return self.entitled_fen - self.paid_fen

    @property
    def kind(self) -> ChangeKind:
        if self.paid_fen == 0:
            return ChangeKind.NEWLY_GRANTED
        if self.entitled_fen == 0:
            return ChangeKind.NEWLY_REJECTED
        return ChangeKind.CHANGED


def _net(grant: Grant | None) -> int:
    """Money paid on a grant: none while it is held for review (POLICY §6)."""
    return grant.event.amount_fen if grant is not None and grant.paid else 0


def compare(recorded: PersonState, replayed: PersonState) -> list[GrantChange]:
    """Every grant whose net amount differs, in the replay's decision order, then the
    recorded-only ones in theirs."""
    before = {g.grant_id: g for g in recorded.grant_log}
    after = {g.grant_id: g for g in replayed.grant_log}
    changes = []
    for grant_id in list(after) + [g for g in before if g not in after]:
        old, new = before.get(grant_id), after.get(grant_id)
        if _net(old) == _net(new):
            continue
        grant = new or old
        assert grant is not None
        changes.append(GrantChange(
            recorded.person_id, old, new,
            recorded_rejection=_rejection_of(recorded, grant) if _net(old) == 0 else None,
            replayed_rejection=_rejection_of(replayed, grant) if _net(new) == 0 else None,
        ))
    return changes


def _rejection_of(state: PersonState, grant: Grant) -> SubsidyRejected | None:
    """The rejection of the grant's rule for the same enrollment (and month), if any."""
    basis = grant.event.basis
    return next((r for r in reversed(state.rejection_log)
                 if r.rule == grant.event.rule and r.basis.enrollment_ref == basis.enrollment_ref
                 and r.basis.month == basis.month), None)
