"""The eight worked cases of EXAMPLES.md, each producing exactly the listed subsidy events."""

from __future__ import annotations

from services.subsidy.engine.domain import SubsidyGranted

from .world import World, employer, summary


def test_example_1_suqian_rural_school_leaver_gets_living_allowance_and_unset_certificate():
    w = World()
    ref = w.enroll("suqian", categories=("non_continuing_graduate",), rural=True)
    on_completion = w.complete(ref, days=10, hours=80, on="2026-03-20")
    on_certificate = w.certify(ref, kind="skill_level", on="2026-03-25")
    assert summary(on_completion) == [("granted", "SQ-LIVING", "full", 30000, "person")]
    grant = on_completion[0]
    assert isinstance(grant, SubsidyGranted)
    assert grant.fund == "employment_subsidy" and grant.basis.days == 10
    assert summary(on_certificate) == [("rejected", "SQ-CERT", "amount_not_configured")]


def _beijing_employee(insured_months: int) -> tuple[World, str]:
    w = World()
    ref = w.enroll("beijing", categories=("enterprise_employee",), insured_months=insured_months,
                   employer=employer(hardship=True), level="senior", payer="employer")
    w.complete(ref)
    return w, ref


def test_example_2_beijing_hardship_employer_gets_assumed_senior_amount_and_topup():
    w, ref = _beijing_employee(14)
    outputs = w.certify(ref, kind="qualification")
    assert summary(outputs) == [
        ("granted", "BJ-CERT-IND", "full", 200000, "person"),
        ("granted", "BJ-CERT-HARDENT", "full", 100000, "employer"),
    ]
    assert all(isinstance(o, SubsidyGranted) and "(assumed amount)" in o.explanation
               for o in outputs)


def test_example_3_beijing_not_insured_long_enough_is_rejected_without_topup():
    w, ref = _beijing_employee(6)
    assert summary(w.certify(ref, kind="qualification")) == [
        ("rejected", "BJ-CERT-IND", "insufficient_insurance")]


def _baoshan_project(w: World) -> str:
    return w.enroll("baoshan", categories=("poor_labor",), training_type="pre_job", level=None,
                    project_based=True, institution="INST-9", payer="institution",
                    fee=80000, accepted_on="2026-04-01", start="2026-04-01", end="2026-04-20")


def test_example_4_baoshan_project_based_pre_job_advance_settlement_and_living():
    w = World()
    ref = _baoshan_project(w)
    assert summary(w.last_outputs) == [("granted", "BS-PREJOB", "advance", 40000, "institution")]
    assert summary(w.complete(ref, days=12, hours=72, on="2026-04-20")) == [
        ("granted", "BS-LIVING", "full", 72000, "person")]
    assert summary(w.certify(ref, kind="training_completion", level=None, on="2026-04-25")) == [
        ("granted", "BS-PREJOB", "settlement", 40000, "institution")]
    living = [o for o in w.outputs if isinstance(o, SubsidyGranted) and o.rule == "BS-LIVING"]
    assert living[0].fund == "employment_subsidy"
    assert all(o.payee_id == "INST-9" for o in w.outputs
               if isinstance(o, SubsidyGranted) and o.rule == "BS-PREJOB")


def test_example_5_baoshan_withdrawal_reverses_the_advance_and_pays_no_living_allowance():
    w = World()
    ref = _baoshan_project(w)
    advance = w.last_outputs[0]
    outputs = w.withdraw(ref, on="2026-04-08")
    assert summary(outputs) == [("reversed", "BS-PREJOB", "advance_not_earned", 40000)]
    assert outputs[0].grant_id == advance.grant_id  # type: ignore[union-attr]  # present in this example


def test_example_6_city_a_two_year_apprenticeship_pays_one_grant_per_year():
    w = World()
    ref = w.enroll("city-a", employer=employer(), payer="employer",
                   training_type="apprenticeship", program_years=2)
    w.complete(ref)
    outputs = w.certify(ref, kind="skill_level")
    assert summary(outputs) == [("granted", "A-APPR", "full", 500000, "employer")] * 2
    assert [o.basis.year_index for o in outputs] == [1, 2]  # type: ignore[union-attr]  # present in this example


def _work_for_training(insured: bool) -> World:
    w = World()
    ref = w.enroll("suqian", categories=("employment_difficulty",),
                   employer=employer(insured=insured), training_type="work_for_training")
    for index in range(1, 8):
        w.month(ref, f"2026-{index:02d}", index, wages=400000)
    return w


def test_example_7_suqian_work_for_training_pays_six_months_and_not_the_seventh():
    w = _work_for_training(insured=True)
    assert summary(w.outputs) == [("granted", "SQ-YGDX", "full", 15000, "employer")] * 6
    assert [o.basis.month for o in w.outputs] == [  # type: ignore[union-attr]  # present in this example
        f"2026-{m:02d}" for m in range(1, 7)]


def test_example_7_with_an_uninsured_employer_rejects_six_months():
    w = _work_for_training(insured=False)
    assert summary(w.outputs) == [("rejected", "SQ-YGDX", "ineligible_category")] * 6


def test_example_8_fourth_certificate_hits_the_annual_limit_and_revocation_does_not_redecide():
    w = World()
    certificates = []
    for i, day in enumerate(("02-10", "04-10", "06-10", "08-10")):
        ref = w.enroll("beijing", insured_months=24, occupation=f"6-31-01-0{i}",
                       start="2026-01-05", accepted_on="2026-01-05")
        w.complete(ref, on=f"2026-{day}")
        w.certify(ref, on=f"2026-{day}")
        certificates.append(w.last_certificate)
    assert summary(w.outputs) == [("granted", "BJ-CERT-IND", "full", 150000, "person")] * 3 + [
        ("rejected", "BJ-CERT-IND", "annual_limit")]
    first = w.outputs[0]
    outputs = w.revoke(certificates[0])
    assert summary(outputs) == [("reversed", "BJ-CERT-IND", "certificate_revoked", 150000)]
    assert outputs[0].grant_id == first.grant_id  # type: ignore[union-attr]  # present in this example
    assert len(w.outputs) == 5
