"""Integrity holds and their review (POLICY.md §6), amounts worked out by hand from §4:
BJ-CERT-IND pays 1500 CNY at intermediate level and its hardship top-up BJ-CERT-HARDENT 50% of
that (750 CNY); SQ-LIVING 30 CNY a day; SQ-SAFETY 300 CNY; BS-PREJOB 800 CNY, advanced 50%."""

from __future__ import annotations

import json
from pathlib import Path

from services.subsidy import contract, state_codec
from services.subsidy.engine.domain import SubsidyGranted, SubsidyHeld, SubsidyRejected
from services.subsidy.engine.policy import PolicySet
from services.subsidy.engine.replay import replay_person
from services.subsidy.engine.state import HoldStatus
from services.subsidy.policy_files import load_policy_file

from .world import POLICY_DIR, World, employer, summary


def _held(outputs: list) -> list[SubsidyHeld]:  # type: ignore[type-arg]  # a callable (agency -> bool) from the API layer
    return [o for o in outputs if isinstance(o, SubsidyHeld)]


def _beijing_certificate(w: World, *, flagged: bool = True, occupation: str = "6-31-01-03") -> str:
    ref = w.enroll("beijing", insured_months=12, employer=employer(hardship=True),
                   occupation=occupation)
    w.complete(ref)
    if flagged:
        w.flag(ref)
    w.certify(ref)
    return ref


def test_a_certificate_on_a_flagged_enrollment_is_held_whole_with_its_topup() -> None:
    w = World()
    ref = w.enroll("beijing", insured_months=12, employer=employer(hardship=True))
    w.complete(ref)
    assert w.flag(ref, on="2026-03-05") == []  # a flag alone decides nothing
    outputs = w.certify(ref, on="2026-03-25")
    assert summary(outputs) == [("held", "BJ-CERT-IND", "full", 150000, "person"),
                                ("held", "BJ-CERT-HARDENT", "full", 75000, "employer")]
    base, topup = _held(outputs)
    payload = contract.data(base)
    assert payload["hold"] == {"checks": ["daily_hours_exceeded"], "enrollment_ref": ref,
                               "held_on": "2026-03-25"}
    assert payload["grant_id"] == base.grant.grant_id and base.event_id != base.grant.grant_id
    assert payload["amount_fen"] == 150000 and payload["payee"]["kind"] == "person"
    # Held money is committed against the budget exactly as granted money would be.
    assert w.budgets.committed_fen("beijing", base.grant.fund, 2026) == 150000 + (
        75000 if topup.grant.fund == base.grant.fund else 0)


def test_grants_published_before_the_flag_stay_and_later_ones_are_held() -> None:
    w = World()
    ref = w.enroll("suqian", categories=("low_income",), employer=employer(),
                   training_type="safety", level=None)
    assert summary(w.complete(ref, days=10)) == [("granted", "SQ-LIVING", "full", 30000, "person")]
    w.flag(ref, check="far_outside_plan")
    outputs = w.certify(ref, kind="training_completion", level=None)
    assert summary(outputs) == [("held", "SQ-SAFETY", "full", 30000, "employer")]
    assert _held(outputs)[0].checks == ("far_outside_plan",)
    assert [g.event.rule for g in w.state().grant_log if g.paid] == ["SQ-LIVING"]


def test_release_publishes_the_held_grant_unchanged_with_its_topup_once() -> None:
    w = World()
    _beijing_certificate(w)
    base, topup = _held(w.outputs)
    assert w.review(topup.grant.grant_id, "release") == []  # a top-up follows its base
    released = w.review(base.grant.grant_id, "release", review_id="rv-1")
    assert summary(released) == [("granted", "BJ-CERT-IND", "full", 150000, "person"),
                                 ("granted", "BJ-CERT-HARDENT", "full", 75000, "employer")]
    granted = released[0]
    assert isinstance(granted, SubsidyGranted)
    held = contract.data(base.grant)
    assert {k: v for k, v in contract.data(granted).items() if k != "explanation"} == {
        k: v for k, v in held.items() if k != "explanation"}
    assert granted.event_id == base.grant.grant_id
    assert granted.explanation.startswith(held["explanation"])
    assert "released on integrity review rv-1 by clerk-1 on 2026-04-01" in granted.explanation
    assert w.review(base.grant.grant_id, "release") == []  # reviewed once
    assert w.review(base.grant.grant_id, "deny") == []
    assert w.state().find_grant(base.grant.grant_id).hold.status is HoldStatus.RELEASED  # type: ignore[union-attr]  # a callable (agency -> bool) from the API layer


