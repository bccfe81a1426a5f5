"""Agency policy files: JSON documents validated by pydantic models into the engine's policies.

Usage: ``python -m services.subsidy.policy_files validate FILE...`` exits non-zero on the first
bad file, naming the file, the rule and the field.

The models say what a file may hold (field types, the contract's vocabulary, unknown fields
refused); the checks after them say what the fields mean together (a rule kind's fields, unique
rule ids, the rules a rule names). Either way a PolicyError names ``file: rule: field``. What is
built is the engine's standard-library policy model (services.subsidy.engine.policy).
"""

from __future__ import annotations

import hashlib
import json
import sys
from datetime import date
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationError,
)

from shared.contract.vocabulary import Category, CertificateKind, Level, PayeeKind, Sector, TrainingType
from services.subsidy.engine.policy import (
    BASIS_POINTS,
    Amount,
    CategoryGroup,
    PayeeRule,
    Policy,
    PolicyError,
    PolicySet,
    Rule,
    RuleKind,
    Selector,
    SlotKey,
)


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not a YYYY-MM-DD date: {value!r}") from None


def _day_or_start(value: str) -> str:
    if value != "valid_from":
        _day(value)
    return value


Text = Annotated[StrictStr, StringConstraints(pattern=r"\S")]  # not empty, not only blanks
Day = Annotated[StrictStr, AfterValidator(lambda v: _day(v) and v)]
Fen = Annotated[StrictInt, Field(ge=0)]
Count = Annotated[StrictInt, Field(ge=0)]


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=True)


class AmountFile(_File):
    fen: Fen
    assumed: StrictBool = False


class CategoryFile(_File):
    category: Category
    requires_rural: StrictBool = False
    requires_insured_employer: StrictBool = False


class RuleFile(_File):
    id: Text
    kind: RuleKind
    subsidy_type: Text
    fund: Text
    payee: PayeeRule
    counts_toward_annual_limit: StrictBool
    categories: list[Category | CategoryFile] | None = None
    training_types: list[TrainingType] | None = None
    certificate_kinds: list[CertificateKind] | None = None
    selected_by: Selector | None = None
    slot: SlotKey | None = None
    requires_pass: StrictBool | None = None
    min_hours: Count | None = None
    min_insured_months: Count | None = None
    hire_window_months: Count | None = None
    employer_sectors: list[Sector] | None = None
    employer_hardship: StrictBool | None = None
    fee_payers: list[PayeeKind] | None = None
    # A date, or "valid_from": the policy's own start.
    certified_on_or_after: Annotated[StrictStr, AfterValidator(_day_or_start)] | None = None
    fee_capped: StrictBool | None = None
    max_months: Annotated[StrictInt, Field(ge=1)] | None = None
    not_stackable_with: list[StrictStr] | None = None
    amount: Fen | AmountFile | None = None
    amount_by_level: dict[Level, Fen | AmountFile | None] | None = None
    amount_employee_model_domestic: Fen | AmountFile | None = None
    percent_bp: Count | None = None
    base_rule: StrictStr | None = None
    note: Any = None


class PolicyFile(_File):
    agency: Text
    version: Text
    valid_from: Day
    valid_to: Day | None = None
    advance_rate_bp: Annotated[StrictInt, Field(ge=0, le=BASIS_POINTS)] | None = None
    excludes_pension_eligible: StrictBool | None = None
    budgets: dict[StrictStr, dict[Annotated[str, StringConstraints(pattern=r"^\d+$")], Fen]] | None = None
    rules: list[dict[str, Any]]  # each validated as a RuleFile, so an error can name its rule
    description: Any = None


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


def _refusal(where: str, exc: ValidationError) -> PolicyError:
    """The first problem pydantic found, as ``where: field 'name': problem``."""
    error = exc.errors(include_url=False)[0]
    loc = [str(part) for part in error["loc"]]
    if not loc:
        return PolicyError(f"{where}: expected an object")
    name = loc[0]
    detail = f" (at {'.'.join(loc[1:])})" if len(loc) > 1 else ""
    problem = error["msg"] if error["type"] != "extra_forbidden" else "unknown field"
    return PolicyError(f"{where}: field {name!r}: {problem}{detail}")


def parse_policy(raw: Any, *, source: str, content_hash: str) -> Policy:
    """Validate a decoded policy document into the engine's Policy."""
    try:
        top = PolicyFile.model_validate(raw)
    except ValidationError as exc:
        raise _refusal(source, exc) from None
    valid_from = _day(top.valid_from)
    valid_to = None if top.valid_to is None else _day(top.valid_to)
    if valid_to is not None and valid_to < valid_from:
        raise PolicyError(f"{source}: field 'valid_to': before valid_from")
    rules = tuple(_rule(entry, source, i, valid_from) for i, entry in enumerate(top.rules))
    ids = [r.id for r in rules]
    for rule in rules:
        where = f"{source}: rule {rule.id}"
        if ids.count(rule.id) > 1:
            raise PolicyError(f"{where}: field 'id': duplicate rule id")
        for other in rule.not_stackable_with:
            if other not in ids:
                raise PolicyError(f"{where}: field 'not_stackable_with': unknown rule {other!r}")
        if rule.base_rule is not None:
            base = next((r for r in rules if r.id == rule.base_rule), None)
            if base is None or base.kind is RuleKind.TOPUP_PERCENT:
                raise PolicyError(f"{where}: field 'base_rule': must name a non-top-up rule, "
                                  f"got {rule.base_rule!r}")
    return Policy(
        agency=top.agency,
        version=top.version,
        valid_from=valid_from,
        valid_to=valid_to,
        advance_rate_bp=top.advance_rate_bp,
        excludes_pension_eligible=bool(top.excludes_pension_eligible),
        budgets={fund: {int(year): fen for year, fen in years.items()}
                 for fund, years in (top.budgets or {}).items()},
        rules=rules,
        content_hash=content_hash,
        source=source,
    )


