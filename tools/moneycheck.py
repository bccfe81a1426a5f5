"""Money checks of published subsidy events, computed from the facts without the engine.

tools/expected.py derives the expected subsidy events with the engine itself, so comparing the
services with it proves the pipeline, not the amounts. This module re-derives what POLICY.md
§3 and §5 say about money from the policy JSON files (read here with `json`, not through
services.subsidy.policy_files) and the published enrollment, assessment and subsidy events:

- per person and calendar year (of the basis date, across agencies) at most 3 live counted
  grants (rules with `counts_toward_annual_limit`, stage `full` or `advance`), at every point of
  the person's decision sequence;
- no two live grants on one slot (§5 "Slots": (occupation, level) for certificate_level rules,
  (occupation, training type) for per_person rules, SQ-SPECOP included, certificate kind for
  BJ-SPECOP);
- every grant's amount recomputed from the policy tables and the facts: days attended from
  TrainingCompleted, wages from WorkTrainingMonthAccepted, fee caps, the levelled tables,
  programme years, top-up percentages, advance = rate x amount rounded half up, settlement = the
  exact remainder;
- an employer-paid rule (payee `employer`, or `fee_payer` with the fee paid by the employer)
  only on an enrollment that has an employer (§3.6, §5 "Money" and "Advances and reversals");
- totals per agency, fund and year, to be compared with the subsidy service's ledger and
  summary (`compare_ledger`, `compare_summary`).

Events are CloudEvents as dicts (`type`, `data`, `time`, `subject`); each person's subsidy events
must be given in their published order (one partition per person keeps it).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ANNUAL_LIMIT = 3  # POLICY §3.1
BASIS_POINTS = 10_000
COUNTED_STAGES = ("full", "advance")  # an advance and its settlement count once, at the advance
SLOT_BY_CERTIFICATE_KIND = frozenset({"BJ-SPECOP"})  # POLICY §5 "Slots" names it


def half_up(fen: int, bp: int) -> int:
    """`bp` basis points of `fen`, rounded half up to the fen (POLICY §5 "Money")."""
    return (fen * bp + BASIS_POINTS // 2) // BASIS_POINTS


def _fen(value: Any) -> int | None:
    """A policy amount: an integer of fen or {"fen": n, "assumed": true}."""
    if value is None:
        return None
    return int(value["fen"]) if isinstance(value, dict) else int(value)


@dataclass(frozen=True)
class PolicyFile:
    """What the checks need of one agency's policy file."""

    agency: str
    version: str
    valid_from: dt.date
    valid_to: dt.date | None
    advance_rate_bp: int | None
    budgets: Mapping[str, Mapping[int, int]]
    rules: Mapping[str, Mapping[str, Any]]

    def covers(self, day: dt.date) -> bool:
        return self.valid_from <= day and (self.valid_to is None or day <= self.valid_to)


@dataclass(frozen=True)
class Policies:
    files: tuple[PolicyFile, ...]

    @classmethod
    def from_dir(cls, path: str | Path) -> Policies:
        return cls.of(json.loads(p.read_text(encoding="utf-8")) for p in sorted(Path(path).glob("*.json")))

    @classmethod
    def of(cls, documents: Iterable[Mapping[str, Any]]) -> Policies:
        files = []
        for d in documents:
            budgets = {fund: {int(year): int(fen) for year, fen in years.items()}
                       for fund, years in (d.get("budgets") or {}).items()}
            files.append(PolicyFile(
                d["agency"], d["version"], dt.date.fromisoformat(d["valid_from"]),
                dt.date.fromisoformat(d["valid_to"]) if d.get("valid_to") else None,
                d.get("advance_rate_bp"), budgets, {r["id"]: r for r in d["rules"]}))
        return cls(tuple(files))

    def version(self, agency: str, version: str) -> PolicyFile:
        return next(f for f in self.files if f.agency == agency and f.version == version)

    def rule(self, agency: str, version: str, rule_id: str) -> Mapping[str, Any]:
        return self.version(agency, version).rules[rule_id]

    def fund_of(self, agency: str, rule_id: str) -> str | None:
        return next((f.rules[rule_id]["fund"] for f in self.files
                     if f.agency == agency and rule_id in f.rules), None)

    def budget_fen(self, agency: str, fund: str, year: int) -> int | None:
        """The budget of (agency, fund, year) in the version in force on the year's last day
        (as the subsidy service's summary reports it); None: unlimited."""
        last = dt.date(year, 12, 31)
        policy = next((f for f in self.files if f.agency == agency and f.covers(last)), None)
        return None if policy is None else policy.budgets.get(fund, {}).get(year)


