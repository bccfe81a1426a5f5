"""tools.moneycheck on a few persons written out by hand, amounts from POLICY.md §4 worked by hand.

Every expected amount here is arithmetic on the policy text (30 CNY a day, 20% of wages, 50%
advances half up, ...), never a value the engine computed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tools.moneycheck import Facts, Policies, check, compare_ledger, compare_summary, half_up

ROOT = Path(__file__).resolve().parents[2]
POLICIES = Policies.from_dir(ROOT / "services/subsidy/policies")
TIME = "2026-06-30T18:30:00+08:00"


class World:
    """Published events of a few persons, built by hand."""

    def __init__(self) -> None:
        self.facts: list[dict[str, Any]] = []
        self.subsidy: list[dict[str, Any]] = []
        self.n = 0

    def _event(self, kind: str, data: dict[str, Any], agency: str, time: str = TIME) -> dict[str, Any]:
        topic = "assessment" if kind == "CertificateIssued" else "enrollment"
        if kind.startswith("Subsidy"):
            topic = "subsidy"
        return {"type": f"skills.{topic}.{kind}.v1", "data": data, "agencyid": agency, "time": time,
                "subject": data.get("person_id")}

    def enrol(self, person: str, ref: str, agency: str, training_type: str, *, occupation: str = "6-31-01-03",
              level: str | None = None, employer: dict[str, Any] | None = None, fee_fen: int = 150000,
              fee_payer: str = "person", project_based: bool = False, program_years: int | None = None,
              accepted_on: str = "2026-03-01") -> None:
        course = {"course_id": f"C-{ref}", "occupation_code": occupation, "occupation_name": "x",
                  "level": level, "training_type": training_type, "planned_hours": 80,
                  "start_date": "2026-03-02", "end_date": "2026-03-20", "project_based": project_based,
                  "program_years": program_years}
        self.facts.append(self._event("EnrollmentAccepted", {
            "enrollment_ref": ref, "person_id": person, "institution_id": "INST-1", "categories": [],
            "employer": employer, "course": course, "fee": {"amount_fen": fee_fen, "payer": fee_payer},
            "accepted_on": accepted_on}, agency))

    def complete(self, person: str, ref: str, agency: str, days: int, on: str = "2026-03-20") -> None:
        self.facts.append(self._event("TrainingCompleted", {
            "enrollment_ref": ref, "person_id": person, "days_attended": days, "hours_attended": days * 6,
            "completed_on": on}, agency))

    def month(self, person: str, ref: str, agency: str, month: str, wages_fen: int, index: int) -> None:
        self.facts.append(self._event("WorkTrainingMonthAccepted", {
            "enrollment_ref": ref, "person_id": person, "month": month, "wages_fen": wages_fen,
            "month_index": index}, agency))

    def certify(self, person: str, cert: str, ref: str, agency: str, kind: str, *, level: str | None = None,
                occupation: str = "6-31-01-03", on: str = "2026-04-01") -> None:
        self.facts.append(self._event("CertificateIssued", {
            "certificate_id": cert, "assessment_ref": f"A-{cert}", "person_id": person, "enrollment_ref": ref,
            "occupation_code": occupation, "level": level, "certificate_kind": kind, "issued_on": on}, agency))

    def grant(self, person: str, agency: str, rule: str, fund: str, fen: int, *, ref: str,
              stage: str = "full", cert: str | None = None, days: int | None = None,
              month: str | None = None, year_index: int | None = None, time: str = TIME) -> str:
        self.n += 1
        grant_id = f"g_{self.n}"
        self.subsidy.append(self._event("SubsidyGranted", {
            "grant_id": grant_id, "person_id": person, "agency": agency, "subsidy_type": "t", "stage": stage,
            "amount_fen": fen, "payee": {"kind": "person", "id": person}, "fund": fund,
            "policy": {"agency": agency, "version": "2020-01", "hash": "h"}, "rule": rule,
            "basis": {"enrollment_ref": ref, "certificate_id": cert, "assessment_ref": None, "days": days,
                      "month": month, "year_index": year_index}, "explanation": ""}, agency, time))
        return grant_id

    def reverse(self, person: str, agency: str, grant_id: str, fen: int, time: str = TIME) -> None:
        self.subsidy.append(self._event("SubsidyReversed", {
            "grant_id": grant_id, "person_id": person, "agency": agency, "amount_fen": fen,
            "reason": "certificate_revoked", "explanation": "", "rule": "r"}, agency, time))

    def hold(self, person: str, agency: str, rule: str, fund: str, fen: int, *, ref: str,
             cert: str | None = None) -> str:
        """A SubsidyHeld: every field of the grant it would be, plus the hold (POLICY §6)."""
        grant_id = self.grant(person, agency, rule, fund, fen, ref=ref, cert=cert)
        held = self.subsidy[-1]
        held["type"] = "skills.subsidy.SubsidyHeld.v1"
        held["data"]["hold"] = {"checks": ["daily_hours_exceeded"], "enrollment_ref": ref,
                                "held_on": "2026-06-30"}
        return grant_id

    def release(self, grant_id: str) -> None:
        held = next(e for e in self.subsidy if e["data"].get("grant_id") == grant_id)
        data = {k: v for k, v in held["data"].items() if k != "hold"}
        self.subsidy.append({**held, "type": "skills.subsidy.SubsidyGranted.v1", "data": data})

    def deny(self, person: str, agency: str, rule: str, grant_id: str) -> None:
        self.subsidy.append(self._event("SubsidyRejected", {
            "person_id": person, "agency": agency, "subsidy_type": "t", "rule": rule, "basis": {},
            "reason": "integrity_denied", "explanation": "", "grant_id": grant_id}, agency))

    def problems(self) -> list[str]:
        return check(POLICIES, Facts.of(self.facts), self.subsidy).problems


ES, UI = "employment_subsidy", "unemployment_insurance"
EMPLOYER = {"id": "E-1", "insured": True, "hardship_certified": False, "sector": None,
            "employee_model_domestic": False}


@pytest.fixture
def w() -> Iterator[World]:
    yield World()


def test_half_up_rounds_a_half_fen_up_and_less_than_half_down() -> None:
    assert half_up(99999, 5000) == 50000  # 499.995 CNY -> 500.00
    assert half_up(432103, 2000) == 86421  # 864.206 CNY -> 864.21
    assert half_up(432101, 2000) == 86420  # 864.202 CNY -> 864.20


def test_a_living_allowance_is_30_cny_for_each_attended_day(w: World) -> None:
    w.enrol("p1", "R1", "suqian", "skill_upgrade", level="junior")
    w.complete("p1", "R1", "suqian", days=12)
    w.grant("p1", "suqian", "SQ-LIVING", ES, 36000, ref="R1", days=12)  # 12 x 30 CNY = 360 CNY
    assert w.problems() == []
    w.subsidy[-1]["data"]["amount_fen"] = 33000  # 11 days' worth
    (problem,) = w.problems()
    assert "amount 33000 fen" in problem and "36000" in problem


def test_a_living_allowance_whose_days_differ_from_the_completion_is_wrong(w: World) -> None:
    w.enrol("p1", "R1", "baoshan", "pre_job")
    w.complete("p1", "R1", "baoshan", days=5)
    w.grant("p1", "baoshan", "BS-LIVING", ES, 36000, ref="R1", days=6)  # 6 x 60 CNY, but 5 days attended
    (problem,) = w.problems()
    assert "basis.days 6" in problem


def test_baoshan_pays_20_percent_of_each_months_wages_half_up_for_six_months_at_most(w: World) -> None:
    w.enrol("p2", "R2", "baoshan", "work_for_training", employer=EMPLOYER)
    w.month("p2", "R2", "baoshan", "2026-04", 432103, 1)
    w.month("p2", "R2", "baoshan", "2026-10", 500000, 7)
    w.grant("p2", "baoshan", "BS-YGDX", UI, 86421, ref="R2", month="2026-04")  # 4,321.03 x 20% = 864.21
    assert w.problems() == []
    w.grant("p2", "baoshan", "BS-YGDX", UI, 100000, ref="R2", month="2026-10")  # a 7th month
    (problem,) = w.problems()
    assert "not an accepted month 1..6" in problem


def test_suqian_pays_150_cny_a_month_whatever_the_wages(w: World) -> None:
    w.enrol("p2", "R2", "suqian", "work_for_training", employer=EMPLOYER)
    w.month("p2", "R2", "suqian", "2026-04", 432103, 1)
    w.grant("p2", "suqian", "SQ-YGDX", ES, 15000, ref="R2", month="2026-04")
    assert w.problems() == []


def test_a_fee_capped_advance_is_half_of_the_fee_rounded_up_and_the_settlement_the_exact_rest(w: World) -> None:
    # SQ-TRANSFER: 1,000 CNY capped at the fee 999.99 CNY; advance 50% = 499.995 -> 500.00,
    # settlement 999.99 - 500.00 = 499.99.
    w.enrol("p3", "R3", "suqian", "job_transfer", employer=EMPLOYER, fee_fen=99999, fee_payer="institution",
            project_based=True)
    w.complete("p3", "R3", "suqian", days=10)
    w.certify("p3", "C3", "R3", "suqian", "training_completion")
    w.grant("p3", "suqian", "SQ-TRANSFER", ES, 50000, ref="R3", stage="advance")
    w.grant("p3", "suqian", "SQ-TRANSFER", ES, 49999, ref="R3", stage="settlement", cert="C3")
    assert w.problems() == []
    w.subsidy[-1]["data"]["amount_fen"] = 50000  # a settlement of the rounded half, not the rest
    (problem,) = w.problems()
    assert "49999" in problem and "less the advance 50000" in problem


def test_an_uncapped_fee_pays_the_flat_amount(w: World) -> None:
    w.enrol("p3", "R3", "suqian", "job_transfer", employer=EMPLOYER, fee_fen=250000, fee_payer="employer")
    w.certify("p3", "C3", "R3", "suqian", "training_completion")
    w.grant("p3", "suqian", "SQ-TRANSFER", ES, 100000, ref="R3", cert="C3")  # 1,000 CNY < fee 2,500 CNY
    assert w.problems() == []


def test_beijing_levelled_certificate_and_its_hardship_top_up_of_50_percent(w: World) -> None:
    w.enrol("p4", "R4", "beijing", "skill_upgrade", level="senior", employer=EMPLOYER)
    w.certify("p4", "C4", "R4", "beijing", "skill_level", level="senior")
    w.grant("p4", "beijing", "BJ-CERT-IND", UI, 200000, ref="R4", cert="C4")  # senior 2,000 CNY (assumed)
    w.grant("p4", "beijing", "BJ-CERT-HARDENT", UI, 100000, ref="R4", cert="C4")  # 50% of 2,000 CNY
    assert w.problems() == []


def test_a_domestic_refresher_pays_1000_cny_through_an_employee_model_firm(w: World) -> None:
    firm = {**EMPLOYER, "employee_model_domestic": True}
    w.enrol("p5", "R5", "beijing", "domestic_refresh", occupation="4-10-01-01", employer=firm)
    w.complete("p5", "R5", "beijing", days=8)
    w.grant("p5", "beijing", "BJ-DOM-REFRESH", UI, 100000, ref="R5")
    w.enrol("p5", "R6", "beijing", "domestic_refresh", occupation="4-10-01-02", employer=EMPLOYER)
    w.complete("p5", "R6", "beijing", days=8)
    w.grant("p5", "beijing", "BJ-DOM-REFRESH", UI, 100000, ref="R6")  # 500 CNY without the firm model
    (problem,) = w.problems()
    assert "R6" not in problem and "50000" in problem


def test_apprenticeship_years_pay_by_level_for_each_programme_year_only(w: World) -> None:
    w.enrol("p6", "R7", "city-a", "apprenticeship", level="senior", employer=EMPLOYER, program_years=2)
    w.certify("p6", "C7", "R7", "city-a", "skill_level", level="senior")
    for year_index in (1, 2):
        w.grant("p6", "city-a", "A-APPR", UI, 700000, ref="R7", cert="C7", year_index=year_index)
    assert w.problems() == []
    w.grant("p6", "city-a", "A-APPR", UI, 700000, ref="R7", cert="C7", year_index=3)
    (problem,) = w.problems()
    assert "year_index 3 outside 1..2" in problem


def _four_counted_grants(w: World) -> list[str]:
    ids = []
    for n, training_type in enumerate(("pre_job", "safety", "job_transfer", "non_level")):
        ref = f"R{n}"
        w.enrol("p7", ref, "beijing" if training_type == "non_level" else "suqian", training_type,
                employer={**EMPLOYER, "hardship_certified": True}, fee_fen=200000, fee_payer="employer")
        w.complete("p7", ref, "suqian", days=8)
        w.certify("p7", f"C{n}", ref, "suqian", "training_completion")
    ids.append(w.grant("p7", "suqian", "SQ-PREJOB", ES, 30000, ref="R0", cert="C0"))
    ids.append(w.grant("p7", "suqian", "SQ-SAFETY", ES, 30000, ref="R1", cert="C1"))
    ids.append(w.grant("p7", "suqian", "SQ-TRANSFER", ES, 100000, ref="R2", cert="C2"))
    return ids


def test_a_fourth_counted_grant_in_one_year_across_agencies_is_a_problem(w: World) -> None:
    _four_counted_grants(w)
    w.grant("p7", "beijing", "BJ-HARDENT-NONLEVEL", UI, 50000, ref="R3")
    (problem,) = w.problems()
    assert "BJ-HARDENT-NONLEVEL" in problem and "3 live counted grants" in problem


def test_a_reversal_frees_its_place_in_the_annual_limit(w: World) -> None:
    first, *_ = _four_counted_grants(w)
    w.reverse("p7", "suqian", first, 30000)
    w.grant("p7", "beijing", "BJ-HARDENT-NONLEVEL", UI, 50000, ref="R3")
    assert w.problems() == []


def test_living_allowances_and_months_never_count_toward_the_limit(w: World) -> None:
    _four_counted_grants(w)
    w.grant("p7", "suqian", "SQ-LIVING", ES, 24000, ref="R3", days=8)
    assert w.problems() == []


def test_sq_specop_after_sq_prejob_on_one_special_operation_course_takes_a_held_slot(w: World) -> None:
    # POLICY §5 "Slots": SQ-SPECOP keys on (occupation, training type) like every per_person rule.
    w.enrol("p8", "R8", "suqian", "special_operation", occupation="6-29-03-01", employer=EMPLOYER)
    w.complete("p8", "R8", "suqian", days=8)
    w.certify("p8", "C8", "R8", "suqian", "special_operation", occupation="6-29-03-01")
    w.grant("p8", "suqian", "SQ-PREJOB", ES, 30000, ref="R8", cert="C8")
    w.grant("p8", "suqian", "SQ-SPECOP", ES, 50000, ref="R8", cert="C8")
    (problem,) = w.problems()
    assert "SQ-SPECOP" in problem and "'special_operation'" in problem and "SQ-PREJOB" in problem


def test_bj_specop_keys_on_the_certificate_kind_not_the_occupation(w: World) -> None:
    for n, (kind, occupation) in enumerate((("special_operation", "6-29-03-01"),
                                             ("special_equipment", "6-29-03-02"),
                                             ("special_operation", "6-29-03-03"))):
        ref = f"S{n}"
        w.enrol("p9", ref, "beijing", "special_operation", occupation=occupation)
        w.complete("p9", ref, "beijing", days=8)
        w.certify("p9", f"K{n}", ref, "beijing", kind, occupation=occupation)
    w.grant("p9", "beijing", "BJ-SPECOP", UI, 100000, ref="S0", cert="K0")
    w.grant("p9", "beijing", "BJ-SPECOP", UI, 100000, ref="S1", cert="K1")
    assert w.problems() == []
    w.grant("p9", "beijing", "BJ-SPECOP", UI, 100000, ref="S2", cert="K2")
    (problem,) = w.problems()
    assert "('kind', 'special_operation')" in problem


def test_one_occupation_and_level_once_across_agencies(w: World) -> None:
    w.enrol("p10", "L1", "city-a", "skill_upgrade", level="junior", employer=EMPLOYER, fee_payer="employer")
    w.certify("p10", "CL1", "L1", "city-a", "qualification", level="junior")
    w.enrol("p10", "L2", "beijing", "skill_upgrade", level="junior")
    w.certify("p10", "CL2", "L2", "beijing", "skill_level", level="junior")
    w.grant("p10", "city-a", "A-CERT-ENT", UI, 100000, ref="L1", cert="CL1")
    w.grant("p10", "beijing", "BJ-CERT-IND", UI, 100000, ref="L2", cert="CL2")
    (problem,) = w.problems()
    assert "BJ-CERT-IND" in problem and "A-CERT-ENT" in problem


def test_an_employer_paid_rule_without_an_employer_is_a_problem_even_paid_to_the_institution(w: World) -> None:
    # POLICY §5: project-based training changes the payee, not eligibility.
    w.enrol("p11", "R11", "suqian", "pre_job", project_based=True, fee_payer="institution")
    w.grant("p11", "suqian", "SQ-PREJOB", ES, 15000, ref="R11", stage="advance")
    (problem,) = w.problems()
    assert "no employer" in problem and "advance" in problem


def test_a_reversal_of_an_unknown_or_already_reversed_grant_is_a_problem(w: World) -> None:
    w.enrol("p1", "R1", "suqian", "skill_upgrade", level="junior")
    w.complete("p1", "R1", "suqian", days=2)
    grant = w.grant("p1", "suqian", "SQ-LIVING", ES, 6000, ref="R1", days=2)
    w.reverse("p1", "suqian", grant, 6000)
    w.reverse("p1", "suqian", grant, 6000)
    (problem,) = w.problems()
    assert "not a live grant" in problem


def test_totals_per_agency_fund_and_year_are_compared_with_the_ledger_and_the_summary(w: World) -> None:
    w.enrol("p1", "R1", "suqian", "skill_upgrade", level="junior", accepted_on="2025-12-28")
    w.complete("p1", "R1", "suqian", days=12, on="2026-01-20")
    w.enrol("p2", "R2", "suqian", "work_for_training", employer=EMPLOYER)
    w.month("p2", "R2", "suqian", "2026-04", 400000, 1)
    living = w.grant("p1", "suqian", "SQ-LIVING", ES, 36000, ref="R1", days=12, time="2026-01-20T18:30:00+08:00")
    w.grant("p2", "suqian", "SQ-YGDX", ES, 15000, ref="R2", month="2026-04", time="2026-04-01T10:00:00+08:00")
    w.reverse("p1", "suqian", living, 36000, time="2027-01-05T10:00:00+08:00")
    found = check(POLICIES, Facts.of(w.facts), w.subsidy)
    assert found.problems == []
    ledger: list[dict[str, Any]] = [
        {"event_type": "granted", "fund": ES, "decided_on": "2026-01-20", "amount_fen": 36000},
        {"event_type": "granted", "fund": ES, "decided_on": "2026-04-01", "amount_fen": 15000},
        {"event_type": "rejected", "fund": None, "decided_on": "2026-04-01", "amount_fen": 0},
        {"event_type": "reversed", "fund": ES, "decided_on": "2027-01-05", "amount_fen": -36000},
    ]
    assert compare_ledger(found, "suqian", ledger) == []
    assert compare_ledger(found, "suqian", ledger[:2]) != []
    # 2026: 360 + 150 CNY granted; the reversal is decided in 2027 but gives back 2026's budget.
    summary_2026 = {"year": 2026, "by_fund": {ES: {"count": 2, "amount_fen": 51000}}, "net_fen": 51000,
                    "budgets": {ES: {"budget_fen": None, "committed_fen": 15000}}}
    summary_2027 = {"year": 2027, "by_fund": {}, "net_fen": -36000, "budgets": {}}
    assert compare_summary(found, "suqian", summary_2026) == []
    assert compare_summary(found, "suqian", summary_2027) == []
    wrong = {**summary_2026, "budgets": {ES: {"budget_fen": None, "committed_fen": 51000}}}
    (problem,) = compare_summary(found, "suqian", wrong)
    assert "committed" in problem


def test_the_checker_reads_budgets_from_the_policy_files() -> None:
    budgeted = Policies.from_dir(ROOT / "tools/policies/budgeted")
    assert budgeted.budget_fen("suqian", "employment_subsidy", 2026) == 15_000_000  # 150,000 CNY
    assert budgeted.budget_fen("suqian", "employment_subsidy", 2025) is None
    assert POLICIES.budget_fen("suqian", "employment_subsidy", 2026) is None
    assert budgeted.fund_of("baoshan", "BS-LIVING") == "employment_subsidy"


def test_the_budgeted_policy_set_is_the_shipped_one_with_budgets() -> None:
    """tools/policies/budgeted must follow every change of the shipped policies: only the
    version, description and budgets may differ."""
    shipped = sorted((ROOT / "services/subsidy/policies").glob("*.json"))
    budgeted = sorted((ROOT / "tools/policies/budgeted").glob("*.json"))
    assert [p.name for p in shipped] == [p.name for p in budgeted]
    for ours, theirs in zip(shipped, budgeted, strict=True):
        a, b = json.loads(ours.read_text()), json.loads(theirs.read_text())
        assert a["budgets"] == {} and b["budgets"], theirs
        for key in ("version", "description", "budgets"):
            a.pop(key), b.pop(key)
        assert a == b, f"{theirs} differs from {ours} beyond version, description and budgets"


def test_a_hold_counts_toward_the_limit_and_commits_budget_until_released(w: World) -> None:
    """POLICY §6: a hold counts exactly as the grant would (a 4th counted decision of the year is
    one too many whether the first three are paid or held); a release pays what was held without
    counting it twice."""
    first, *_ = _four_counted_grants(w)  # three live counted grants in 2026
    w.hold("p7", "beijing", "BJ-HARDENT-NONLEVEL", UI, 50000, ref="R3")
    (problem,) = w.problems()
    assert "BJ-HARDENT-NONLEVEL" in problem and "3 live counted grants" in problem
    w.subsidy.pop()
    w.reverse("p7", "suqian", first, 30000)  # two remain: the hold is the third
    held = w.hold("p7", "beijing", "BJ-HARDENT-NONLEVEL", UI, 50000, ref="R3")
    found = check(POLICIES, Facts.of(w.facts), w.subsidy)
    assert found.problems == []
    assert found.by_basis_year.net[("beijing", UI, 2026)] == 50000  # committed while held
    assert found.by_decision_year.granted[("beijing", UI, 2026)] == 0  # nothing paid
    w.release(held)
    found = check(POLICIES, Facts.of(w.facts), w.subsidy)
    assert found.problems == []
    assert found.by_basis_year.net[("beijing", UI, 2026)] == 50000  # not counted twice
    assert found.by_decision_year.granted[("beijing", UI, 2026)] == 50000  # paid on release


def test_a_denied_hold_frees_its_budget_and_its_slot(w: World) -> None:
    w.enrol("p9", "R1", "suqian", "pre_job", employer=EMPLOYER)
    w.complete("p9", "R1", "suqian", days=5)
    held = w.hold("p9", "suqian", "SQ-PREJOB", ES, 30000, ref="R1")
    w.deny("p9", "suqian", "SQ-PREJOB", held)
    found = check(POLICIES, Facts.of(w.facts), w.subsidy)
    assert found.problems == [] and found.by_basis_year.net[("suqian", ES, 2026)] == 0
    w.enrol("p9", "R2", "suqian", "pre_job", employer=EMPLOYER)  # same occupation, pre_job again
    w.complete("p9", "R2", "suqian", days=5)
    w.grant("p9", "suqian", "SQ-PREJOB", ES, 30000, ref="R2")
    assert w.problems() == []