def _amount(value: int | AmountFile | None) -> Amount | None:
    if value is None:
        return None
    if isinstance(value, AmountFile):
        return Amount(value.fen, value.assumed)
    return Amount(value)


def _rule(raw: Any, source: str, index: int, valid_from: date) -> Rule:
    rule_id = raw.get("id") if isinstance(raw, dict) else None
    where = f"{source}: rule {rule_id if isinstance(rule_id, str) else f'#{index}'}"
    try:
        r = RuleFile.model_validate(raw)
    except ValidationError as exc:
        raise _refusal(where, exc) from None
    certified = r.certified_on_or_after
    rule = Rule(
        id=r.id,
        kind=RuleKind(r.kind),
        subsidy_type=r.subsidy_type,
        fund=r.fund,
        payee=PayeeRule(r.payee),
        counts_toward_annual_limit=r.counts_toward_annual_limit,
        categories=tuple(
            CategoryGroup(c) if isinstance(c, str) else
            CategoryGroup(c.category, c.requires_rural, c.requires_insured_employer)
            for c in r.categories or ()
        ),
        training_types=tuple(r.training_types or ()),
        certificate_kinds=tuple(r.certificate_kinds or ()),
        selected_by=Selector(r.selected_by or Selector.TRAINING_TYPE),
        slot=SlotKey(r.slot or SlotKey.OCCUPATION),
        requires_pass=bool(r.requires_pass),
        min_hours=r.min_hours,
        min_insured_months=r.min_insured_months,
        hire_window_months=r.hire_window_months,
        employer_sectors=tuple(r.employer_sectors or ()),
        employer_hardship=bool(r.employer_hardship),
        fee_payers=tuple(r.fee_payers or ()),
        certified_on_or_after=(
            None if certified is None else valid_from if certified == "valid_from"
            else _day(certified)
        ),
        fee_capped=bool(r.fee_capped),
        max_months=r.max_months,
        not_stackable_with=tuple(r.not_stackable_with or ()),
        amount=_amount(r.amount),
        amount_by_level={level: amount for level, value in (r.amount_by_level or {}).items()
                         if (amount := _amount(value)) is not None},
        amount_employee_model_domestic=_amount(r.amount_employee_model_domestic),
        percent_bp=r.percent_bp,
        base_rule=r.base_rule,
    )
    problem = _kind_fields(rule)
    if problem is not None:
        raise PolicyError(f"{where}: field {problem[0]!r}: {problem[1]}")
    return rule


def _kind_fields(rule: Rule) -> tuple[str, str] | None:
    """Fields that mean nothing for the rule's kind are refused, so a typo cannot pass
    silently: (field, problem) of the first, or None."""
    kind = rule.kind
    if rule.percent_bp is not None and kind not in (RuleKind.PER_MONTH, RuleKind.TOPUP_PERCENT):
        return "percent_bp", f"only for per_month and topup_percent, not {kind}"
    if rule.amount_by_level and kind not in (RuleKind.CERTIFICATE_LEVEL, RuleKind.PER_PROGRAM_YEAR):
        return "amount_by_level", "only for certificate_level and per_program_year"
    if rule.amount is not None and kind in (RuleKind.CERTIFICATE_LEVEL, RuleKind.TOPUP_PERCENT):
        return "amount", f"not used by {kind}"
    if kind is RuleKind.PER_MONTH:
        if rule.max_months is None:
            return "max_months", "required for per_month"
        if rule.amount is not None and rule.percent_bp is not None:
            return "percent_bp", "give either amount or percent_bp, not both"
    elif rule.max_months is not None:
        return "max_months", "only for per_month"
    if kind is RuleKind.TOPUP_PERCENT:
        if rule.base_rule is None:
            return "base_rule", "required for topup_percent"
        if rule.counts_toward_annual_limit:
            return "counts_toward_annual_limit", "a top-up never counts (POLICY §3.1)"
    elif rule.base_rule is not None:
        return "base_rule", "only for topup_percent"
    if rule.selected_by is Selector.CERTIFICATE_KIND and (
        kind is not RuleKind.PER_PERSON or not rule.certificate_kinds
    ):
        return "selected_by", ("certificate_kind selection needs a per_person rule with "
                               "certificate_kinds")
    if rule.slot is SlotKey.CERTIFICATE_KIND and rule.selected_by is not Selector.CERTIFICATE_KIND:
        return "slot", "a certificate_kind slot needs selected_by certificate_kind"
    if rule.amount_employee_model_domestic is not None and kind is not RuleKind.PER_PERSON:
        return "amount_employee_model_domestic", "only for per_person"
    return None


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "validate":
        print("usage: python -m services.subsidy.policy_files validate FILE...", file=sys.stderr)
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
