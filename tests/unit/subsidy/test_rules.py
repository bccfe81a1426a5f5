"""Every default rule of every agency pays the right amount to the right payee from the right fund."""

from __future__ import annotations

from typing import Any

import pytest

from services.subsidy.engine.domain import SubsidyGranted

from .world import World, employer, summary

UI, ES = "unemployment_insurance", "employment_subsidy"


def _granted(outputs: list[Any]) -> list[tuple[str, int, str, str]]:
    return [(o.rule, o.amount_fen, o.payee_kind, o.fund) for o in outputs
            if isinstance(o, SubsidyGranted)]


@pytest.mark.parametrize("level,amount", [
    ("junior", 100000), ("intermediate", 150000), ("senior", 300000),
    ("technician", 400000), ("senior_technician", 500000)])
def test_a_cert_ent_pays_the_employer_by_level(level: str, amount: int) -> None:
    w = World()
    ref = w.enroll("city-a", employer=employer(), payer="employer", level=level)
    w.complete(ref)
    assert _granted(w.certify(ref)) == [("A-CERT-ENT", amount, "employer", UI)]


def test_a_cert_ent_needs_the_fee_paid_by_the_employer() -> None:
    w = World()
    ref = w.enroll("city-a", employer=employer(), payer="person")
    w.complete(ref)
    assert summary(w.certify(ref)) == [("rejected", "A-CERT-ENT", "ineligible_category")]


@pytest.mark.parametrize("level,outcome", [
    ("senior", [("granted", "A-APPR", "full", 700000, "employer")] * 3),
    ("junior", [("rejected", "A-APPR", "amount_not_configured")])])
def test_a_appr_pays_intermediate_and_senior_only(level: str, outcome: list[Any]) -> None:
    w = World()
    ref = w.enroll("city-a", employer=employer(), training_type="apprenticeship",
                   program_years=3, level=level)
    w.complete(ref)
    assert summary(w.certify(ref)) == outcome


def _per_person(agency: str, training_type: str, *, kind: str = "training_completion",
                cert_level: str | None = None, **enroll: Any) -> list[Any]:
    w = World()
    enroll.setdefault("level", None)
    ref = w.enroll(agency, training_type=training_type, **enroll)
    outputs = w.complete(ref, hours=enroll.pop("hours", 80))
    return outputs + w.certify(ref, kind=kind, level=cert_level)


@pytest.mark.parametrize("agency,training_type,extra,expected", [
    ("suqian", "pre_job", {"employer": employer()}, ("SQ-PREJOB", 30000, "employer", ES)),
    ("suqian", "job_transfer", {"employer": employer(), "fee": 150000},
     ("SQ-TRANSFER", 100000, "employer", ES)),
    ("suqian", "job_transfer", {"employer": employer(), "fee": 60000},
     ("SQ-TRANSFER", 60000, "employer", ES)),
    ("suqian", "safety", {"employer": employer()}, ("SQ-SAFETY", 30000, "employer", ES)),
    ("baoshan", "pre_job", {"employer": employer(), "payer": "employer"},
     ("BS-PREJOB", 80000, "employer", UI)),
    ("baoshan", "safety", {"payer": "person"}, ("BS-SAFETY", 80000, "person", UI)),
    ("baoshan", "job_transfer", {"payer": "institution"},
     ("BS-TRANSFER", 80000, "institution", UI)),
    ("beijing", "key_industry", {"employer": employer(sector="hitech"), "fee": 3000000},
     ("BJ-HITECH-ENT", 2000000, "employer", UI)),
    ("beijing", "key_industry", {"employer": employer(sector="fintech"), "fee": 900000},
     ("BJ-HITECH-ENT", 900000, "employer", UI)),
    ("beijing", "key_industry", {"employer": employer(sector="life_services"), "fee": 400000},
     ("BJ-LIFESERV", 300000, "employer", UI)),
])
def test_per_person_rules_on_a_pass(agency: str, training_type: str, extra: dict[str, Any],
                                    expected: tuple[str, int, str, str]) -> None:
    assert _granted(_per_person(agency, training_type, **extra)) == [expected]


@pytest.mark.parametrize("training_type,extra,expected", [
    ("pre_job", {"employer": employer(), "hired_on": "2026-01-10", "hours": 40},
     ("BJ-PREJOB", 50000, "employer", UI)),
    ("non_level", {"employer": employer(hardship=True), "hours": 20},
     ("BJ-HARDENT-NONLEVEL", 50000, "employer", UI)),
    ("domestic_prejob", {"employer": employer(), "hours": 80},
     ("BJ-DOM-PRE", 200000, "employer", UI)),
    ("domestic_refresh", {"employer": employer(), "hours": 40},
     ("BJ-DOM-REFRESH", 50000, "employer", UI)),
    ("domestic_refresh", {"employer": employer(domestic=True), "hours": 40},
     ("BJ-DOM-REFRESH", 100000, "employer", UI)),
    ("key_industry", {"employer": employer(sector="culture"), "fee": 700000},
     ("BJ-CULTURE", 500000, "employer", UI)),
    ("key_industry", {"employer": employer(sector="culture"), "fee": 300000},
     ("BJ-CULTURE", 300000, "employer", UI)),
    ("key_industry", {"employer": employer(sector="city_ops"), "fee": 700000},
     ("BJ-CITYOPS", 400000, "employer", UI)),
])
def test_beijing_completion_rules_pay_on_completion(training_type: str, extra: dict[str, Any],
                                                   expected: tuple[str, int, str, str]) -> None:
    w = World()
    hours = extra.pop("hours", 80)
    ref = w.enroll("beijing", training_type=training_type, level=None, **extra)
    assert _granted(w.complete(ref, hours=hours)) == [expected]


