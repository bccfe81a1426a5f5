"""The engine's decisions, the subsidy service's output events (EVENTS.md §5.3), with deterministic,
replay-stable ids. services.subsidy.contract turns each into its contract model for publishing."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import date
from typing import Any, ClassVar

# The reasons are re-exported: the engine's modules name them through the outputs.
from shared.contract.vocabulary import RejectionReason as RejectionReason
from shared.contract.vocabulary import ReversalReason as ReversalReason
from shared.contract.vocabulary import SubsidyStage

SUBSIDY = "skills.subsidy."


# One vocabulary with the contract; the rejection reasons are listed in POLICY §5 check order.
Stage = SubsidyStage


def digest(*parts: Any) -> str:
    """sha256 hex of the canonical JSON of `parts`: the root of every deterministic id."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Basis:
    """The facts a decision rests on, as EVENTS.md `basis`."""

    enrollment_ref: str | None = None
    certificate_id: str | None = None
    assessment_ref: str | None = None
    days: int | None = None
    month: str | None = None
    year_index: int | None = None

    def to_payload(self) -> dict[str, Any]:
        return {
            "enrollment_ref": self.enrollment_ref,
            "certificate_id": self.certificate_id,
            "assessment_ref": self.assessment_ref,
            "days": self.days,
            "month": self.month,
            "year_index": self.year_index,
        }


@dataclass(frozen=True, slots=True)
class PolicyRef:
    agency: str
    version: str
    hash: str


def grant_id_for(agency: str, rule: str, stage: Stage, basis: Basis) -> str:
    return "g_" + digest(agency, rule, stage.value, basis.to_payload())[:24]


@dataclass(frozen=True, slots=True)
class SubsidyGranted:
    grant_id: str
    person_id: str
    agency: str
    subsidy_type: str
    stage: Stage
    amount_fen: int
    payee_kind: str
    payee_id: str
    fund: str
    policy: PolicyRef
    rule: str
    basis: Basis
    explanation: str
    event_type: ClassVar[str] = SUBSIDY + "SubsidyGranted.v1"

    @property
    def event_id(self) -> str:
        return self.grant_id

    @property
    def key(self) -> str:
        return self.person_id


@dataclass(frozen=True, slots=True)
class SubsidyRejected:
    person_id: str
    agency: str
    subsidy_type: str
    rule: str
    basis: Basis
    reason: RejectionReason
    explanation: str
    policy: PolicyRef
    # The held grant an integrity_denied / hold_voided rejection ends (POLICY §6), else None.
    grant_id: str | None = None
    event_type: ClassVar[str] = SUBSIDY + "SubsidyRejected.v1"

    @property
    def event_id(self) -> str:
        parts: tuple[Any, ...] = (self.person_id, self.agency, self.rule, self.basis.to_payload(),
                                  self.reason.value)
        if self.grant_id is not None:
            parts += (self.grant_id,)
        return "r_" + digest(*parts)[:24]

    @property
    def key(self) -> str:
        return self.person_id


@dataclass(frozen=True, slots=True)
class SubsidyReversed:
    grant_id: str
    person_id: str
    agency: str
    amount_fen: int
    reason: ReversalReason
    explanation: str
    rule: str
    event_type: ClassVar[str] = SUBSIDY + "SubsidyReversed.v1"

    @property
    def event_id(self) -> str:
        return "v_" + digest(self.grant_id, self.reason.value)[:24]

    @property
    def key(self) -> str:
        return self.person_id


@dataclass(frozen=True, slots=True)
class SubsidyHeld:
    """The SubsidyGranted a decision would have published, held for review because it rests on
    a flagged enrollment (POLICY §6): the same fields and grant_id, plus the hold. Its own
    event id (the grant_id is the id of the SubsidyGranted a release publishes)."""

    grant: SubsidyGranted
    checks: tuple[str, ...]
    enrollment_ref: str
    held_on: date
    event_type: ClassVar[str] = SUBSIDY + "SubsidyHeld.v1"

    @property
    def event_id(self) -> str:
        return "h_" + digest(self.grant.grant_id, "held")[:24]

    @property
    def key(self) -> str:
        return self.grant.person_id

    @property
    def agency(self) -> str:
        return self.grant.agency


THRESHOLDS_BP = (8000, 9000, 10000)


@dataclass(frozen=True, slots=True)
class BudgetThresholdReached:
    agency: str
    fund: str
    year: int
    budget_fen: int
    committed_fen: int
    threshold_bp: int
    event_type: ClassVar[str] = SUBSIDY + "BudgetThresholdReached.v1"

    @property
    def event_id(self) -> str:
        return "b_" + digest(self.agency, self.fund, self.year, self.threshold_bp)[:24]

    @property
    def key(self) -> str:
        return f"budget:{self.agency}:{self.fund}:{self.year}"


Output = SubsidyGranted | SubsidyHeld | SubsidyRejected | SubsidyReversed | BudgetThresholdReached