@dataclass
class Facts:
    """The published enrollment and assessment facts the subsidy decisions rest on."""

    enrollments: dict[str, dict[str, Any]] = field(default_factory=dict)  # ref -> EnrollmentAccepted
    agency_of: dict[str, str] = field(default_factory=dict)  # ref -> agencyid of its acceptance
    completed: dict[str, dict[str, Any]] = field(default_factory=dict)  # ref -> TrainingCompleted
    months: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (ref, month)
    certificates: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> CertificateIssued

    @classmethod
    def of(cls, events: Iterable[Mapping[str, Any]]) -> Facts:
        facts = cls()
        for e in events:
            kind, d = e["type"].rsplit(".", 2)[-2], e["data"]
            if kind == "EnrollmentAccepted":
                facts.enrollments.setdefault(d["enrollment_ref"], d)
                facts.agency_of.setdefault(d["enrollment_ref"], e["agencyid"])
            elif kind == "TrainingCompleted":
                facts.completed.setdefault(d["enrollment_ref"], d)
            elif kind == "WorkTrainingMonthAccepted":
                facts.months.setdefault((d["enrollment_ref"], d["month"]), d)
            elif kind == "CertificateIssued":
                facts.certificates.setdefault(d["certificate_id"], d)
        return facts

    def basis_date(self, grant: Mapping[str, Any]) -> dt.date:
        """POLICY §5 "Basis dates": acceptance for an advance, the certificate's issue date for
        what rests on a certificate, a month's first day, else the completion date."""
        basis = grant["basis"]
        if grant["stage"] == "advance":
            return dt.date.fromisoformat(self.enrollments[basis["enrollment_ref"]]["accepted_on"])
        if basis.get("certificate_id"):
            return dt.date.fromisoformat(self.certificates[basis["certificate_id"]]["issued_on"])
        if basis.get("month"):
            return dt.date.fromisoformat(basis["month"] + "-01")
        return dt.date.fromisoformat(self.completed[basis["enrollment_ref"]]["completed_on"])


@dataclass
class Totals:
    """Money per (agency, fund, year): granted, reversed, and net (granted - reversed)."""

    granted: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    reversed: Counter[tuple[str, str, int]] = field(default_factory=Counter)

    def add(self, agency: str, fund: str, year: int, fen: int) -> None:
        (self.granted if fen >= 0 else self.reversed)[(agency, fund, year)] += abs(fen)

    @property
    def net(self) -> Counter[tuple[str, str, int]]:
        net: Counter[tuple[str, str, int]] = Counter()
        for key in self.granted.keys() | self.reversed.keys():
            net[key] = self.granted[key] - self.reversed[key]
        return net


@dataclass
class Findings:
    """What the checks found: problems (empty when everything holds) and what was checked."""

    problems: list[str] = field(default_factory=list)
    amounts_checked: Counter[str] = field(default_factory=Counter)  # rule kind -> grants
    counted_grants: int = 0
    slot_claims: int = 0
    by_decision_year: Totals = field(default_factory=Totals)  # year of the event's time
    by_basis_year: Totals = field(default_factory=Totals)  # year of the basis date (budgets)


@dataclass
class _Live:
    grant: Mapping[str, Any]
    year: int
    counted: bool
    slot: tuple[str, ...] | None


