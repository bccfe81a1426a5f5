"""Every rejection reason reachable with the default policies, in POLICY §5's check order."""

from __future__ import annotations

from services.subsidy import contract
from services.subsidy.engine.domain import SubsidyRejected

from .world import World, employer, summary


def test_pension_eligible_persons_are_rejected_where_the_policy_excludes_them() -> None:
    w = World()
    ref = w.enroll("suqian", categories=("pension_eligible", "poor_labor"))
    assert w.complete(ref) == []  # the living allowance is out of scope, so silent
    assert summary(w.certify(ref)) == [("rejected", "SQ-CERT", "pension_eligible")]


def test_pension_eligible_persons_are_paid_where_the_policy_does_not_exclude_them() -> None:
    w = World()
    ref = w.enroll("beijing", categories=("pension_eligible",), insured_months=12)
    w.complete(ref)
    assert summary(w.certify(ref))[0][:2] == ("granted", "BJ-CERT-IND")


def test_a_levelled_certificate_of_an_uncovered_kind_is_rejected() -> None:
    w = World()
    ref = w.enroll("beijing", insured_months=24)
    w.complete(ref)
    assert summary(w.certify(ref, kind="special_ability")) == [
        ("rejected", "BJ-CERT-IND", "certificate_kind_not_covered")]


def test_an_employer_paid_rule_without_employer_is_ineligible() -> None:
    w = World()
    ref = w.enroll("suqian", training_type="safety", level=None)
    w.complete(ref)
    assert summary(w.certify(ref, kind="training_completion", level=None)) == [
        ("rejected", "SQ-SAFETY", "ineligible_category")]


def test_a_fee_payer_employer_missing_is_ineligible() -> None:
    w = World()
    ref = w.enroll("baoshan", training_type="pre_job", level=None, payer="employer")
    w.complete(ref)
    assert summary(w.certify(ref, kind="training_completion", level=None)) == [
        ("rejected", "BS-PREJOB", "ineligible_category")]


def test_nonlevel_training_needs_a_hardship_certificate() -> None:
    w = World()
    ref = w.enroll("beijing", training_type="non_level", level=None, employer=employer())
    assert summary(w.complete(ref)) == [("rejected", "BJ-HARDENT-NONLEVEL", "ineligible_category")]


def test_outside_hire_window_and_missing_hire_date() -> None:
    for hired_on in ("2025-02-28", None):
        w = World()
        ref = w.enroll("beijing", training_type="pre_job", level=None, employer=employer(),
                       hired_on=hired_on, start="2026-03-01")
        assert summary(w.complete(ref)) == [("rejected", "BJ-PREJOB", "outside_hire_window")]


def test_hire_window_includes_twelve_months_to_the_day() -> None:
    w = World()
    ref = w.enroll("beijing", training_type="pre_job", level=None, employer=employer(),
                   hired_on="2025-03-01", start="2026-03-01")
    assert summary(w.complete(ref))[0][0] == "granted"


def test_insufficient_hours_below_the_minimum_and_not_at_it() -> None:
    w = World()
    ref = w.enroll("beijing", training_type="domestic_refresh", level=None, employer=employer())
    assert summary(w.complete(ref, hours=39)) == [
        ("rejected", "BJ-DOM-REFRESH", "insufficient_hours")]


def test_a_second_pass_on_the_same_enrollment_is_a_duplicate_project() -> None:
    w = World()
    ref = w.enroll("beijing", insured_months=24)
    w.complete(ref)
    w.certify(ref, kind="skill_level")
    assert summary(w.certify(ref, kind="qualification")) == [
        ("rejected", "BJ-CERT-IND", "duplicate_project")]


def test_the_same_occupation_and_level_is_paid_once_across_agencies() -> None:
    w = World()
    first = w.enroll("city-a", employer=employer(), payer="employer")
    w.complete(first)
    w.certify(first)
    second = w.enroll("beijing", insured_months=24)
    w.complete(second)
    assert summary(w.certify(second)) == [
        ("rejected", "BJ-CERT-IND", "duplicate_occupation_level")]


def test_bj_specop_pays_once_per_certificate_kind() -> None:
    w = World()
    for occupation in ("A", "B"):
        ref = w.enroll("beijing", training_type="special_operation", level=None,
                       occupation=occupation, insured_months=24)
        w.complete(ref)
        w.certify(ref, kind="special_operation", level=None)
    assert summary(w.outputs) == [("granted", "BJ-SPECOP", "full", 100000, "person"),
                                  ("rejected", "BJ-SPECOP", "duplicate_occupation_level")]


def test_work_for_training_and_pre_job_do_not_stack_for_one_employer() -> None:
    w = World()
    ygdx = w.enroll("suqian", categories=("poor_labor",), employer=employer(),
                    training_type="work_for_training", level=None)
    w.month(ygdx, "2026-02", 1)
    prejob = w.enroll("suqian", employer=employer(), training_type="pre_job", level=None)
    w.complete(prejob)
    assert summary(w.certify(prejob, kind="training_completion", level=None)) == [
        ("rejected", "SQ-PREJOB", "not_stackable")]
    assert summary(w.month(ygdx, "2026-03", 2)) == [("granted", "SQ-YGDX", "full", 15000,
                                                      "employer")]


def test_pre_job_for_another_employer_stacks() -> None:
    w = World()
    ygdx = w.enroll("suqian", categories=("poor_labor",), employer=employer("E1"),
                    training_type="work_for_training", level=None)
    w.month(ygdx, "2026-02", 1)
    prejob = w.enroll("suqian", employer=employer("E2"), training_type="pre_job", level=None)
    w.complete(prejob)
    assert summary(w.certify(prejob, kind="training_completion", level=None))[0][0] == "granted"


def test_rejections_explain_the_rule_the_reason_and_the_facts() -> None:
    w = World()
    ref = w.enroll("beijing", insured_months=6)
    w.complete(ref)
    (rejection,) = w.certify(ref, cert_id="CERT-X")
    assert isinstance(rejection, SubsidyRejected)
    text = rejection.explanation
    assert "BJ-CERT-IND" in text and "insured 6 months" in text and "CERT-X" in text
    assert contract.data(rejection)["reason"] == "insufficient_insurance"