def test_bj_dom_pre_explains_its_assumed_amount() -> None:
    w = World()
    ref = w.enroll("beijing", training_type="domestic_prejob", level=None, employer=employer())
    (grant,) = w.complete(ref, hours=80)
    assert isinstance(grant, SubsidyGranted)
    assert "(assumed amount)" in grant.explanation and "BJ-DOM-PRE" in grant.explanation
    assert "2000.00 CNY" in grant.explanation and "200000 fen" in grant.explanation
    assert "version 2020-01" in grant.explanation


def test_specop_certificates_pay_the_person_from_any_training_type() -> None:
    sq = _per_person("suqian", "entrepreneurship", kind="special_operation",
                     categories=("veteran",))
    bj = _per_person("beijing", "entrepreneurship", kind="special_equipment", insured_months=12)
    assert _granted(sq) == [("SQ-SPECOP", 50000, "person", ES)]
    assert _granted(bj) == [("BJ-SPECOP", 100000, "person", UI)]


def test_sq_prejob_also_covers_special_operation_training_and_then_holds_the_specop_slot() -> None:
    """POLICY.md §5 "Slots": SQ-SPECOP keys on (occupation, training type) like every per_person
    rule, so after SQ-PREJOB on a special_operation course it is duplicate_occupation_level:
    300 CNY is due, not 300 + 500."""
    outputs = _per_person("suqian", "special_operation", kind="special_operation",
                          employer=employer(), categories=("veteran",))
    assert summary(outputs) == [
        ("granted", "SQ-PREJOB", "full", 30000, "employer"),
        ("rejected", "SQ-SPECOP", "duplicate_occupation_level")]


@pytest.mark.parametrize("agency,rule,per_day", [("suqian", "SQ-LIVING", 3000),
                                                ("baoshan", "BS-LIVING", 6000)])
def test_living_allowances_pay_per_attended_day(agency: str, rule: str, per_day: int) -> None:
    w = World()
    ref = w.enroll(agency, categories=("poor_labor",))
    assert _granted(w.complete(ref, days=7)) == [(rule, 7 * per_day, "person", ES)]


@pytest.mark.parametrize("agency", ["suqian", "baoshan"])
def test_living_allowance_for_school_leavers_only_when_rural(agency: str) -> None:
    w = World()
    ref = w.enroll(agency, categories=("non_continuing_graduate",), rural=False)
    assert w.complete(ref, days=7) == []


def test_living_allowance_needs_an_attended_day() -> None:
    w = World()
    ref = w.enroll("suqian", categories=("poor_labor",))
    assert w.complete(ref, days=0, hours=0) == []


@pytest.mark.parametrize("wages,expected", [(400000, 80000), (13, 3), (12, 2)])
def test_bs_ygdx_pays_twenty_percent_of_wages_rounded_half_up(wages: int, expected: int) -> None:
    w = World()
    ref = w.enroll("baoshan", categories=("poor_labor",), employer=employer(insured=False),
                   training_type="work_for_training")
    assert _granted(w.month(ref, "2026-05", 1, wages=wages)) == [
        ("BS-YGDX", expected, "employer", UI)]


def test_bj_ygdx_pays_monthly_for_employment_difficulty() -> None:
    w = World()
    ref = w.enroll("beijing", categories=("employment_difficulty",), employer=employer(),
                   training_type="work_for_training")
    assert _granted(w.month(ref, "2026-05", 1)) == [("BJ-YGDX", 50000, "employer", UI)]


def test_bs_appr_pays_every_level_per_programme_year() -> None:
    w = World()
    ref = w.enroll("baoshan", employer=employer(), training_type="apprenticeship",
                   program_years=2, level="junior")
    w.complete(ref)
    assert _granted(w.certify(ref)) == [("BS-APPR", 400000, "employer", UI)] * 2


@pytest.mark.parametrize("agency,rule", [("suqian", "SQ-APPR"), ("beijing", "BJ-APPR")])
def test_unpublished_apprenticeship_amounts_are_not_configured(agency: str, rule: str) -> None:
    w = World()
    ref = w.enroll(agency, employer=employer(), training_type="apprenticeship", program_years=2)
    w.complete(ref)
    assert summary(w.certify(ref)) == [("rejected", rule, "amount_not_configured")]


def test_bs_cert_amount_is_not_configured() -> None:
    w = World()
    ref = w.enroll("baoshan")
    w.complete(ref)
    assert summary(w.certify(ref)) == [("rejected", "BS-CERT", "amount_not_configured")]


@pytest.mark.parametrize("level,amount", [("junior", 100000), ("intermediate", 150000),
                                          ("technician", 250000), ("senior_technician", 300000)])
def test_bj_cert_ind_levels_with_topup_of_half(level: str, amount: int) -> None:
    w = World()
    ref = w.enroll("beijing", insured_months=12, level=level, employer=employer(hardship=True))
    w.complete(ref)
    assert _granted(w.certify(ref, kind="qualification")) == [
        ("BJ-CERT-IND", amount, "person", UI), ("BJ-CERT-HARDENT", amount // 2, "employer", UI)]


def test_no_topup_without_a_hardship_employer() -> None:
    w = World()
    ref = w.enroll("beijing", insured_months=12, employer=employer())
    w.complete(ref)
    assert _granted(w.certify(ref)) == [("BJ-CERT-IND", 150000, "person", UI)]