def check(policies: Policies, facts: Facts, subsidy_events: Iterable[Mapping[str, Any]]) -> Findings:
    """Run every check over the published subsidy events (each person's in published order)."""
    found = Findings()
    grants: dict[str, Mapping[str, Any]] = {}
    live: dict[str, dict[str, _Live]] = {}  # person -> grant_id -> what it holds
    on_hold: dict[str, _Live] = {}  # grant_id -> an open hold (counted, not paid)
    for e in subsidy_events:
        kind, d = e["type"].rsplit(".", 2)[-2], e["data"]
        year = dt.datetime.fromisoformat(e["time"]).year if e.get("time") else 0
        if kind == "SubsidyGranted" and d["grant_id"] in on_hold:
            # A released hold: paid now; it already counted (limit, slot, budget) while held.
            on_hold.pop(d["grant_id"])
            grants[d["grant_id"]] = d
            found.by_decision_year.add(d["agency"], d["fund"], year, d["amount_fen"])
        elif kind == "SubsidyGranted":
            grants[d["grant_id"]] = d
            holding = _granted(policies, facts, d, live.setdefault(d["person_id"], {}), found)
            found.by_decision_year.add(d["agency"], d["fund"], year, d["amount_fen"])
            found.by_basis_year.add(d["agency"], d["fund"], holding.year, d["amount_fen"])
        elif kind == "SubsidyHeld":
            # POLICY §6: a hold counts exactly as the grant would (limit, slot, same project,
            # budget committed); nothing is paid until a reviewer releases it.
            holding = _granted(policies, facts, d, live.setdefault(d["person_id"], {}), found)
            on_hold[d["grant_id"]] = holding
            found.by_basis_year.add(d["agency"], d["fund"], holding.year, d["amount_fen"])
        elif kind == "SubsidyRejected" and d.get("grant_id") in on_hold:
            # integrity_denied or hold_voided: the hold ends and frees what it counted.
            holding = on_hold.pop(d["grant_id"])
            live.get(d["person_id"], {}).pop(d["grant_id"], None)
            found.by_basis_year.add(holding.grant["agency"], holding.grant["fund"], holding.year,
                                    -holding.grant["amount_fen"])
        elif kind == "SubsidyReversed":
            grant = grants.get(d["grant_id"])
            held = live.get(d["person_id"], {}).pop(d["grant_id"], None)
            if grant is None or held is None:
                found.problems.append(f"{d['person_id']}: reversal of {d['grant_id']}, which is not a "
                                      f"live grant of the person")
                continue
            if d["amount_fen"] != grant["amount_fen"]:
                found.problems.append(f"{d['person_id']}: reversal of {d['grant_id']} takes back "
                                      f"{d['amount_fen']} fen, the grant was {grant['amount_fen']}")
            found.by_decision_year.add(grant["agency"], grant["fund"], year, -d["amount_fen"])
            found.by_basis_year.add(grant["agency"], grant["fund"], held.year, -d["amount_fen"])
    return found


def _granted(policies: Policies, facts: Facts, g: Mapping[str, Any], held: dict[str, _Live],
             found: Findings) -> _Live:
    who = f"{g['person_id']}: {g['rule']} {g['stage']} {g['grant_id']}"
    policy = policies.version(g["policy"]["agency"], g["policy"]["version"])
    rule = policy.rules[g["rule"]]
    year = facts.basis_date(g).year
    enrollment = facts.enrollments[g["basis"]["enrollment_ref"]]
    if _payee_kind(rule, enrollment) == "employer" and enrollment.get("employer") is None:
        found.problems.append(f"{who}: an employer-paid rule on enrollment "
                              f"{g['basis']['enrollment_ref']}, which has no employer "
                              f"(ineligible_category, no advance)")
    expected = _expected_amount(policies, policy, rule, facts, g, held)
    found.amounts_checked[rule["kind"]] += 1
    if expected is not None and g["amount_fen"] != expected[0]:
        found.problems.append(f"{who}: amount {g['amount_fen']} fen, the policy and the facts give "
                              f"{expected[0]} ({expected[1]})")
    counted = bool(rule["counts_toward_annual_limit"]) and g["stage"] in COUNTED_STAGES
    slot = _slot(rule, facts, g) if counted else None
    if counted:
        found.counted_grants += 1
        same_year = sum(1 for h in held.values() if h.counted and h.year == year)
        if same_year >= ANNUAL_LIMIT:
            found.problems.append(f"{who}: a counted grant in {year} while {same_year} live counted "
                                  f"grants of that year were held (limit {ANNUAL_LIMIT})")
    if slot is not None:
        found.slot_claims += 1
        rival = next((h for h in held.values() if h.slot == slot), None)
        if rival is not None:
            found.problems.append(f"{who}: slot {slot} is already held by live grant "
                                  f"{rival.grant['grant_id']} ({rival.grant['rule']})")
    holding = held[g["grant_id"]] = _Live(g, year, counted, slot)
    return holding


