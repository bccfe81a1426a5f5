"""Agency policies as the engine reads them: rules, versions, budgets, the version in force.

Standard library only: the JSON policy files are validated by pydantic models outside the engine
(services.subsidy.policy_files), which build these objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from enum import StrEnum

BASIS_POINTS = 10_000


class PolicyError(ValueError):
    """A policy file (or set of files) that cannot be put in force."""


class RuleKind(StrEnum):
    CERTIFICATE_LEVEL = "certificate_level"
    PER_PERSON = "per_person"
    PER_DAY = "per_day"
    PER_MONTH = "per_month"
    PER_PROGRAM_YEAR = "per_program_year"
    TOPUP_PERCENT = "topup_percent"


class PayeeRule(StrEnum):
    PERSON = "person"
    EMPLOYER = "employer"
    INSTITUTION = "institution"
    FEE_PAYER = "fee_payer"


class Selector(StrEnum):
    """What selects a per_person rule: the course's training type or the certificate's kind."""

    TRAINING_TYPE = "training_type"
    CERTIFICATE_KIND = "certificate_kind"


class SlotKey(StrEnum):
    """What keys a counted rule's occupation slot (POLICY.md §5 "Slots"): the occupation with the
    level (certificate_level) or the course's training type (per_person), or, for a rule that
    says so (BJ-SPECOP: one grant per certificate kind), the certificate's kind."""

    OCCUPATION = "occupation"
    CERTIFICATE_KIND = "certificate_kind"


@dataclass(frozen=True, slots=True)
class Amount:
    fen: int
    assumed: bool = False


@dataclass(frozen=True, slots=True)
class CategoryGroup:
    """One eligible category, optionally only when rural or with an insured employer."""

    category: str
    requires_rural: bool = False
    requires_insured_employer: bool = False


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    kind: RuleKind
    subsidy_type: str
    fund: str
    payee: PayeeRule
    counts_toward_annual_limit: bool
    categories: tuple[CategoryGroup, ...] = ()
    training_types: tuple[str, ...] = ()
    certificate_kinds: tuple[str, ...] = ()
    selected_by: Selector = Selector.TRAINING_TYPE
    slot: SlotKey = SlotKey.OCCUPATION
    requires_pass: bool = False
    min_hours: int | None = None
    min_insured_months: int | None = None
    hire_window_months: int | None = None
    employer_sectors: tuple[str, ...] = ()
    employer_hardship: bool = False
    fee_payers: tuple[str, ...] = ()
    certified_on_or_after: date | None = None
    fee_capped: bool = False
    max_months: int | None = None
    not_stackable_with: tuple[str, ...] = ()
    amount: Amount | None = None
    amount_by_level: Mapping[str, Amount] = field(default_factory=dict)
    amount_employee_model_domestic: Amount | None = None
    percent_bp: int | None = None
    base_rule: str | None = None

    def selects_course(self, training_type: str, sector: str | None) -> bool:
        """Whether a course of this type (and employer sector) selects this rule."""
        if self.employer_sectors and sector not in self.employer_sectors:
            return False
        return not self.training_types or training_type in self.training_types


@dataclass(frozen=True, slots=True)
class Policy:
    agency: str
    version: str
    valid_from: date
    valid_to: date | None
    advance_rate_bp: int | None
    excludes_pension_eligible: bool
    budgets: Mapping[str, Mapping[int, int]]
    rules: tuple[Rule, ...]
    content_hash: str
    source: str

    def covers(self, day: date) -> bool:
        return self.valid_from <= day and (self.valid_to is None or day <= self.valid_to)

    def rule(self, rule_id: str) -> Rule:
        return next(r for r in self.rules if r.id == rule_id)

    def budget_fen(self, fund: str, year: int) -> int | None:
        return self.budgets.get(fund, {}).get(year)


@dataclass(frozen=True, slots=True)
class PolicySet:
    """Every loaded version of every agency's policy; versions of one agency never overlap."""

    by_agency: Mapping[str, tuple[Policy, ...]]

    @classmethod
    def of(cls, policies: Iterable[Policy]) -> PolicySet:
        grouped: dict[str, list[Policy]] = {}
        for policy in policies:
            grouped.setdefault(policy.agency, []).append(policy)
        for versions in grouped.values():
            versions.sort(key=lambda p: p.valid_from)
            for earlier, later in zip(versions, versions[1:], strict=False):
                _check_adjacent(earlier, later)
        return cls({agency: tuple(v) for agency, v in grouped.items()})

    def agencies(self) -> frozenset[str]:
        return frozenset(self.by_agency)

    def for_date(self, agency: str, day: date) -> Policy | None:
        return next((p for p in self.by_agency.get(agency, ()) if p.covers(day)), None)

    def with_version(self, version: Policy, start: date, end: date) -> PolicySet:
        """This set with `version` in force for its agency from `start` to `end` (inclusive),
        the loaded versions cut back around it; every other agency unchanged (what-if runs and
        corrections of a past period)."""
        if not version.covers(start) or not version.covers(end) or end < start:
            raise PolicyError(f"{version.source}: agency {version.agency!r}: version "
                              f"{version.version} ({_span(version)}) does not cover the period "
                              f"{start} to {end}")
        kept: list[Policy] = [replace(version, valid_from=start, valid_to=end)]
        for live in self.by_agency.get(version.agency, ()):
            if live.valid_from < start:
                before = start - timedelta(days=1)
                kept.append(replace(live, valid_to=before if live.valid_to is None
                                    else min(live.valid_to, before)))
            if live.valid_to is None or live.valid_to > end:
                kept.append(replace(live, valid_from=max(live.valid_from,
                                                         end + timedelta(days=1))))
        kept = [p for p in kept if p.valid_to is None or p.valid_from <= p.valid_to]
        others = [p for agency, versions in self.by_agency.items() if agency != version.agency
                  for p in versions]
        return PolicySet.of(others + kept)


def _check_adjacent(earlier: Policy, later: Policy) -> None:
    """Consecutive versions must meet exactly: the error names both files and both ranges."""
    where = f"{later.source}: agency {later.agency!r}: field 'valid_from'"
    if earlier.valid_to is None or later.valid_from <= earlier.valid_to:
        raise PolicyError(f"{where}: version {later.version} ({_span(later)}) overlaps version "
                          f"{earlier.version} ({_span(earlier)}) in {earlier.source}")
    if later.valid_from != earlier.valid_to + timedelta(days=1):
        raise PolicyError(f"{where}: version {later.version} ({_span(later)}) leaves a gap "
                          f"after version {earlier.version} ({_span(earlier)}) in "
                          f"{earlier.source}: {earlier.valid_to + timedelta(days=1)} to "
                          f"{later.valid_from - timedelta(days=1)} has no policy")


def _span(policy: Policy) -> str:
    return f"{policy.valid_from} to {policy.valid_to or 'open end'}"