def test_a_review_from_another_agency_changes_nothing() -> None:
    w = World()
    _beijing_certificate(w)
    base = _held(w.outputs)[0]
    assert w.review(base.grant.grant_id, "deny", agency="suqian") == []
    assert w.state().find_grant(base.grant.grant_id).held  # type: ignore[union-attr]  # a callable (agency -> bool) from the API layer


def test_a_hold_counts_toward_the_annual_limit_and_the_slot_and_a_denial_frees_both() -> None:
    w = World()
    held = w.enroll("suqian", employer=employer(), training_type="safety", level=None,
                    occupation="A")
    w.complete(held)
    w.flag(held)
    assert summary(w.certify(held, kind="training_completion", level=None)) == [
        ("held", "SQ-SAFETY", "full", 30000, "employer")]
    hold = _held(w.outputs)[0]
    twin = w.enroll("suqian", employer=employer(), training_type="safety", level=None,
                    occupation="A")
    w.complete(twin)
    assert summary(w.certify(twin, kind="training_completion", level=None)) == [
        ("rejected", "SQ-SAFETY", "duplicate_occupation_level")]
    for occupation in ("B", "C"):
        ref = w.enroll("suqian", employer=employer(), training_type="safety", level=None,
                       occupation=occupation)
        w.complete(ref)
        assert summary(w.certify(ref, kind="training_completion", level=None)) == [
            ("granted", "SQ-SAFETY", "full", 30000, "employer")]
    fourth = w.enroll("suqian", employer=employer(), training_type="safety", level=None,
                      occupation="D")
    w.complete(fourth)
    assert summary(w.certify(fourth, kind="training_completion", level=None)) == [
        ("rejected", "SQ-SAFETY", "annual_limit")]  # the hold is one of the 3
    denied = w.review(hold.grant.grant_id, "deny", review_id="rv-9")
    assert summary(denied) == [("rejected", "SQ-SAFETY", "integrity_denied")]
    rejection = denied[0]
    assert isinstance(rejection, SubsidyRejected)
    assert contract.data(rejection)["grant_id"] == hold.grant.grant_id
    assert rejection.basis == hold.grant.basis
    assert "denied on integrity review rv-9 by clerk-1" in rejection.explanation
    again = w.enroll("suqian", employer=employer(), training_type="safety", level=None,
                     occupation="A")
    w.complete(again)
    assert summary(w.certify(again, kind="training_completion", level=None)) == [
        ("granted", "SQ-SAFETY", "full", 30000, "employer")]  # slot and limit freed


def test_a_denial_gives_the_budget_back(tmp_path: Path) -> None:
    raw = json.loads((POLICY_DIR / "beijing.json").read_text())
    raw["budgets"] = {"unemployment_insurance": {"2026": 150000}}
    path = tmp_path / "beijing.json"
    path.write_text(json.dumps(raw))
    policies = PolicySet.of([load_policy_file(p) for p in POLICY_DIR.glob("*.json")
                             if p.stem != "beijing"] + [load_policy_file(path)])
    w = World(policies)
    ref = w.enroll("beijing", insured_months=12, occupation="A")
    w.complete(ref)
    w.flag(ref)
    w.certify(ref)
    hold = _held(w.outputs)[0]
    assert w.budgets.committed_fen("beijing", "unemployment_insurance", 2026) == 150000
    other = w.enroll("beijing", insured_months=12, occupation="B")
    w.complete(other)
    assert summary(w.certify(other)) == [("rejected", "BJ-CERT-IND", "budget_exhausted")]
    w.review(hold.grant.grant_id, "deny")
    assert w.budgets.committed_fen("beijing", "unemployment_insurance", 2026) == 0
    third = w.enroll("beijing", insured_months=12, occupation="C")
    w.complete(third)
    assert summary(w.certify(third)) == [("granted", "BJ-CERT-IND", "full", 150000, "person")]