def _payee_kind(rule: Mapping[str, Any], enrollment: Mapping[str, Any]) -> str:
    payee: str = rule["payee"]
    payer: str = enrollment["fee"]["payer"]
    return payer if payee == "fee_payer" else payee


def _slot(rule: Mapping[str, Any], facts: Facts, g: Mapping[str, Any]) -> tuple[str, ...] | None:
    """POLICY §5 "Slots"; an advance holds the slot its settlement will use."""
    course = facts.enrollments[g["basis"]["enrollment_ref"]]["course"]
    cert = facts.certificates.get(g["basis"].get("certificate_id") or "")
    if rule["id"] in SLOT_BY_CERTIFICATE_KIND:
        return ("kind", cert["certificate_kind"]) if cert else None
    if rule["kind"] == "certificate_level":
        return ("occupation", course["occupation_code"], cert["level"] if cert else course["level"])
    if rule["kind"] == "per_person":
        return ("occupation", course["occupation_code"], course["training_type"])
    return None


def _expected_amount(policies: Policies, policy: PolicyFile, rule: Mapping[str, Any], facts: Facts,
                     g: Mapping[str, Any], held: Mapping[str, _Live]) -> tuple[int, str] | None:
    """(fen, how) the grant must pay, or None when the policy gives no amount to compare."""
    entitlement = _entitlement(policy, rule, facts, g)
    if entitlement is None:
        return None
    fen, how = entitlement
    if g["stage"] == "advance":
        rate = policy.advance_rate_bp or 0
        return half_up(fen, rate), f"{rate / 100:g}% of {how}, half up"
    if g["stage"] == "settlement":
        advance = next((h.grant for h in held.values() if h.grant["stage"] == "advance"
                        and h.grant["rule"] == g["rule"] and h.grant["agency"] == g["agency"]
                        and h.grant["basis"]["enrollment_ref"] == g["basis"]["enrollment_ref"]), None)
        if advance is None:
            return -1, "a settlement without a live advance"
        return fen - advance["amount_fen"], f"{how} less the advance {advance['amount_fen']}"
    return fen, how


