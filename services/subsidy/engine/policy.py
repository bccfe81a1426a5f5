"""Agency policies as data: load JSON policy files, refuse bad ones, pick the version in force.

Usage: ``python -m services.subsidy.engine.policy validate FILE...`` exits non-zero on the first bad
file, naming the file, the rule and the field.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

LEVELS = ("junior", "intermediate", "senior", "technician", "senior_technician")
CERTIFICATE_KINDS = frozenset(
    {"qualification", "skill_level", "special_ability", "special_operation",
     "special_equipment", "training_completion"}
)
TRAINING_TYPES = frozenset(
    {"skill_upgrade", "pre_job", "job_transfer", "safety", "special_operation", "apprenticeship",
     "work_for_training", "domestic_prejob", "domestic_refresh", "non_level", "entrepreneurship",
     "key_industry"}
)
CATEGORIES = frozenset(
    {"poor_labor", "poor_family_child", "low_income", "employment_difficulty",
     "zero_employment_family", "non_continuing_graduate", "urban_dibao_family", "rural_migrant",
     "rural_labor", "college_graduate", "registered_unemployed", "overcapacity_displaced",
     "job_transferee", "veteran", "disabled", "enterprise_employee", "domestic_worker",
     "pension_eligible"}
)
SECTORS = frozenset({"hitech", "fintech", "culture", "life_services", "city_ops"})
PAYERS = frozenset({"person", "employer", "institution"})
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


@dataclass(frozen=True)
class Amount:
    fen: int
    assumed: bool = False


@dataclass(frozen=True)
class CategoryGroup:
    """One eligible category, optionally only when rural or with an insured employer."""

    category: str
    requires_rural: bool = False
    requires_insured_employer: bool = False


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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
            for earlier, later in zip(versions, versions[1:]):
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


def load_policy_dir(path: str | Path) -> PolicySet:
    """Load every `*.json` policy in a directory into one PolicySet."""
    files = sorted(Path(path).glob("*.json"))
    if not files:
        raise PolicyError(f"{path}: no policy files")
    return PolicySet.of(load_policy_file(f) for f in files)


def load_policy_file(path: str | Path) -> Policy:
    """Load and validate one policy file; PolicyError names the file, rule and field."""
    path = Path(path)
    try:
        raw_bytes = path.read_bytes()
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        raw = json.loads(raw_bytes)
    except ValueError as exc:
        raise PolicyError(f"{path}: not valid JSON: {exc}") from exc
    return parse_policy(raw, source=str(path), content_hash=hashlib.sha256(raw_bytes).hexdigest())


_POLICY_FIELDS = frozenset(
    {"agency", "version", "valid_from", "valid_to", "advance_rate_bp",
     "excludes_pension_eligible", "budgets", "rules", "description"}
)
_RULE_FIELDS = frozenset(
    {"id", "kind", "subsidy_type", "fund", "payee", "counts_toward_annual_limit", "categories",
     "training_types", "certificate_kinds", "selected_by", "slot", "requires_pass", "min_hours",
     "min_insured_months", "hire_window_months", "employer_sectors", "employer_hardship",
     "fee_payers", "certified_on_or_after", "fee_capped", "max_months", "not_stackable_with",
     "amount", "amount_by_level", "amount_employee_model_domestic", "percent_bp", "base_rule",
     "note"}
)


class _Reader:
    """Typed field access that reports `file: rule: field` on the first problem."""

    def __init__(self, raw: Any, where: str) -> None:
        if not isinstance(raw, dict):
            raise PolicyError(f"{where}: expected an object")
        self.raw, self.where = raw, where

    def fail(self, name: str, problem: str) -> PolicyError:
        return PolicyError(f"{self.where}: field {name!r}: {problem}")

    def check_known(self, allowed: frozenset[str]) -> None:
        for name in self.raw:
            if name not in allowed:
                raise self.fail(name, "unknown field")

    def get(self, name: str, kind: type | tuple[type, ...], *, required: bool = False) -> Any:
        if name not in self.raw or self.raw[name] is None:
            if required:
                raise self.fail(name, "required")
            return None
        value = self.raw[name]
        if isinstance(value, bool) and kind is int or not isinstance(value, kind):
            raise self.fail(name, f"expected {_type_name(kind)}, got {value!r}")
        return value

    def text(self, name: str) -> str:
        value: str = self.get(name, str, required=True)
        if not value.strip():
            raise self.fail(name, "must not be empty")
        return value

    def flag(self, name: str) -> bool:
        return bool(self.get(name, bool))

    def count(self, name: str, *, minimum: int = 0) -> int | None:
        value: int | None = self.get(name, int)
        if value is not None and value < minimum:
            raise self.fail(name, f"must be >= {minimum}")
        return value

    def day(self, name: str, *, required: bool = False) -> date | None:
        value = self.get(name, str, required=required)
        if value is None:
            return None
        try:
            return date.fromisoformat(value)
        except ValueError as exc:
            raise self.fail(name, f"not a YYYY-MM-DD date: {value!r}") from exc

    def members(self, name: str, allowed: frozenset[str] | None) -> tuple[str, ...]:
        values = self.get(name, list) or []
        for value in values:
            if not isinstance(value, str) or (allowed is not None and value not in allowed):
                raise self.fail(name, f"unknown value {value!r}")
        return tuple(values)

    def amount(self, name: str, raw: Any = None) -> Amount | None:
        value = self.raw.get(name) if raw is None else raw
        if value is None:
            return None
        if isinstance(value, dict):
            fen, assumed = value.get("fen"), value.get("assumed", False)
            if set(value) - {"fen", "assumed"} or not isinstance(assumed, bool):
                raise self.fail(name, f"amount object takes 'fen' and 'assumed': {value!r}")
        else:
            fen, assumed = value, False
        if isinstance(fen, bool) or not isinstance(fen, int) or fen < 0:
            raise self.fail(name, f"amount must be a non-negative integer of fen, got {value!r}")
        return Amount(fen, assumed)


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def parse_policy(raw: Any, *, source: str, content_hash: str) -> Policy:
    """Validate a decoded policy document into a Policy."""
    top = _Reader(raw, source)
    top.check_known(_POLICY_FIELDS)
    valid_from = top.day("valid_from", required=True)
    assert valid_from is not None
    valid_to = top.day("valid_to")
    if valid_to is not None and valid_to < valid_from:
        raise top.fail("valid_to", "before valid_from")
    advance = top.count("advance_rate_bp")
    if advance is not None and advance > BASIS_POINTS:
        raise top.fail("advance_rate_bp", f"must be <= {BASIS_POINTS}")
    raw_rules = top.get("rules", list, required=True)
    rules = tuple(_parse_rule(r, source, i, valid_from) for i, r in enumerate(raw_rules))
    ids = [r.id for r in rules]
    for rule in rules:
        where = _Reader({}, f"{source}: rule {rule.id}")
        if ids.count(rule.id) > 1:
            raise where.fail("id", "duplicate rule id")
        for other in rule.not_stackable_with:
            if other not in ids:
                raise where.fail("not_stackable_with", f"unknown rule {other!r}")
        if rule.base_rule is not None:
            base = next((r for r in rules if r.id == rule.base_rule), None)
            if base is None or base.kind is RuleKind.TOPUP_PERCENT:
                raise where.fail("base_rule", f"must name a non-top-up rule, got {rule.base_rule!r}")
    return Policy(
        agency=top.text("agency"),
        version=top.text("version"),
        valid_from=valid_from,
        valid_to=valid_to,
        advance_rate_bp=advance,
        excludes_pension_eligible=top.flag("excludes_pension_eligible"),
        budgets=_parse_budgets(top),
        rules=rules,
        content_hash=content_hash,
        source=source,
    )


def _parse_budgets(top: _Reader) -> dict[str, dict[int, int]]:
    budgets: dict[str, dict[int, int]] = {}
    for fund, years in (top.get("budgets", dict) or {}).items():
        if not isinstance(years, dict):
            raise top.fail("budgets", f"fund {fund!r}: expected an object of year -> fen")
        budgets[fund] = {}
        for year, fen in years.items():
            if not year.isdigit() or isinstance(fen, bool) or not isinstance(fen, int) or fen < 0:
                raise top.fail("budgets", f"fund {fund!r}: bad entry {year!r}: {fen!r}")
            budgets[fund][int(year)] = fen
    return budgets


def _parse_rule(raw: Any, source: str, index: int, valid_from: date) -> Rule:
    rule_id = raw.get("id") if isinstance(raw, dict) else None
    r = _Reader(raw, f"{source}: rule {rule_id if isinstance(rule_id, str) else f'#{index}'}")
    r.check_known(_RULE_FIELDS)
    kind = _enum(r, "kind", RuleKind, required=True)
    rule = Rule(
        id=r.text("id"),
        kind=kind,
        subsidy_type=r.text("subsidy_type"),
        fund=r.text("fund"),
        payee=_enum(r, "payee", PayeeRule, required=True),
        counts_toward_annual_limit=bool(r.get("counts_toward_annual_limit", bool, required=True)),
        categories=_parse_categories(r),
        training_types=r.members("training_types", TRAINING_TYPES),
        certificate_kinds=r.members("certificate_kinds", CERTIFICATE_KINDS),
        selected_by=_enum(r, "selected_by", Selector) or Selector.TRAINING_TYPE,
        slot=_enum(r, "slot", SlotKey) or SlotKey.OCCUPATION,
        requires_pass=r.flag("requires_pass"),
        min_hours=r.count("min_hours"),
        min_insured_months=r.count("min_insured_months"),
        hire_window_months=r.count("hire_window_months"),
        employer_sectors=r.members("employer_sectors", SECTORS),
        employer_hardship=r.flag("employer_hardship"),
        fee_payers=r.members("fee_payers", PAYERS),
        certified_on_or_after=(
            valid_from if r.raw.get("certified_on_or_after") == "valid_from"
            else r.day("certified_on_or_after")
        ),
        fee_capped=r.flag("fee_capped"),
        max_months=r.count("max_months", minimum=1),
        not_stackable_with=r.members("not_stackable_with", None),
        amount=r.amount("amount"),
        amount_by_level=_parse_levels(r),
        amount_employee_model_domestic=r.amount("amount_employee_model_domestic"),
        percent_bp=r.count("percent_bp"),
        base_rule=r.get("base_rule", str),
    )
    _check_kind_fields(r, rule)
    return rule


def _enum(r: _Reader, name: str, enum: type[StrEnum], *, required: bool = False) -> Any:
    value = r.get(name, str, required=required)
    if value is None:
        return None
    try:
        return enum(value)
    except ValueError as exc:
        allowed = ", ".join(m.value for m in enum)
        raise r.fail(name, f"unknown value {value!r} (one of {allowed})") from exc


def _parse_categories(r: _Reader) -> tuple[CategoryGroup, ...]:
    groups = []
    for entry in r.get("categories", list) or []:
        if isinstance(entry, str):
            entry = {"category": entry}
        if not isinstance(entry, dict) or set(entry) - {
            "category", "requires_rural", "requires_insured_employer"
        }:
            raise r.fail("categories", f"bad entry {entry!r}")
        category = entry.get("category")
        if category not in CATEGORIES:
            raise r.fail("categories", f"unknown category {category!r}")
        flags = [entry.get("requires_rural", False), entry.get("requires_insured_employer", False)]
        if not all(isinstance(f, bool) for f in flags):
            raise r.fail("categories", f"conditions must be true/false in {entry!r}")
        groups.append(CategoryGroup(category, flags[0], flags[1]))
    return tuple(groups)


def _parse_levels(r: _Reader) -> dict[str, Amount]:
    levels: dict[str, Amount] = {}
    for level, value in (r.get("amount_by_level", dict) or {}).items():
        if level not in LEVELS:
            raise r.fail("amount_by_level", f"unknown level {level!r}")
        amount = r.amount("amount_by_level", value)
        if amount is not None:
            levels[level] = amount
    return levels


def _check_kind_fields(r: _Reader, rule: Rule) -> None:
    """Refuse fields that mean nothing for the rule's kind, so a typo cannot pass silently."""
    kind = rule.kind
    if rule.percent_bp is not None and kind not in (RuleKind.PER_MONTH, RuleKind.TOPUP_PERCENT):
        raise r.fail("percent_bp", f"only for per_month and topup_percent, not {kind}")
    if rule.amount_by_level and kind not in (RuleKind.CERTIFICATE_LEVEL, RuleKind.PER_PROGRAM_YEAR):
        raise r.fail("amount_by_level", f"only for certificate_level and per_program_year")
    if rule.amount is not None and kind in (RuleKind.CERTIFICATE_LEVEL, RuleKind.TOPUP_PERCENT):
        raise r.fail("amount", f"not used by {kind}")
    if kind is RuleKind.PER_MONTH:
        if rule.max_months is None:
            raise r.fail("max_months", "required for per_month")
        if rule.amount is not None and rule.percent_bp is not None:
            raise r.fail("percent_bp", "give either amount or percent_bp, not both")
    elif rule.max_months is not None:
        raise r.fail("max_months", "only for per_month")
    if kind is RuleKind.TOPUP_PERCENT:
        if rule.base_rule is None:
            raise r.fail("base_rule", "required for topup_percent")
        if rule.counts_toward_annual_limit:
            raise r.fail("counts_toward_annual_limit", "a top-up never counts (POLICY §3.1)")
    elif rule.base_rule is not None:
        raise r.fail("base_rule", "only for topup_percent")
    if rule.selected_by is Selector.CERTIFICATE_KIND and (
        kind is not RuleKind.PER_PERSON or not rule.certificate_kinds
    ):
        raise r.fail("selected_by", "certificate_kind selection needs a per_person rule with "
                     "certificate_kinds")
    if rule.slot is SlotKey.CERTIFICATE_KIND and rule.selected_by is not Selector.CERTIFICATE_KIND:
        raise r.fail("slot", "a certificate_kind slot needs selected_by certificate_kind")
    if rule.amount_employee_model_domestic is not None and kind is not RuleKind.PER_PERSON:
        raise r.fail("amount_employee_model_domestic", "only for per_person")


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "validate":
        print("usage: python -m services.subsidy.engine.policy validate FILE...", file=sys.stderr)
        return 2
    try:
        policies = [load_policy_file(p) for p in argv[1:]]
        PolicySet.of(policies)
    except PolicyError as exc:
        print(f"invalid policy: {exc}", file=sys.stderr)
        return 1
    for policy in policies:
        print(f"ok: {policy.source}: {policy.agency} {policy.version} "
              f"({len(policy.rules)} rules, sha256 {policy.content_hash[:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
