"""Advances, settlements, revocations, order tolerance, budgets and policy versions over time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.subsidy import contract
from services.subsidy.engine.domain import BudgetThresholdReached, SubsidyGranted, pending_items
from services.subsidy.engine.policy import PolicySet
from services.subsidy.engine.state import PendingKind
from services.subsidy.policy_files import load_policy_file

from .world import POLICY_DIR, World, employer, summary


def _project(w: World, agency: str = "baoshan", **extra: Any) -> str:
    extra.setdefault("categories", ("poor_labor",))
    return w.enroll(agency, training_type="pre_job", level=None, project_based=True,
                    payer="institution", **extra)


def test_a_failed_assessment_takes_back_the_advance_and_a_retake_is_decided_as_full() -> None:
    w = World()
    ref = _project(w)
    w.complete(ref, days=0, hours=0)
    assert summary(w.fail(ref, kind="training_completion")) == [
        ("reversed", "BS-PREJOB", "advance_not_earned", 40000)]
    assert summary(w.certify(ref, kind="training_completion", level=None, on="2026-04-10")) == [
        ("granted", "BS-PREJOB", "full", 80000, "institution")]


def test_a_settlement_rejection_comes_with_the_advance_reversal() -> None:
    w = World()
    ref = _project(w, "suqian", employer=employer())
    assert summary(w.last_outputs) == [("granted", "SQ-PREJOB", "advance", 15000, "institution")]
    ygdx = w.enroll("suqian", categories=("poor_labor",), employer=employer(),
                    training_type="work_for_training", level=None)
    assert summary(w.month(ygdx, "2026-03", 1)) == [("rejected", "SQ-YGDX", "not_stackable")]
    w.complete(ref)
    assert summary(w.certify(ref, kind="training_completion", level=None)) == [
        ("granted", "SQ-PREJOB", "settlement", 15000, "institution")]


def test_no_advance_when_the_main_rule_would_not_pay_then_full_later() -> None:
    w = World()
    ref = w.enroll("city-a", project_based=True, payer="person")
    assert w.last_outputs == []
    w.complete(ref)
    assert summary(w.certify(ref)) == [("rejected", "A-CERT-ENT", "ineligible_category")]


def test_apprenticeships_are_never_advanced() -> None:
    w = World()
    w.enroll("city-a", employer=employer(), training_type="apprenticeship", program_years=1,
             project_based=True)
    assert w.last_outputs == []


def test_revoking_a_settled_certificate_reverses_settlement_and_advance_and_frees_the_slot() -> None:
    w = World()
    ref = w.enroll("city-a", employer=employer(), payer="employer", project_based=True)
    assert summary(w.last_outputs) == [("granted", "A-CERT-ENT", "advance", 75000, "institution")]
    w.complete(ref)
    w.certify(ref)
    outputs = w.revoke(w.last_certificate)
    assert summary(outputs) == [("reversed", "A-CERT-ENT", "certificate_revoked", 75000)] * 2
    again = w.enroll("city-a", employer=employer(), payer="employer")
    w.complete(again)
    assert summary(w.certify(again)) == [("granted", "A-CERT-ENT", "full", 150000, "employer")]


def test_revocation_reverses_every_apprenticeship_year_and_the_topup() -> None:
    w = World()
    ref = w.enroll("beijing", insured_months=12, employer=employer(hardship=True))
    w.complete(ref)
    w.certify(ref)
    assert [r[1] for r in summary(w.revoke(w.last_certificate))] == [
        "BJ-CERT-IND", "BJ-CERT-HARDENT"]
    w2 = World()
    ref = w2.enroll("city-a", employer=employer(), training_type="apprenticeship",
                    program_years=3)
    w2.complete(ref)
    w2.certify(ref)
    assert len(w2.revoke(w2.last_certificate)) == 3


def test_living_allowance_stays_when_the_certificate_is_revoked() -> None:
    w = World()
    ref = w.enroll("suqian", categories=("poor_labor",), employer=employer(),
                   training_type="pre_job", level=None)
    w.complete(ref)
    w.certify(ref, kind="training_completion", level=None)
    assert [r[1] for r in summary(w.revoke(w.last_certificate))] == ["SQ-PREJOB"]


def test_a_revocation_before_its_certificate_waits_and_then_voids_it() -> None:
    w = World()
    ref = w.enroll("beijing", insured_months=24)
    w.complete(ref)
    assert w.revoke("CERT-EARLY") == []
    assert [p.kind for p in pending_items(w.state())] == [
        PendingKind.REVOCATION_AWAITING_CERTIFICATE]
    assert w.certify(ref, cert_id="CERT-EARLY") == []
    assert pending_items(w.state()) == []


def test_a_certificate_before_completion_waits_and_is_decided_on_completion() -> None:
    w = World()
    ref = w.enroll("beijing", insured_months=24, employer=employer(hardship=True))
    assert w.certify(ref) == []
    (item,) = pending_items(w.state())
    assert item.kind is PendingKind.CERTIFICATE_AWAITING_COMPLETION and item.enrollment_ref == ref
    assert [r[1] for r in summary(w.complete(ref))] == ["BJ-CERT-IND", "BJ-CERT-HARDENT"]
    assert pending_items(w.state()) == []


def test_a_certificate_without_enrollment_ref_links_to_the_latest_matching_start() -> None:
    w = World()
    older = w.enroll("beijing", insured_months=24, start="2026-01-01")
    newer = w.enroll("beijing", insured_months=24, start="2026-02-01")
    w.complete(older)
    w.complete(newer)
    (grant,) = w.certify(newer, linked=False, on="2026-03-01")
    assert isinstance(grant, SubsidyGranted) and grant.basis.enrollment_ref == newer


def test_a_certificate_at_another_level_links_to_nothing() -> None:
    w = World()
    ref = w.enroll("beijing", insured_months=24)
    w.complete(ref)
    assert w.certify(ref, level="senior", linked=False) == []
    assert pending_items(w.state())[0].kind is PendingKind.CERTIFICATE_UNLINKED


def _policies_with(tmp_path: Path, agency: str, **changes: Any) -> PolicySet:
    raw = json.loads((POLICY_DIR / f"{agency}.json").read_text())
    raw.update(changes)
    path = tmp_path / f"{agency}.json"
    path.write_text(json.dumps(raw))
    others = [load_policy_file(p) for p in POLICY_DIR.glob("*.json") if p.stem != agency]
    return PolicySet.of([*others, load_policy_file(path)])


def test_budgets_reject_over_budget_grants_and_report_thresholds_once(tmp_path: Path) -> None:
    policies = _policies_with(tmp_path, "beijing",
                              budgets={"unemployment_insurance": {"2026": 300000}})
    w = World(policies)
    certificates = []
    for occupation in ("A", "B", "C"):
        ref = w.enroll("beijing", insured_months=24, occupation=occupation)
        w.complete(ref)
        w.certify(ref)
        certificates.append(w.last_certificate)
    assert summary(w.outputs) == [
        ("granted", "BJ-CERT-IND", "full", 150000, "person"),
        ("granted", "BJ-CERT-IND", "full", 150000, "person"),
        ("threshold", "unemployment_insurance", 8000),
        ("threshold", "unemployment_insurance", 9000),
        ("threshold", "unemployment_insurance", 10000),
        ("rejected", "BJ-CERT-IND", "budget_exhausted"),
    ]
    threshold = w.outputs[2]
    assert isinstance(threshold, BudgetThresholdReached)
    assert threshold.key == "budget:beijing:unemployment_insurance:2026"
    assert contract.data(threshold)["threshold"] == 0.8
    w.revoke(certificates[0])
    assert w.budgets.committed_fen("beijing", "unemployment_insurance", 2026) == 150000
    ref = w.enroll("beijing", insured_months=24, occupation="D")
    w.complete(ref)
    assert summary(w.certify(ref)) == [("granted", "BJ-CERT-IND", "full", 150000, "person")]


def test_the_policy_version_in_force_on_the_basis_date_decides(tmp_path: Path) -> None:
    old = json.loads((POLICY_DIR / "beijing.json").read_text())
    new = json.loads(json.dumps(old))
    old.update(valid_to="2025-12-31")
    new.update(version="2026-01", valid_from="2026-01-01")
    new["rules"][0]["amount_by_level"]["intermediate"] = 160000
    (tmp_path / "bj-old.json").write_text(json.dumps(old))
    (tmp_path / "bj-new.json").write_text(json.dumps(new))
    policies = PolicySet.of(load_policy_file(p) for p in tmp_path.glob("*.json"))
    w = World(policies)
    for occupation, day in (("A", "2025-11-02"), ("B", "2026-01-02")):
        ref = w.enroll("beijing", insured_months=24, occupation=occupation, start="2025-10-01")
        w.complete(ref, on="2025-11-01")
        w.certify(ref, on=day)
    granted = [o for o in w.outputs if isinstance(o, SubsidyGranted)]
    assert [(g.amount_fen, g.policy.version) for g in granted] == [
        (150000, "2020-01"), (160000, "2026-01")]