def _entitlement(policy: PolicyFile, rule: Mapping[str, Any], facts: Facts,
                 g: Mapping[str, Any]) -> tuple[int, str] | None:
    """The rule's whole amount for this basis (before any advance)."""
    basis = g["basis"]
    enrollment = facts.enrollments[basis["enrollment_ref"]]
    course = enrollment["course"]
    cert = facts.certificates.get(basis.get("certificate_id") or "")
    level = cert["level"] if cert else course["level"]
    kind = rule["kind"]
    if kind == "per_day":
        days = facts.completed[basis["enrollment_ref"]]["days_attended"]
        if basis.get("days") != days:
            return -1, f"basis.days {basis.get('days')} but TrainingCompleted says {days} days"
        per_day = _fen(rule["amount"])
        assert per_day is not None
        return per_day * days, f"{per_day} x {days} days"
    if kind == "per_month":
        month = facts.months.get((basis["enrollment_ref"], basis["month"]))
        if month is None or month["month_index"] > rule["max_months"]:
            return -1, f"month {basis['month']} is not an accepted month 1..{rule['max_months']}"
        if rule.get("amount") is not None:
            return _fen(rule["amount"]) or 0, "flat per month"
        return half_up(month["wages_fen"], rule["percent_bp"]), (
            f"{rule['percent_bp'] / 100:g}% of wages {month['wages_fen']}, half up")
    if kind == "per_person":
        employer = enrollment.get("employer") or {}
        amount = _fen(rule.get("amount"))
        if rule.get("amount_employee_model_domestic") is not None and employer.get("employee_model_domestic"):
            amount = _fen(rule["amount_employee_model_domestic"])
        if amount is None:
            return None
        if rule.get("fee_capped") and enrollment["fee"]["amount_fen"] < amount:
            return enrollment["fee"]["amount_fen"], f"{amount} capped at the fee"
        return amount, "per person"
    if kind == "certificate_level":
        amount = _fen((rule.get("amount_by_level") or {}).get(level))
        return None if amount is None else (amount, f"{level} level")
    if kind == "per_program_year":
        amount = _fen(rule.get("amount")) or _fen((rule.get("amount_by_level") or {}).get(level))
        years = course.get("program_years") or 1
        if basis.get("year_index") not in range(1, years + 1):
            return -1, f"year_index {basis.get('year_index')} outside 1..{years}"
        return None if amount is None else (amount, f"{level} level, per programme year")
    base_rule = policy.rules[rule["base_rule"]]
    base = _entitlement(policy, base_rule, facts, {**g, "rule": base_rule["id"]})
    if base is None:
        return None
    return half_up(base[0], rule["percent_bp"]), f"{rule['percent_bp'] / 100:g}% of {base[1]}"


# --- totals against the subsidy service -----------------------------------------------------------

def compare_ledger(found: Findings, agency: str, entries: Iterable[Mapping[str, Any]]) -> list[str]:
    """The agency's ledger (GET /agencies/{agency}/ledger, every page) against the published
    events: granted and reversed per fund and decision year."""
    ledger = Totals()
    for entry in entries:
        if entry["event_type"] in ("granted", "reversed"):
            ledger.add(agency, entry["fund"], dt.date.fromisoformat(entry["decided_on"]).year,
                       entry["amount_fen"])
    ours = Totals()
    for bag, sign in ((found.by_decision_year.granted, 1), (found.by_decision_year.reversed, -1)):
        for (a, fund, year), fen in bag.items():
            if a == agency:
                ours.add(a, fund, year, sign * fen)
    problems = []
    for name in ("granted", "reversed"):
        got, want = +getattr(ledger, name), +getattr(ours, name)
        if got != want:
            problems.append(f"{agency}: ledger {name} per (fund, year) {dict(got)} but the published "
                            f"events give {dict(want)}")
    return problems


def compare_summary(found: Findings, agency: str, summary: Mapping[str, Any]) -> list[str]:
    """One year's GET /agencies/{agency}/summary against the published events: granted per fund,
    net, and each fund's committed money (by basis year, as budgets count it)."""
    year, problems = summary["year"], []
    granted = {fund: fen for (a, fund, y), fen in found.by_decision_year.granted.items()
               if a == agency and y == year and fen}
    api_granted = {fund: e["amount_fen"] for fund, e in summary["by_fund"].items() if e["amount_fen"]}
    if api_granted != granted:
        problems.append(f"{agency} {year}: summary granted by fund {api_granted}, published {granted}")
    net = sum(fen for (a, _f, y), fen in found.by_decision_year.net.items() if a == agency and y == year)
    if summary["net_fen"] != net:
        problems.append(f"{agency} {year}: summary net {summary['net_fen']} fen, published {net}")
    committed = {fund: fen for (a, fund, y), fen in found.by_basis_year.net.items()
                 if a == agency and y == year and fen}
    api_committed = {fund: b["committed_fen"] for fund, b in summary["budgets"].items() if b["committed_fen"]}
    if api_committed != committed:
        problems.append(f"{agency} {year}: summary committed by fund {api_committed}, published {committed}")
    return problems
