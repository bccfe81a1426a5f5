"""Per-kind amount computation (POLICY §2), in integer fen with half-up rounding, and its wording."""

from __future__ import annotations

from dataclasses import dataclass

from .facts import EnrollmentAccepted
from .policy import BASIS_POINTS, Amount, Rule, RuleKind


@dataclass(frozen=True, slots=True)
class Computed:
    """A rule's amount for one decision (per programme year for per_program_year rules)."""

    fen: int
    formula: str
    assumed: bool = False


def cny(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d} CNY"


def percent_of(fen: int, bp: int) -> int:
    """`bp` basis points of a non-negative amount, rounded half up to the fen."""
    return (fen * bp + BASIS_POINTS // 2) // BASIS_POINTS


def percent_text(bp: int) -> str:
    whole, rest = divmod(bp, 100)
    return f"{whole}%" if rest == 0 else f"{whole}.{rest:02d}".rstrip("0") + "%"


def compute(
    rule: Rule,
    enrollment: EnrollmentAccepted,
    *,
    level: str | None,
    days: int = 0,
    wages_fen: int = 0,
    base: Computed | None = None,
) -> Computed | None:
    """The rule's amount, or None when the policy leaves it unset (amount_not_configured)."""
    kind = rule.kind
    if kind is RuleKind.CERTIFICATE_LEVEL:
        amount = rule.amount_by_level.get(level) if level else None
        return _flat(amount, f"{level} level")
    if kind is RuleKind.PER_PROGRAM_YEAR:
        amount = rule.amount or (rule.amount_by_level.get(level) if level else None)
        return _flat(amount, f"{level or 'any'} level, per programme year")
    if kind is RuleKind.PER_PERSON:
        return _per_person(rule, enrollment)
    if kind is RuleKind.PER_DAY:
        if rule.amount is None:
            return None
        return Computed(rule.amount.fen * days,
                        f"{cny(rule.amount.fen)}/day x {days} attended days", rule.amount.assumed)
    if kind is RuleKind.PER_MONTH:
        if rule.amount is not None:
            return _flat(rule.amount, "per month")
        if rule.percent_bp is None:
            return None
        return Computed(percent_of(wages_fen, rule.percent_bp),
                        f"{percent_text(rule.percent_bp)} of the month's wages {cny(wages_fen)}")
    if rule.percent_bp is None or base is None:
        return None
    return Computed(percent_of(base.fen, rule.percent_bp),
                    f"{percent_text(rule.percent_bp)} of {rule.base_rule}'s {cny(base.fen)}",
                    base.assumed)


def _flat(amount: Amount | None, what: str) -> Computed | None:
    if amount is None:
        return None
    return Computed(amount.fen, f"{cny(amount.fen)} ({what})", amount.assumed)


def _per_person(rule: Rule, enrollment: EnrollmentAccepted) -> Computed | None:
    amount, what = rule.amount, "per person"
    employer = enrollment.employer
    if (rule.amount_employee_model_domestic is not None and employer is not None
            and employer.employee_model_domestic):
        amount, what = rule.amount_employee_model_domestic, "employee-model domestic firm"
    computed = _flat(amount, what)
    if computed is None or not rule.fee_capped or enrollment.fee.amount_fen >= computed.fen:
        return computed
    fee = enrollment.fee.amount_fen
    return Computed(fee, f"{computed.formula} capped at the fee paid {cny(fee)}", computed.assumed)
