"""What the engine remembers between facts: per-person state and shared fund ledgers, as JSON.

`PersonState` and `BudgetLedger` are the only mutable objects of the engine: `decide` updates
them in place (and returns the state), the caller persists `to_json()` after each batch.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from datetime import date
from enum import Enum, StrEnum
from typing import Any, Union, get_args, get_origin, get_type_hints

from .facts import CertificateIssued, CertificateRevoked, EnrollmentAccepted
from .outputs import (
    THRESHOLDS_BP,
    BudgetThresholdReached,
    Stage,
    SubsidyGranted,
    SubsidyRejected,
    SubsidyReversed,
)


def encode(value: Any) -> Any:
    """A dataclass tree as plain JSON values (dates as ISO strings, enums as their values)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    return value


def decode(tp: Any, raw: Any) -> Any:
    """The inverse of `encode`, driven by the type annotations."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        if raw is None:
            return None
        (inner,) = [a for a in get_args(tp) if a is not type(None)]
        return decode(inner, raw)
    if origin is tuple:
        return tuple(decode(get_args(tp)[0], v) for v in raw)
    if origin is list:
        return [decode(get_args(tp)[0], v) for v in raw]
    if origin is dict:
        key_type, value_type = get_args(tp)
        return {decode(key_type, k): decode(value_type, v) for k, v in raw.items()}
    if tp is date:
        return date.fromisoformat(raw)
    if tp is int and isinstance(raw, str):
        return int(raw)
    if isinstance(tp, type) and issubclass(tp, Enum):
        return tp(raw)
    if isinstance(tp, type) and is_dataclass(tp):
        hints = get_type_hints(tp)
        return tp(**{f.name: decode(hints[f.name], raw[f.name]) for f in fields(tp)
                     if f.init and f.name in raw})
    return raw


class EnrollmentStatus(StrEnum):
    OPEN = "open"
    COMPLETED = "completed"
    WITHDRAWN = "withdrawn"


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class Certificate:
    issued: CertificateIssued
    enrollment_ref: str | None
    status: CertificateStatus = CertificateStatus.PENDING


@dataclass(frozen=True)
class Grant:
    """A grant and what it holds: its annual-limit year, its occupation slot, its fund year."""

    event: SubsidyGranted
    basis_date: date
    counted_year: int | None
    slot: str | None
    employer_id: str | None
    base_grant_id: str | None
    live: bool = True

    @property
    def grant_id(self) -> str:
        return self.event.grant_id


@dataclass
class PersonState:
    person_id: str
    enrollments: dict[str, Enrollment] = field(default_factory=dict)
    certificates: dict[str, Certificate] = field(default_factory=dict)
    pending_revocations: dict[str, CertificateRevoked] = field(default_factory=dict)
    grant_log: list[Grant] = field(default_factory=list)
    rejection_log: list[SubsidyRejected] = field(default_factory=list)
    reversal_log: list[SubsidyReversed] = field(default_factory=list)

    @classmethod
    def empty(cls, person_id: str) -> PersonState:
        return cls(person_id)

    def to_json(self) -> dict[str, Any]:
        return typing.cast(dict[str, Any], encode(self))

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> PersonState:
        return typing.cast(PersonState, decode(cls, raw))

    def live_grants(self) -> list[Grant]:
        return [g for g in self.grant_log if g.live]

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


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class FundYear:
    committed_fen: int = 0
    thresholds_emitted_bp: tuple[int, ...] = ()


@dataclass
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

    def to_json(self) -> dict[str, Any]:
        return typing.cast(dict[str, Any], encode(self))

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> BudgetLedger:
        return typing.cast(BudgetLedger, decode(cls, raw))