def test_a_revocation_voids_the_hold_of_the_grant_and_its_topup_and_reverses_nothing() -> None:
    w = World()
    _beijing_certificate(w)
    outputs = w.revoke(w.last_certificate)
    assert summary(outputs) == [("rejected", "BJ-CERT-IND", "hold_voided"),
                                ("rejected", "BJ-CERT-HARDENT", "hold_voided")]
    assert "certificate_revoked" in outputs[0].explanation  # type: ignore[union-attr]  # a rejection  # names the cause
    assert "nothing was paid" in outputs[0].explanation  # type: ignore[union-attr]  # a rejection
    assert w.budgets.committed_fen("beijing", "unemployment_insurance", 2026) == 0


def test_a_withdrawal_voids_a_held_advance_and_a_failed_assessment_another() -> None:
    w = World()
    w.flag("INST-1/2026/000001")  # (order tolerance) the flag before its acceptance
    ref = w.enroll("baoshan", training_type="pre_job", level=None, project_based=True,
                   payer="institution", categories=("poor_labor",))
    assert ref == "INST-1/2026/000001"
    assert summary(w.last_outputs) == [("held", "BS-PREJOB", "advance", 40000, "institution")]
    outputs = w.withdraw(ref)
    assert summary(outputs) == [("rejected", "BS-PREJOB", "hold_voided")]
    assert "enrollment withdrawn on 2026-03-10" in outputs[0].explanation  # type: ignore[union-attr]  # a rejection
    w.flag("INST-1/2026/000002")
    failed = w.enroll("baoshan", training_type="pre_job", level=None, project_based=True,
                      payer="institution", categories=("poor_labor",), occupation="B")
    w.complete(failed, days=0, hours=0)
    outputs = w.fail(failed, kind="training_completion")
    assert summary(outputs) == [("rejected", "BS-PREJOB", "hold_voided")]
    assert "failed" in outputs[0].explanation  # type: ignore[union-attr]  # a rejection


def test_denying_a_held_settlement_takes_its_paid_advance_back() -> None:
    w = World()
    ref = w.enroll("baoshan", training_type="pre_job", level=None, project_based=True,
                   payer="institution", categories=("poor_labor",))
    assert summary(w.last_outputs) == [("granted", "BS-PREJOB", "advance", 40000, "institution")]
    w.flag(ref)
    w.complete(ref, days=0, hours=0)
    assert summary(w.certify(ref, kind="training_completion", level=None)) == [
        ("held", "BS-PREJOB", "settlement", 40000, "institution")]
    settlement = _held(w.outputs)[0]
    assert summary(w.review(settlement.grant.grant_id, "deny")) == [
        ("rejected", "BS-PREJOB", "integrity_denied"),
        ("reversed", "BS-PREJOB", "advance_not_earned", 40000)]


def test_flags_and_reviews_are_logged_facts_so_a_replay_holds_and_releases_the_same() -> None:
    w = World()
    _beijing_certificate(w)
    base = _held(w.outputs)[0]
    w.review(base.grant.grant_id, "release")
    recorded = w.state()
    restored = state_codec.loads(state_codec.dumps(recorded))
    assert restored == recorded
    again = replay_person(w.policies, restored, w.budgets)
    assert [(g.grant_id, g.live, g.hold) for g in again.grant_log] == [
        (g.grant_id, g.live, g.hold) for g in recorded.grant_log]
